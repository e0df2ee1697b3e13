//! The truth of each call, indexed for scoring: its moments (from the shared reference), the
//! points of its path, and where and when each point carried each moment, from the syscalls
//! the components recorded.
//!
//! Across calls, [`FlowOwners`] says which call's audio each flow byte of a process is.

use super::Observes;
use crate::audio::Audio;
use crate::truth::{ComponentLog, GroundTruth, Point};
use agent::schema::Dir;
use anyhow::Result;
use shared::{FingerprintConfig, Scanner};
use std::collections::HashMap;
use std::sync::Arc;

/// Where and when one point of a path carried one moment.
#[derive(Clone, Copy, Debug)]
pub struct Carried {
    pub t_ns: u64,
    pub fd: i32,
    pub pid: u32,
    /// Flow position just past the window at this point.
    pub pos: u64,
    /// The syscall's truth may be off by a preemption ([`crate::truth::Io::preempted`]).
    pub preempted: bool,
}

/// One syscall at a point.
#[derive(Clone, Copy, Debug)]
pub(super) struct Op {
    flow_off: u64,
    len: u64,
    pub(super) t_ns: u64,
    pub(super) fd: i32,
    pub(super) preempted: bool,
}

impl Op {
    fn holds(&self, flow: u64) -> bool {
        self.flow_off <= flow && flow < self.flow_off + self.len
    }
}

/// One point's flow, for one call: which flow bytes carry which audio, and which syscalls.
#[derive(Default)]
pub(super) struct PointFlow {
    /// (flow offset, audio offset, length), contiguous runs of the call's audio.
    pub(super) runs: Vec<(u64, u64, u64)>,
    /// Every syscall at the point (shared by every call through it).
    ops: Arc<PointOps>,
    pub(super) pid: u32,
    /// `runs` ascend without overlap in flow offset, and in audio offset: then they are
    /// binary-searched (they always do: a point carries a call's audio once, in order).
    runs_by_flow: bool,
    runs_by_audio: bool,
}

/// Every syscall at one point (a component's reads or writes of one link), in the order the
/// component recorded them.
#[derive(Default)]
struct PointOps {
    ops: Vec<Op>,
    /// They ascend without overlap in flow offset (a link's end is one thread's).
    sorted: bool,
}

impl PointOps {
    /// The syscall that carried flow byte `flow`.
    fn at(&self, flow: u64) -> Option<Op> {
        if self.sorted {
            let i = self.ops.partition_point(|op| op.flow_off + op.len <= flow);
            self.ops.get(i).filter(|op| op.holds(flow)).copied()
        } else {
            self.ops.iter().find(|op| op.holds(flow)).copied()
        }
    }
}

/// Whether ranges (start, length) ascend without overlap.
fn ascending(ranges: impl Iterator<Item = (u64, u64)>) -> bool {
    let mut end = 0;
    for (start, len) in ranges {
        if start < end {
            return false;
        }
        end = start + len;
    }
    true
}

/// A call's runs at one point: (flow offset, audio offset, length).
type Runs = Vec<(u64, u64, u64)>;
/// A point of a component: its direction and link.
type PointKey = (Dir, String);

/// Every point of one component, for every call at once: built in one pass over its syscalls.
struct ComponentFlows {
    pid: u32,
    /// (dir, link) → the point's syscalls, and each call's runs there.
    points: HashMap<PointKey, (Arc<PointOps>, HashMap<u32, Runs>)>,
}

impl ComponentFlows {
    fn build(comp: &ComponentLog) -> Self {
        let mut points: HashMap<PointKey, (Vec<Op>, HashMap<u32, Runs>)> = HashMap::new();
        for io in &comp.ios {
            let (ops, runs) = match points.get_mut(&(io.dir, io.link.clone())) {
                Some(p) => p,
                None => points.entry((io.dir, io.link.clone())).or_default(),
            };
            ops.push(Op {
                flow_off: io.flow_off,
                len: io.len,
                t_ns: io.t_ns,
                fd: io.fd,
                preempted: io.preempted,
            });
            for seg in &io.segments {
                let runs = runs.entry(seg.call).or_default();
                match runs.last_mut() {
                    Some((fl, a, l)) if *fl + *l == seg.flow_off && *a + *l == seg.audio_off => {
                        *l += seg.len
                    }
                    _ => runs.push((seg.flow_off, seg.audio_off, seg.len)),
                }
            }
        }
        let points = points
            .into_iter()
            .map(|(k, (ops, runs))| {
                let sorted = ascending(ops.iter().map(|op| (op.flow_off, op.len)));
                (k, (Arc::new(PointOps { ops, sorted }), runs))
            })
            .collect();
        Self {
            pid: comp.pid,
            points,
        }
    }

