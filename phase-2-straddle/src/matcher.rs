//! Matches one moment across components as a tree of hops: transit (a write and a read of the
//! same link) and residence (a read and a later write in one process). A moment's sightings are
//! grouped for a bounded window; what cannot be told apart is refused, not guessed:
//! - the same moment twice on one flow (a loop, a tone) drops that flow's sightings;
//! - a process that read the moment on several links and wrote it on several (shared hold music
//!   through one relay) pairs each write with the read whose link fed that write's link in
//!   unambiguous moments before (learned edges), or refuses.
//!
//! The rules ([`Hops`]) see sightings through [`Sight`], whoever made them: here, kernel events
//! whose links the tracer resolved as it drained them ([`Seen`]). The matcher reads nothing but
//! its sightings.

use crate::links::{Link, Seen};
use agent::schema::{Dir, HopRecord, Sighting};
use std::collections::HashMap;
use std::hash::Hash;

/// What the hop rules need to know of one sighting of a moment.
pub trait Sight {
    /// Who read or wrote: a process (on a node).
    type Process: Copy + Eq + Hash;
    /// What a write and a read must share to be one transit.
    type Link: Clone + Eq + Hash;
    fn process(&self) -> Self::Process;
    /// The flow, (fd, birth) within the process: a moment seen twice on it is refused.
    fn flow(&self) -> (i32, u64);
    fn dir(&self) -> Dir;
    fn t_ns(&self) -> u64;
    fn link(&self) -> &Self::Link;
    /// A link with a known other end (not a file, not a closed fd).
    fn paired(&self) -> bool;
    /// Whether this write can have been read at `read`: on one clock, not after it.
    fn may_precede(&self, read: &Self) -> bool {
        self.t_ns() <= read.t_ns()
    }
    /// The hop record of `from` → `to`.
    fn hop(from: &Self, to: &Self) -> HopRecord;
}

