//! Matches one moment across components as a tree of hops: transit (a write and a read of the
//! same link) and residence (a read and a later write in one process). A moment's sightings are
//! grouped for a bounded window; what cannot be told apart is refused, not guessed:
//! - the same moment twice on one flow (a loop, a tone) drops that flow's sightings;
//! - a process that read the moment on several links and wrote it on several (shared hold music
//!   through one relay) pairs each write with the read whose link fed that write's link in
//!   unambiguous moments before (learned edges), or refuses.

use crate::event::Phase2Event;
use crate::links::{Link, Links};
use harness::schema::{HopRecord, Sighting};
use harness::truth::Dir;
use std::collections::HashMap;

/// A sighting and the link it was seen on.
#[derive(Clone, Debug)]
pub struct Seen {
    e: Phase2Event,
    link: Link,
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

#[derive(Default)]
pub struct Matcher {
    links: Links,
    /// (process, input link, output link) → unambiguous moments that took that way.
    edges: HashMap<(u32, Link, Link), u64>,
    pub counters: MatchCounters,
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
    }
}

impl phase_1_poc::Matching for Matcher {
    type Event = Phase2Event;
    type Seen = Seen;

    fn admit(&mut self, e: Phase2Event) -> (u64, u64, Seen) {
        // Resolved now, while the fd is most likely still open.
        let link = self
            .links
            .resolve(e.call.tgid, e.call.fd, e.call.flow_birth_ns);
        (e.signature, e.call.t_ns, Seen { e, link })
    }

    fn close(&mut self, mut seen: Vec<Seen>, out: &mut Vec<HopRecord>) {
        if seen.len() < 2 {
            self.counters.unmatched += 1;
            return;
        }
        // A flow that saw the moment twice: drop all its sightings.
        let flow = |s: &Seen| {
            (
                s.e.call.tgid,
                s.e.call.fd,
                s.e.call.dir,
                s.e.call.flow_birth_ns,
            )
        };
        let mut per_flow: HashMap<_, usize> = HashMap::new();
        for s in &seen {
            *per_flow.entry(flow(s)).or_default() += 1;
        }
        let before = seen.len();
        seen.retain(|s| per_flow[&flow(s)] == 1);
        self.counters.refused_repeats += (before - seen.len()) as u64;
        seen.sort_by_key(|s| s.e.call.t_ns);
        self.counters.unpaired += seen.iter().filter(|s| !s.link.is_paired()).count() as u64;

        let (reads, writes): (Vec<&Seen>, Vec<&Seen>) =
            seen.iter().partition(|s| s.e.dir() == Dir::Read);
        // Transit: the write of the same link, in another process, before the read.
        for r in &reads {
            let mut from = writes.iter().filter(|w| {
                w.link == r.link && r.link.is_paired() && w.e.call.tgid != r.e.call.tgid
            });
            if let (Some(w), None) = (from.next(), from.next()) {
                if w.e.call.t_ns <= r.e.call.t_ns {
                    out.push(HopRecord::new(w.e.signature, sighting(w), sighting(r)));
                }
            }
        }
        // Residence: the read in the same process that fed each write.
        for w in &writes {
            let fed_by: Vec<&&Seen> = reads
                .iter()
                .filter(|r| r.e.call.tgid == w.e.call.tgid && r.e.call.t_ns <= w.e.call.t_ns)
                .collect();
            let read = match fed_by.as_slice() {
                [] => continue,
                [r] => {
                    *self
                        .edges
                        .entry((w.e.call.tgid, r.link.clone(), w.link.clone()))
                        .or_default() += 1;
                    *r
                }
                several => {
                    let learned: Vec<&&&Seen> = several
                        .iter()
                        .filter(|r| {
                            self.edges.contains_key(&(
                                w.e.call.tgid,
                                r.link.clone(),
                                w.link.clone(),
                            ))
                        })
                        .collect();
                    // Else the one read since this process last wrote the moment: a proxy
                    // that passes it through twice (stunnel: TLS in, plain out, plain in, TLS
                    // out) reads it again before each write.
                    let previous_write = writes
                        .iter()
                        .filter(|o| o.e.call.tgid == w.e.call.tgid && o.e.call.t_ns < w.e.call.t_ns)
                        .map(|o| o.e.call.t_ns)
                        .max();
                    let since: Vec<&&Seen> = several
                        .iter()
                        .copied()
                        .filter(|r| previous_write.is_some_and(|t| r.e.call.t_ns > t))
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
            out.push(HopRecord::new(w.e.signature, sighting(read), sighting(w)));
        }
    }

    fn health(&self) -> String {
        let c = self.counters;
        format!(
            "unmatched={} refused_repeats={} refused_ambiguous={} unpaired={}",
            c.unmatched, c.refused_repeats, c.refused_ambiguous, c.unpaired
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Phase2Call;
    use phase_1_poc::Matched;
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
            dir: write as u32,
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

    fn run(events: Vec<Phase2Event>) -> (Vec<HopRecord>, MatchCounters) {
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000_000));
        for e in events {
            m.push(e);
        }
        let mut out = Vec::new();
        m.close_due(None, &mut out);
        (out, m.matcher.counters)
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
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000));
        for e in events {
            m.push(e);
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
            m.push(e);
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