    /// One call's flow at one of this component's points.
    fn flow(&self, point: &Point, call: u32) -> PointFlow {
        let mut f = PointFlow {
            pid: self.pid,
            ..PointFlow::default()
        };
        // A lookup without allocating a key would need a borrowed tuple type; points are few.
        if let Some((ops, runs)) = self.points.get(&(point.dir, point.link.clone())) {
            f.ops = ops.clone();
            f.runs = runs.get(&call).cloned().unwrap_or_default();
        }
        f.runs_by_flow = ascending(f.runs.iter().map(|&(fl, _, l)| (fl, l)));
        f.runs_by_audio = ascending(f.runs.iter().map(|&(_, a, l)| (a, l)));
        f
    }
}

impl PointFlow {
    /// The syscall that carried flow byte `flow`, whatever it was.
    pub(super) fn op_at(&self, flow: u64) -> Option<Op> {
        self.ops.at(flow)
    }

    /// The run holding flow byte `flow`.
    pub(super) fn run_at_flow(&self, flow: u64) -> Option<(u64, u64, u64)> {
        let holds = |&(f, _, l): &(u64, u64, u64)| f <= flow && flow < f + l;
        if self.runs_by_flow {
            let i = self.runs.partition_point(|&(f, _, l)| f + l <= flow);
            self.runs.get(i).copied().filter(holds)
        } else {
            self.runs.iter().copied().find(holds)
        }
    }

    /// The audio offset of the call's byte at `flow` and the syscall that carried it.
    pub(super) fn at_flow(&self, flow: u64) -> Option<(u64, Op)> {
        let (f, a, _) = self.run_at_flow(flow)?;
        Some((a + (flow - f), self.op_at(flow)?))
    }

    /// Where the call's audio byte `audio` sits in this flow.
    fn flow_of(&self, audio: u64, window: u64) -> Option<u64> {
        // The whole window must be one contiguous run (no header inside).
        let fits =
            |&(_, a, l): &(u64, u64, u64)| a <= audio && audio < a + l && a + window <= audio + 1;
        let (f, a, _) = if self.runs_by_audio {
            let i = self.runs.partition_point(|&(_, a, l)| a + l <= audio);
            self.runs.get(i).copied().filter(fits)?
        } else {
            self.runs.iter().copied().find(fits)?
        };
        Some(f + (audio - a))
    }
}

/// The truth of one call: its moments, the points of its path, and which point carried which
/// moment when.
pub struct CallTruthIndex {
    pub call: u32,
    pub audio: Audio,
    /// (signature, audio end offset) of every moment of the call's audio.
    pub moments: Vec<shared::Moment>,
    pub points: Vec<Point>,
    pub parent: Vec<Option<usize>>,
    /// Points of external components, which record no ground truth.
    pub external: Vec<bool>,
    /// carried[point index][moment end] = when that point's syscall carried it.
    pub carried: Vec<HashMap<u64, Carried>>,
    pub(super) flows: Vec<PointFlow>,
}

impl CallTruthIndex {
    pub fn build(gt: &GroundTruth, cfg: FingerprintConfig) -> Result<Vec<Self>> {
        // Each component's syscalls are gone through once, for all calls.
        let mut components: HashMap<&str, ComponentFlows> = HashMap::new();
        for c in &gt.components {
            // `GroundTruth::component` finds the first of a name.
            components
                .entry(c.name.as_str())
                .or_insert_with(|| ComponentFlows::build(c));
        }
        gt.calls
            .iter()
            .map(|ct| {
                let audio = Audio::read_wav(&ct.wav)?;
                let moments = Scanner::new(cfg).feed_collect(&audio.to_bytes());
                let flows: Vec<PointFlow> = ct
                    .points
                    .iter()
                    .map(|p| {
                        components
                            .get(p.component.as_str())
                            .map_or_else(PointFlow::default, |c| c.flow(p, ct.call))
                    })
                    .collect();
                let carried = flows
                    .iter()
                    .map(|f| carried_at(f, &moments, cfg.window as u64))
                    .collect();
                let external = ct
                    .points
                    .iter()
                    .map(|p| gt.component(&p.component).is_some_and(|l| l.external))
                    .collect();
                Ok(Self {
                    call: ct.call,
                    audio,
                    moments,
                    points: ct.points.clone(),
                    parent: ct.parent.clone(),
                    external,
                    carried,
                    flows,
                })
            })
            .collect()
    }