impl Sight for Seen {
    type Process = u32;
    type Link = Link;
    fn process(&self) -> u32 {
        self.e.call.tgid
    }
    fn flow(&self) -> (i32, u64) {
        (self.e.call.fd, self.e.call.flow_birth_ns)
    }
    fn dir(&self) -> Dir {
        self.e.dir()
    }
    fn t_ns(&self) -> u64 {
        self.e.call.t_ns
    }
    fn link(&self) -> &Link {
        &self.link
    }
    fn paired(&self) -> bool {
        self.link.is_paired()
    }
    fn hop(from: &Self, to: &Self) -> HopRecord {
        HopRecord::new(from.e.signature, sighting(from), sighting(to))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchCounters {
    /// Signatures seen once only.
    pub unmatched: u64,
    /// Sightings dropped: the moment was seen twice on their flow within the window.
    pub refused_repeats: u64,
    /// Writes whose feeding read could not be told apart.
    pub refused_ambiguous: u64,
    /// Sightings on fds with no known peer (files, closed fds).
    pub unpaired: u64,
}

/// A way through a process: (process, input link, output link).
type Edge<S> = (
    <S as Sight>::Process,
    <S as Sight>::Link,
    <S as Sight>::Link,
);

/// The hop rules, with what they learn across moments.
pub struct Hops<S: Sight> {
    /// Unambiguous moments that took each way.
    edges: HashMap<Edge<S>, u64>,
    pub counters: MatchCounters,
}

impl<S: Sight> Default for Hops<S> {
    fn default() -> Self {
        Self {
            edges: HashMap::new(),
            counters: MatchCounters::default(),
        }
    }
}

/// Phase 2's matcher: the hop rules over linked sightings.
#[derive(Default)]
pub struct Matcher {
    pub hops: Hops<Seen>,
}

impl<S: Sight> Hops<S> {
    /// Every sighting of one moment within the window → its hops.
    pub fn close(&mut self, mut seen: Vec<S>, out: &mut Vec<HopRecord>) {
        if seen.len() < 2 {
            self.counters.unmatched += 1;
            return;
        }
        // A flow that saw the moment twice: drop all its sightings.
        let flow = |s: &S| (s.process(), s.flow(), s.dir());
        let mut per_flow: HashMap<_, usize> = HashMap::new();
        for s in &seen {
            *per_flow.entry(flow(s)).or_default() += 1;
        }
        let before = seen.len();
        seen.retain(|s| per_flow[&flow(s)] == 1);
        self.counters.refused_repeats += (before - seen.len()) as u64;
        seen.sort_by_key(|s| s.t_ns());
        self.counters.unpaired += seen.iter().filter(|s| !s.paired()).count() as u64;

        let (reads, writes): (Vec<&S>, Vec<&S>) = seen.iter().partition(|s| s.dir() == Dir::Read);
        // Transit: the write of the same link, in another process, before the read.
        for r in &reads {
            let mut from = writes
                .iter()
                .filter(|w| w.link() == r.link() && r.paired() && w.process() != r.process());
            if let (Some(w), None) = (from.next(), from.next()) {
                if w.may_precede(r) {
                    out.push(S::hop(w, r));
                }
            }
        }
        // Residence: the read in the same process that fed each write.
        for w in &writes {
            let fed_by: Vec<&&S> = reads
                .iter()
                .filter(|r| r.process() == w.process() && r.t_ns() <= w.t_ns())
                .collect();
            let read = match fed_by.as_slice() {
                [] => continue,
                [r] => {
                    *self
                        .edges
                        .entry((w.process(), r.link().clone(), w.link().clone()))
                        .or_default() += 1;
                    *r
                }
                several => {
                    let learned: Vec<&&&S> = several
                        .iter()
                        .filter(|r| {
                            self.edges.contains_key(&(
                                w.process(),
                                r.link().clone(),
                                w.link().clone(),
                            ))
                        })
                        .collect();
                    // Else the one read since this process last wrote the moment: a proxy
                    // that passes it through twice (stunnel: TLS in, plain out, plain in, TLS
                    // out) reads it again before each write.
                    let previous_write = writes
                        .iter()
                        .filter(|o| o.process() == w.process() && o.t_ns() < w.t_ns())
                        .map(|o| o.t_ns())
                        .max();
                    let since: Vec<&&S> = several
                        .iter()
                        .copied()
                        .filter(|r| previous_write.is_some_and(|t| r.t_ns() > t))
                        .collect();
                    match (learned.as_slice(), since.as_slice()) {
                        ([r], _) => **r,
                        ([], [r]) => *r,
                        _ => {
                            self.counters.refused_ambiguous += 1;
                            continue;
                        }
                    }
                }
            };
            out.push(S::hop(read, w));
        }
    }
}

fn sighting(s: &Seen) -> Sighting {
    Sighting {
        pid: s.e.call.tgid,
        comm: s.e.comm(),
        fd: s.e.call.fd,
        dir: s.e.dir(),
        t_ns: s.e.call.t_ns,
        pos: Some(s.e.end),
        node: None,
        pod: None,
    }
}

impl agent::pipeline::Matching for Matcher {
    type Event = Seen;
    type Seen = Seen;

    fn admit(&mut self, seen: Seen) -> (u64, u64, Seen) {
        (seen.e.signature, seen.e.call.t_ns, seen)
    }

    fn close(&mut self, seen: Vec<Seen>, out: &mut Vec<HopRecord>) {
        self.hops.close(seen, out);
    }

    fn health(&self) -> String {
        self.hops.counters.to_string()
    }
}

impl std::fmt::Display for MatchCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let c = self;
        write!(
            f,
            "unmatched={} refused_repeats={} refused_ambiguous={} unpaired={}",
            c.unmatched, c.refused_repeats, c.refused_ambiguous, c.unpaired
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Phase2Call, Phase2Event, DIR_READ, DIR_WRITE};
    use crate::links::Links;
    use agent::pipeline::Matched;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A sighting by process `tgid` (0: this one) on `fd`; links resolve through /proc, so the
    /// process and its fd must be real.
    fn ev(signature: u64, fd: i32, write: bool, t_ns: u64, tgid: u32) -> Phase2Event {
        let call = Phase2Call {
            t_ns,
            flow_birth_ns: 1,
            cgroup_id: 0,
            tgid: if tgid == 0 { std::process::id() } else { tgid },
            tid: 0,
            fd,
            dir: if write { DIR_WRITE } else { DIR_READ },
            n: 1,
            tls: 0,
            comm: [b'x'; 16],
        };
        Phase2Event {
            call,
            signature,
            end: 64,
        }
    }

    /// The event with its link, resolved as the tracer does.
    fn seen(links: &mut Links, e: Phase2Event) -> Seen {
        let link = links.resolve(e.call.tgid, e.call.fd, e.call.flow_birth_ns);
        Seen { e, link }
    }

    fn run(events: Vec<Phase2Event>) -> (Vec<HopRecord>, MatchCounters) {
        let mut links = Links::default();
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000_000));
        for e in events {
            m.push(seen(&mut links, e));
        }
        let mut out = Vec::new();
        m.close_due(None, &mut out);
        (out, m.matcher.hops.counters)
    }

    /// A real process holding `fd` as its stdin or stdout, for as long as the test needs.
    fn holder(fd: std::os::fd::OwnedFd, as_stdin: bool) -> std::process::Child {
        let mut c = std::process::Command::new("sleep");
        c.arg("30");
        if as_stdin {
            c.stdin(fd);
        } else {
            c.stdout(fd);
        }
        c.spawn().unwrap()
    }

    #[test]
    fn residence_then_transit_through_one_process() {
        let (a_r, a_w) = std::io::pipe().unwrap();
        let (b_r, b_w) = std::io::pipe().unwrap();
        let (ar, bw) = (a_r.as_raw_fd(), b_w.as_raw_fd());
        // A writer process → pipe a → this process → pipe b → a reader process.
        let writer = holder(a_w.into(), false);
        let reader = holder(b_r.into(), true);
        let (w, r) = (writer.id(), reader.id());
        let (hops, c) = run(vec![
            ev(7, 1, true, 100, w),
            ev(7, ar, false, 150, 0),
            ev(7, bw, true, 400, 0),
            ev(7, 0, false, 450, r),
        ]);
        for mut p in [writer, reader] {
            p.kill().ok();
            p.wait().ok();
        }
        let times: Vec<(u64, u64)> = hops.iter().map(|h| (h.from.t_ns, h.to.t_ns)).collect();
        assert_eq!(
            times,
            vec![(100, 150), (400, 450), (150, 400)],
            "transit a, transit b, residence"
        );
        assert_eq!(c, MatchCounters::default());
    }

    #[test]
    fn a_moment_seen_twice_on_one_flow_is_refused_there() {
        let (r, w) = std::io::pipe().unwrap();
        let (rd, wr) = (r.as_raw_fd(), w.as_raw_fd());
        let (hops, c) = run(vec![
            ev(9, wr, true, 100, 0),
            ev(9, wr, true, 300, 0),
            ev(9, rd, false, 350, 0),
        ]);
        assert!(hops.is_empty(), "{hops:?}");
        assert_eq!(c.refused_repeats, 2);
    }

    #[test]
    fn shared_content_through_one_process_follows_learned_edges_or_is_refused() {
        let pipes: Vec<_> = (0..4).map(|_| std::io::pipe().unwrap()).collect();
        let fd = |i: usize, write: bool| {
            if write {
                pipes[i].1.as_raw_fd()
            } else {
                pipes[i].0.as_raw_fd()
            }
        };
        // Two calls through this process: in on pipes 0 and 1, out on pipes 2 and 3.
        let mut events = Vec::new();
        // Unique moments teach 0 → 2 and 1 → 3.
        events.extend([
            ev(1, fd(0, false), false, 10, 0),
            ev(1, fd(2, true), true, 20, 0),
        ]);
        events.extend([
            ev(2, fd(1, false), false, 11, 0),
            ev(2, fd(3, true), true, 21, 0),
        ]);
        let mut links = Links::default();
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000));
        for e in events {
            m.push(seen(&mut links, e));
        }
        let mut out = Vec::new();
        m.close_due(Some(5_000), &mut out);
        assert_eq!(out.len(), 2);
        // Hold music: the same moment on both calls at once.
        for e in [
            ev(3, fd(0, false), false, 10_000, 0),
            ev(3, fd(1, false), false, 10_001, 0),
            ev(3, fd(2, true), true, 10_100, 0),
            ev(3, fd(3, true), true, 10_101, 0),
        ] {
            m.push(seen(&mut links, e));
        }
        out.clear();
        m.close_due(None, &mut out);
        let pairs: Vec<(i32, i32)> = out.iter().map(|h| (h.from.fd, h.to.fd)).collect();
        assert_eq!(
            pairs,
            vec![(fd(0, false), fd(2, true)), (fd(1, false), fd(3, true))]
        );
        // Without learned edges the same moment is refused, not guessed.
        let (hops, c) = run(vec![
            ev(4, fd(0, false), false, 10, 0),
            ev(4, fd(1, false), false, 11, 0),
            ev(4, fd(2, true), true, 20, 0),
        ]);
        assert!(hops.is_empty(), "{hops:?}");
        assert_eq!(c.refused_ambiguous, 1);
    }

    #[test]
    fn a_proxy_passing_a_moment_twice_feeds_each_write_from_the_read_since_its_last_write() {
        let pipes: Vec<_> = (0..4).map(|_| std::io::pipe().unwrap()).collect();
        let (r0, w1) = (pipes[0].0.as_raw_fd(), pipes[1].1.as_raw_fd());
        let (r2, w3) = (pipes[2].0.as_raw_fd(), pipes[3].1.as_raw_fd());
        // In on 0, out on 1, back in on 2, out on 3 (stunnel: TLS → plain → relay → TLS).
        let (hops, c) = run(vec![
            ev(5, r0, false, 10, 0),
            ev(5, w1, true, 20, 0),
            ev(5, r2, false, 30, 0),
            ev(5, w3, true, 40, 0),
        ]);
        let pairs: Vec<(i32, i32)> = hops.iter().map(|h| (h.from.fd, h.to.fd)).collect();
        assert_eq!(pairs, vec![(r0, w1), (r2, w3)]);
        assert_eq!(c.refused_ambiguous, 0);
    }
}
