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
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Debug)]
struct Seen {
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

pub struct Matcher {
    window_ns: u64,
    links: Links,
    open: HashMap<u64, Vec<Seen>>,
    due: VecDeque<(u64, u64)>,
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

impl Matcher {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            links: Links::default(),
            open: HashMap::new(),
            due: VecDeque::new(),
            edges: HashMap::new(),
            counters: MatchCounters::default(),
        }
    }

    pub fn push(&mut self, e: Phase2Event) {
        // Resolved now, while the fd is most likely still open.
        let link = self
            .links
            .resolve(e.call.tgid, e.call.fd, e.call.flow_birth_ns);
        let due = &mut self.due;
        self.open
            .entry(e.signature)
            .or_insert_with(|| {
                due.push_back((e.call.t_ns, e.signature));
                Vec::new()
            })
            .push(Seen { e, link });
    }

    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<HopRecord>) {
        while let Some(&(first, sig)) = self.due.front() {
            if first.saturating_add(self.window_ns) > now_ns {
                break;
            }
            self.due.pop_front();
            if let Some(seen) = self.open.remove(&sig) {
                self.close(seen, out);
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<HopRecord>) {
        self.flush(u64::MAX, out);
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
                    match learned.as_slice() {
                        [r] => **r,
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
}