    /// The hops a tracer that observes `obs` can measure: each observable point and its
    /// nearest observable upstream point (indices into `points`).
    pub fn hops(&self, obs: Observes) -> Vec<(usize, usize)> {
        let sees = |i: usize| obs.sees(&self.points[i]);
        (0..self.points.len())
            .filter(|&i| sees(i))
            .filter_map(|to| {
                let mut from = self.parent[to];
                while let Some(f) = from.filter(|&f| !sees(f)) {
                    from = self.parent[f];
                }
                from.map(|from| (from, to))
            })
            .collect()
    }
}

/// For each moment, the syscall at a point that carried its anchor byte, when the whole window
/// sits in one contiguous run of the call's audio there.
fn carried_at(flow: &PointFlow, moments: &[shared::Moment], window: u64) -> HashMap<u64, Carried> {
    let mut out = HashMap::new();
    for m in moments {
        let Some(anchor_flow) = flow.flow_of(m.end - 1, window) else {
            continue;
        };
        if let Some((_, op)) = flow.at_flow(anchor_flow) {
            out.insert(
                m.end,
                Carried {
                    t_ns: op.t_ns,
                    fd: op.fd,
                    pid: flow.pid,
                    pos: anchor_flow + 1,
                    preempted: op.preempted,
                },
            );
        }
    }
    out
}

/// Runs of calls' audio on one link at one point: (flow offset, length, call index).
type Owned = Vec<(u64, u64, usize)>;

/// Which call's audio each flow byte of a process's side is, on any of its links.
pub(super) struct FlowOwners {
    /// (pid, dir) → per link: (whether its runs ascend without overlap, its runs sorted by
    /// flow offset).
    by_side: HashMap<(u32, Dir), Vec<(bool, Owned)>>,
}

impl FlowOwners {
    pub(super) fn build(calls: &[CallTruthIndex]) -> Self {
        let mut by_link: HashMap<(u32, Dir), HashMap<&str, Owned>> = HashMap::new();
        for (ci, c) in calls.iter().enumerate() {
            for (p, flow) in c.points.iter().zip(&c.flows) {
                let runs = by_link
                    .entry((flow.pid, p.dir))
                    .or_default()
                    .entry(p.link.as_str())
                    .or_default();
                runs.extend(flow.runs.iter().map(|&(f, _, l)| (f, l, ci)));
            }
        }
        let by_side = by_link
            .into_iter()
            .map(|(k, links)| {
                let links = links
                    .into_values()
                    .map(|mut runs| {
                        runs.sort_by_key(|&(f, _, _)| f);
                        (ascending(runs.iter().map(|&(f, l, _)| (f, l))), runs)
                    })
                    .collect();
                (k, links)
            })
            .collect();
        Self { by_side }
    }

    fn links(&self, pid: u32, dir: Dir) -> impl Iterator<Item = &(bool, Owned)> {
        self.by_side.get(&(pid, dir)).into_iter().flatten()
    }

    /// The calls whose audio a side's flow byte `flow` can be.
    pub(super) fn calls_at(&self, pid: u32, dir: Dir, flow: u64) -> Vec<usize> {
        let mut out = Vec::new();
        for (sorted, runs) in self.links(pid, dir) {
            let holds = |&&(f, l, _): &&(u64, u64, usize)| f <= flow && flow < f + l;
            if *sorted {
                let i = runs.partition_point(|&(f, l, _)| f + l <= flow);
                out.extend(runs.get(i).filter(holds).map(|&(_, _, ci)| ci));
            } else {
                out.extend(runs.iter().filter(holds).map(|&(_, _, ci)| ci));
            }
        }
        out
    }

    /// The first run of a call's audio at or after flow byte `flow` on each link: (its flow
    /// offset, call index).
    pub(super) fn next_audio(&self, pid: u32, dir: Dir, flow: u64) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for (sorted, runs) in self.links(pid, dir) {
            let next = if *sorted {
                runs.get(runs.partition_point(|&(f, _, _)| f < flow))
                    .copied()
            } else {
                runs.iter()
                    .filter(|&&(f, _, _)| f >= flow)
                    .min_by_key(|&&(f, _, _)| f)
                    .copied()
            };
            out.extend(next.map(|(f, _, ci)| (f, ci)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::Observes;
    use crate::truth::TlsStack;

    #[test]
    fn each_point_carried_each_moment_in_the_syscall_that_moved_its_anchor() {
        let f = Fixture::new(false);
        let c = f.call();
        assert!(c.moments.len() > 20, "{} moments", c.moments.len());
        for m in &c.moments {
            let anchor_a = STREAM_HEADER + m.end - 1;
            let src = c.carried[SRC_WRITE][&m.end];
            assert_eq!((src.pid, src.fd, src.pos), (100, 3, anchor_a + 1));
            assert_eq!(src.t_ns, 1_000_000 + anchor_a / WRITE * 250_000);
            let read = c.carried[RELAY_READ][&m.end];
            assert_eq!((read.pid, read.fd, read.pos), (200, 4, anchor_a + 1));
            assert_eq!(read.preempted, anchor_a / READ == PREEMPTED_READ as u64);
            assert!(read.t_ns >= src.t_ns + 30_000);
        }
    }

    #[test]
    fn a_window_with_a_header_inside_is_not_carried_there() {
        let f = Fixture::new(false);
        let c = f.call();
        let whole = f.moments_everywhere();
        assert!(
            whole.len() < c.moments.len() && !whole.is_empty(),
            "some moments, not all, straddle an envelope header"
        );
        for m in &c.moments {
            let inside = whole.contains(&m.end);
            assert!(c.carried[RELAY_READ].contains_key(&m.end));
            for point in [RELAY_WRITE, SINK_READ] {
                let carried = c.carried[point].get(&m.end);
                assert_eq!(carried.is_some(), inside, "moment {} at {point}", m.end);
                if let Some(k) = carried {
                    let anchor = m.end - 1;
                    let envelopes = anchor / PAYLOAD + 1;
                    assert_eq!(k.pos, anchor + 1 + envelopes * ENVELOPE_HEADER);
                }
            }
        }
    }

    #[test]
    fn hops_join_consecutive_observable_points() {
        let f = Fixture::new(false);
        let c = f.call();
        assert_eq!(
            c.hops(Observes::ALL),
            vec![
                (SRC_WRITE, RELAY_READ),
                (RELAY_READ, RELAY_WRITE),
                (RELAY_WRITE, SINK_READ)
            ]
        );
        assert_eq!(c.hops(Observes::WRITES), vec![(SRC_WRITE, RELAY_WRITE)]);
    }

    #[test]
    fn hops_skip_points_inside_a_tls_stack_the_tracer_does_not_see() {
        // The relay is a Go crypto/tls relay with TLS on link a: its read there is plaintext
        // only inside Go, and the hop goes from the source's write to its write of link b.
        let mut f = Fixture::new(true);
        f.calls[0].points[RELAY_READ].tls_stack = Some(TlsStack::Go);
        let c = f.call();
        let all = vec![
            (SRC_WRITE, RELAY_READ),
            (RELAY_READ, RELAY_WRITE),
            (RELAY_WRITE, SINK_READ),
        ];
        assert_eq!(
            c.hops(Observes::READS_AND_WRITES),
            vec![(SRC_WRITE, RELAY_WRITE), (RELAY_WRITE, SINK_READ)]
        );
        assert_eq!(c.hops(Observes::WRITES), vec![(SRC_WRITE, RELAY_WRITE)]);
        assert_eq!(c.hops(Observes::ALL), all);
        // TLS on both of its links: one hop from the source to the sink, unless the tracer
        // sees Go's plaintext.
        f.calls[0].points[RELAY_WRITE].tls_stack = Some(TlsStack::Go);
        let c = f.call();
        assert_eq!(
            c.hops(Observes::READS_AND_WRITES),
            vec![(SRC_WRITE, SINK_READ)]
        );
        assert!(c.hops(Observes::WRITES).is_empty());
        let sees_go = Observes {
            tls_stacks: &[TlsStack::Go],
            ..Observes::READS_AND_WRITES
        };
        assert_eq!(c.hops(sees_go), all);
        let sees_java = Observes {
            tls_stacks: &[TlsStack::Java],
            ..Observes::READS_AND_WRITES
        };
        assert_eq!(c.hops(sees_java), vec![(SRC_WRITE, SINK_READ)]);
    }

    #[test]
    fn an_external_component_carries_nothing_on_record() {
        let f = Fixture::new(true);
        let c = f.call();
        assert_eq!(c.external, vec![false, true, true, false]);
        assert!(c.carried[RELAY_READ].is_empty() && c.carried[RELAY_WRITE].is_empty());
        assert_eq!(c.carried[SINK_READ].len(), f.moments_everywhere().len());
    }
}
