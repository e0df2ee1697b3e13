//! Matches one moment across components as a tree of hops: transit (a write and a read of the
//! same link) and residence (a read and a later write in one process). A moment's sightings are
//! grouped for a bounded window; what cannot be told apart is refused, not guessed:
//! - the same moment twice on one flow (a loop, a tone) drops that flow's sightings;
//! - a process that read the moment on several links and wrote it on several (shared hold music
//!   through one relay) pairs each write with the read whose link fed that write's link in
//!   unambiguous moments before (learned edges), or refuses;
//! - a moment that vanishes (into TLS no probe sees) and reappears further on is one opaque hop
//!   between its last and its next sighting, when the two flows were learned to join in
//!   moments where nothing else could have, or refused.
//!
//! The rules ([`Hops`]) see sightings through [`Sight`], whoever made them: here, kernel events
//! whose links the tracer resolved as it drained them ([`Seen`]). The matcher reads nothing but
//! its sightings.

use crate::links::{Link, Observed, Seen};
use crate::opaque_links::{End, OpaqueLinks};
use agent::schema::{Dir, HopKind, HopRecord, Sighting};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};

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
    /// Moments that reappeared after an unseen stretch, on a flow that does not start moments.
    pub opaque_emerged: u64,
    /// Of those, the ones reported as one opaque hop from where they were last seen.
    pub opaque_matched: u64,
    /// Of those, the ones refused: several learned entries could have fed them.
    pub refused_opaque: u64,
}

/// A way through a process: (process, input link, output link).
type Edge<S> = (
    <S as Sight>::Process,
    <S as Sight>::Link,
    <S as Sight>::Link,
);

/// What one end of a flow, (process, link, direction), was in the moments it saw: a root after
/// the moment's first (where it came from), an entry (nothing visible after it).
#[derive(Default)]
struct EndRoles {
    sightings: u64,
    later_roots: u64,
    entries: u64,
}

/// Moments through an unseen stretch between two flow ends before it is reported.
const STRETCH_SUPPORT: u64 = 3;

/// The hop rules, with what they learn across moments.
pub struct Hops<S: Sight> {
    /// Unambiguous moments that took each way.
    edges: HashMap<Edge<S>, u64>,
    /// Flow ends by hash: a sighting costs no clone of its link.
    hasher: RandomState,
    ends: HashMap<u64, EndRoles>,
    /// Moments whose only possible entry into an unseen stretch was the first flow end and
    /// which came out at the second.
    stretches: HashMap<(u64, u64), u64>,
    /// Who holds which links whose plaintext no probe sees: what a stretch must run through.
    pub opaque_links: OpaqueLinks<S::Process, S::Link>,
    pub counters: MatchCounters,
}

impl<S: Sight> Default for Hops<S> {
    fn default() -> Self {
        Self {
            edges: HashMap::new(),
            hasher: RandomState::new(),
            ends: HashMap::new(),
            stretches: HashMap::new(),
            opaque_links: OpaqueLinks::default(),
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
        let repeats = (before - seen.len()) as u64;
        self.counters.refused_repeats += repeats;
        seen.sort_by_key(|s| s.t_ns());
        self.counters.unpaired += seen.iter().filter(|s| !s.paired()).count() as u64;

        let (reads, writes): (Vec<usize>, Vec<usize>) =
            (0..seen.len()).partition(|&i| seen[i].dir() == Dir::Read);
        let mut hops = Vec::new();
        // Transit: the write of the same link, in another process, before the read.
        for &r in &reads {
            let read = &seen[r];
            let mut from = writes.iter().copied().filter(|&w| {
                let w = &seen[w];
                w.link() == read.link() && read.paired() && w.process() != read.process()
            });
            if let (Some(w), None) = (from.next(), from.next()) {
                if seen[w].may_precede(read) {
                    hops.push((w, r));
                }
            }
        }
        let ambiguous = self.counters.refused_ambiguous;
        for &w in &writes {
            if let Some(r) = self.feeding_read(&seen, &reads, &writes, w) {
                hops.push((r, w));
            }
        }
        out.extend(hops.iter().map(|&(a, b)| S::hop(&seen[a], &seen[b])));
        // A hole left by a refusal is not an unseen stretch.
        if repeats == 0 && self.counters.refused_ambiguous == ambiguous {
            self.opaque(&seen, &hops, out);
        }
    }

    /// Residence: the read in the same process that fed write `w`, if it can be told.
    fn feeding_read(
        &mut self,
        seen: &[S],
        reads: &[usize],
        writes: &[usize],
        w: usize,
    ) -> Option<usize> {
        let write = &seen[w];
        let fed_by: Vec<usize> = reads
            .iter()
            .copied()
            .filter(|&r| seen[r].process() == write.process() && seen[r].t_ns() <= write.t_ns())
            .collect();
        match fed_by.as_slice() {
            [] => None,
            &[r] => {
                *self
                    .edges
                    .entry((
                        write.process(),
                        seen[r].link().clone(),
                        write.link().clone(),
                    ))
                    .or_default() += 1;
                Some(r)
            }
            several => {
                let learned: Vec<usize> = several
                    .iter()
                    .copied()
                    .filter(|&r| {
                        self.edges.contains_key(&(
                            write.process(),
                            seen[r].link().clone(),
                            write.link().clone(),
                        ))
                    })
                    .collect();
                // Else the one read since this process last wrote the moment: a proxy that
                // passes it through twice (stunnel: TLS in, plain out, plain in, TLS out) reads
                // it again before each write.
                let previous_write = writes
                    .iter()
                    .map(|&o| &seen[o])
                    .filter(|o| o.process() == write.process() && o.t_ns() < write.t_ns())
                    .map(|o| o.t_ns())
                    .max();
                let since: Vec<usize> = several
                    .iter()
                    .copied()
                    .filter(|&r| previous_write.is_some_and(|t| seen[r].t_ns() > t))
                    .collect();
                match (learned.as_slice(), since.as_slice()) {
                    (&[r], _) | (&[], &[r]) => Some(r),
                    _ => {
                        self.counters.refused_ambiguous += 1;
                        None
                    }
                }
            }
        }
    }

    /// Opaque stretches: a moment that reappears (a root: a write nothing read fed, a read of a
    /// write nobody saw) after it was last seen somewhere (an entry: a write nobody read, a read
    /// nothing was written from) crossed something no probe sees, typically TLS of a stack
    /// without uprobes. Only flow ends that are nearly always roots (or entries) count: a
    /// moment hidden now and then by a header inside its window leaves holes too. An entry
    /// and a root are a stretch's ends only if processes holding opaque links join them
    /// ([`OpaqueLinks::join`]). The stretch is reported as one hop from its entry to its root
    /// when the two flow ends are joined by an edge learned from moments where no other entry
    /// could have fed the root, and by no other: shared content (hold music on many calls) has
    /// many entries and roots at once, and a wrong pair there would join two calls.
    fn opaque(&mut self, seen: &[S], hops: &[(usize, usize)], out: &mut Vec<HopRecord>) {
        let (mut reached, mut left) = (vec![false; seen.len()], vec![false; seen.len()]);
        for &(from, to) in hops {
            left[from] = true;
            reached[to] = true;
        }
        let end: Vec<u64> = seen
            .iter()
            .map(|s| self.hasher.hash_one((s.process(), s.link(), s.dir())))
            .collect();
        let mut roots = Vec::new();
        for i in (0..seen.len()).filter(|&i| seen[i].paired()) {
            let roles = self.ends.entry(end[i]).or_default();
            roles.sightings += 1;
            if !reached[i] {
                // The first root is where the moment came from.
                if !roots.is_empty() {
                    roles.later_roots += 1;
                }
                roots.push(i);
            }
            if !left[i] {
                roles.entries += 1;
            }
        }
        // Nearly always, over enough moments to tell.
        let mostly = |n: u64, of: u64| of >= STRETCH_SUPPORT && n * 10 >= of * 9;
        let roles = |i: usize| &self.ends[&end[i]];
        let entries: Vec<usize> = (0..seen.len())
            .filter(|&i| {
                seen[i].paired() && !left[i] && mostly(roles(i).entries, roles(i).sightings)
            })
            .collect();
        let end_of = |i: usize| End {
            process: seen[i].process(),
            link: seen[i].link(),
            dir: seen[i].dir(),
        };
        // Each later root that is nearly always one, with the entries its stretch can have
        // begun at: before it, in another process, joined to it by opaque links. A later root
        // that is no stretch's far end (not nearly always one, or joined to no entry: a source
        // starting shared content at the same time as another, a moment hidden upstream) makes
        // the moment teach nothing.
        let mut far_ends = Vec::new();
        let mut teaches = true;
        for (k, &root) in roots.iter().enumerate().skip(1) {
            if !mostly(roles(root).later_roots, roles(root).sightings) {
                teaches = false;
                continue;
            }
            self.counters.opaque_emerged += 1;
            let reach: Vec<usize> = entries
                .iter()
                .copied()
                .filter(|&e| {
                    let (entry, far_end) = (&seen[e], &seen[root]);
                    entry.t_ns() < far_end.t_ns()
                        && entry.process() != far_end.process()
                        && self.opaque_links.join(end_of(e), end_of(root))
                })
                .collect();
            if reach.is_empty() {
                teaches = false;
                continue;
            }
            far_ends.push((k, reach));
        }
        for (k, reach) in far_ends {
            let root = roots[k];
            // It teaches when one entry is the only one since the root before (a chain of
            // stretches: each far end's entry follows the previous far end), or the only one
            // at all (fan-out: the first far end's consumer read last, but joins nothing).
            let since_last_root = seen[roots[k - 1]].t_ns();
            let recent: Vec<usize> = reach
                .iter()
                .copied()
                .filter(|&e| seen[e].t_ns() >= since_last_root)
                .collect();
            let taught = match (recent.as_slice(), reach.as_slice()) {
                (&[only], _) | (&[], &[only]) => Some(only),
                _ => None,
            };
            if let (true, Some(only)) = (teaches, taught) {
                *self.stretches.entry((end[only], end[root])).or_default() += 1;
            }
            let learned: Vec<usize> = reach
                .iter()
                .copied()
                .filter(|&e| {
                    self.stretches
                        .get(&(end[e], end[root]))
                        .is_some_and(|&n| n >= STRETCH_SUPPORT)
                })
                .collect();
            match learned[..] {
                [entry] => {
                    self.counters.opaque_matched += 1;
                    out.push(HopRecord {
                        kind: HopKind::Opaque,
                        ..S::hop(&seen[entry], &seen[root])
                    });
                }
                [] => {}
                _ => self.counters.refused_opaque += 1,
            }
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
        node_t_ns: None,
        pod: None,
    }
}

impl agent::pipeline::Matching for Matcher {
    type Event = Observed;
    type Seen = Seen;

    fn admit(&mut self, observed: Observed) -> Option<(u64, u64, Seen)> {
        match observed {
            Observed::Moment(seen) => Some((seen.e.signature, seen.e.call.t_ns, seen)),
            Observed::OpaqueSockets(held) => {
                self.hops.opaque_links.set(0, held);
                None
            }
        }
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
            "unmatched={} refused_repeats={} refused_ambiguous={} unpaired={} \
             opaque_emerged={} opaque_matched={} refused_opaque={}",
            c.unmatched,
            c.refused_repeats,
            c.refused_ambiguous,
            c.unpaired,
            c.opaque_emerged,
            c.opaque_matched,
            c.refused_opaque
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
            m.push(Observed::Moment(seen(&mut links, e)));
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
            m.push(Observed::Moment(seen(&mut links, e)));
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
            m.push(Observed::Moment(seen(&mut links, e)));
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

    /// Moments closed one by one through one matcher, as a run closes them, with `opaque`: the
    /// opaque sockets, (pid, fd), as the tracer finds them.
    fn run_moments(
        opaque: &[(u32, i32)],
        moments: Vec<Vec<Phase2Event>>,
    ) -> (Vec<HopRecord>, MatchCounters) {
        let mut links = Links::default();
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000));
        let held = opaque
            .iter()
            .map(|&(pid, fd)| (pid, links.lookup(pid, fd).expect("a pipe or socket")))
            .collect();
        m.push(Observed::OpaqueSockets(held));
        let mut out = Vec::new();
        for events in moments {
            for e in events {
                m.push(Observed::Moment(seen(&mut links, e)));
            }
            m.close_due(None, &mut out);
        }
        (out, m.matcher.hops.counters)
    }

    fn opaque(hops: &[HopRecord]) -> Vec<(u32, i32, u32, i32)> {
        hops.iter()
            .filter(|h| h.kind == HopKind::Opaque)
            .map(|h| (h.from.pid, h.from.fd, h.to.pid, h.to.fd))
            .collect()
    }

    /// One call: a source writes on pipe a, a process decrypts what it read through TLS no
    /// probe sees (so its read is never sighted) and writes pipe b, which a sink reads.
    struct DarkCall {
        source: std::process::Child,
        sink: std::process::Child,
        out: std::io::PipeWriter,
        dark_in: std::io::PipeReader,
    }

    impl DarkCall {
        fn new() -> Self {
            let (a_r, a_w) = std::io::pipe().unwrap();
            let (b_r, b_w) = std::io::pipe().unwrap();
            Self {
                source: holder(a_w.into(), false),
                sink: holder(b_r.into(), true),
                out: b_w,
                dark_in: a_r,
            }
        }

        /// This process's end of pipe a, as the tracer finds an opaque socket.
        fn opaque(&self) -> (u32, i32) {
            (std::process::id(), self.dark_in.as_raw_fd())
        }

        /// Moment `sig` sent at `t`: the source's write, this process's write `dark_ns` later,
        /// the sink's read.
        fn moment(&self, sig: u64, t: u64, dark_ns: u64) -> Vec<Phase2Event> {
            vec![
                ev(sig, 1, true, t, self.source.id()),
                ev(sig, self.out.as_raw_fd(), true, t + dark_ns, 0),
                ev(sig, 0, false, t + dark_ns + 50, self.sink.id()),
            ]
        }
    }

    impl Drop for DarkCall {
        fn drop(&mut self) {
            for p in [&mut self.source, &mut self.sink] {
                p.kill().ok();
                p.wait().ok();
            }
        }
    }

    #[test]
    fn a_moment_through_an_unseen_stretch_is_one_opaque_hop_once_its_flows_are_learned() {
        let call = DarkCall::new();
        let moments = (0..7)
            .map(|i| call.moment(100 + i, 10_000 * i, 300))
            .collect();
        let (hops, c) = run_moments(&[call.opaque()], moments);
        let dark = (
            call.source.id(),
            1,
            std::process::id(),
            call.out.as_raw_fd(),
        );
        // Its flow ends are told from the third moment on, which teaches the stretch; from the
        // fifth on it is reported.
        assert_eq!(opaque(&hops), vec![dark; 3], "{hops:?}");
        assert!(hops
            .iter()
            .filter(|h| h.kind == HopKind::Opaque)
            .all(|h| h.latency_ns == 300));
        // The visible transit after it, every time.
        assert_eq!(
            hops.iter().filter(|h| h.kind == HopKind::Transit).count(),
            7
        );
        assert_eq!(
            (c.opaque_emerged, c.opaque_matched, c.refused_opaque),
            (5, 3, 0)
        );
    }

    #[test]
    fn shared_content_on_calls_through_unseen_stretches_stays_in_its_call() {
        let calls = [DarkCall::new(), DarkCall::new()];
        // Each call's own speech first: each source starts its moments, each stretch is learned.
        let mut moments: Vec<Vec<Phase2Event>> = Vec::new();
        for i in 0..6 {
            for (c, call) in calls.iter().enumerate() {
                moments.push(call.moment(200 + 10 * i + c as u64, 100_000 * i, 300));
            }
        }
        // Then hold music: one moment on both calls, the second call 200 ns behind, so the
        // first call's sink has read it before the second call's stretch ends.
        let shared: Vec<Phase2Event> = calls
            .iter()
            .enumerate()
            .flat_map(|(c, call)| call.moment(999, 1_000_000 + 200 * c as u64, 300))
            .collect();
        moments.push(shared);
        let (hops, c) = run_moments(&calls.each_ref().map(|c| c.opaque()), moments);
        let shared: Vec<_> = opaque(
            &hops
                .iter()
                .filter(|h| h.signature == 999)
                .cloned()
                .collect::<Vec<_>>(),
        );
        let own = |call: &DarkCall| {
            (
                call.source.id(),
                1,
                std::process::id(),
                call.out.as_raw_fd(),
            )
        };
        assert_eq!(shared, vec![own(&calls[0]), own(&calls[1])], "{hops:?}");
        assert_eq!(c.refused_opaque, 0);
    }

    #[test]
    fn calls_that_start_on_shared_content_teach_no_stretch_between_them() {
        let calls = [DarkCall::new(), DarkCall::new()];
        let own = |call: &DarkCall| {
            (
                call.source.id(),
                1,
                std::process::id(),
                call.out.as_raw_fd(),
            )
        };
        // Hold music first, on both calls, the second 200 ns behind: each source is a root after
        // the other's often enough to pass for a stretch's far end.
        let shared = |sig: u64, t: u64| -> Vec<Phase2Event> {
            calls
                .iter()
                .enumerate()
                .flat_map(|(c, call)| call.moment(sig, t + 200 * c as u64, 300))
                .collect()
        };
        let mut moments: Vec<Vec<Phase2Event>> =
            (0..6).map(|i| shared(900 + i, 10_000 * i)).collect();
        // Then each call's own speech, then hold music again.
        for i in 0..6 {
            for (c, call) in calls.iter().enumerate() {
                moments.push(call.moment(200 + 10 * i + c as u64, 100_000 + 10_000 * i, 300));
            }
        }
        moments.push(shared(999, 1_000_000));
        let (hops, _) = run_moments(&calls.each_ref().map(|c| c.opaque()), moments);
        let mut found = opaque(&hops);
        found.sort_unstable();
        found.dedup();
        let mut want = vec![own(&calls[0]), own(&calls[1])];
        want.sort_unstable();
        assert_eq!(found, want, "{hops:?}");
        let last: Vec<_> = hops
            .iter()
            .filter(|h| h.signature == 999)
            .cloned()
            .collect();
        assert_eq!(opaque(&last), vec![own(&calls[0]), own(&calls[1])]);
    }

    /// A broker (this process) that decrypts a publisher's TLS unseen and delivers each moment
    /// to two subscribers over TLS they read through probes: each subscriber's read is a far end
    /// of the publisher's stretch, and the first subscriber's read, the last sighting before
    /// the second's, joins nothing.
    #[test]
    fn a_stretch_fanned_out_pairs_each_far_end_with_its_own_entry() {
        let [(a_r, a_w), (b_r, b_w), (c_r, c_w)] = [(); 3].map(|_| std::io::pipe().unwrap());
        let opaque_fds = [&a_r.as_raw_fd(), &b_w.as_raw_fd(), &c_w.as_raw_fd()]
            .map(|&fd| (std::process::id(), fd));
        let mut procs = [
            holder(a_w.into(), false),
            holder(b_r.into(), true),
            holder(c_r.into(), true),
        ];
        let [publisher, first, second] = [0, 1, 2].map(|i| procs[i].id());
        let moments = (0..8u64)
            .map(|i| {
                let t = 10_000 * i;
                vec![
                    ev(i, 1, true, t, publisher),
                    ev(i, 0, false, t + 300, first),
                    ev(i, 0, false, t + 500, second),
                ]
            })
            .collect();
        let (hops, c) = run_moments(&opaque_fds, moments);
        for p in &mut procs {
            p.kill().ok();
            p.wait().ok();
        }
        let mut found = opaque(&hops);
        found.sort_unstable();
        let mut want = [(publisher, 1, first, 0), (publisher, 1, second, 0)].repeat(4);
        want.sort_unstable();
        // Taught by moments 3 to 5, reported from the fifth on.
        assert_eq!(found, want, "{hops:?}");
        assert_eq!(c.refused_opaque, 0);
        let _keep = (a_r, b_w, c_w);
    }

    #[test]
    fn a_moment_hidden_now_and_then_on_one_link_is_no_opaque_stretch() {
        let [(a_r, a_w), (b_r, b_w), (c_r, c_w)] = [(); 3].map(|_| std::io::pipe().unwrap());
        let spawn = |stdin: Option<std::io::PipeReader>, stdout: Option<std::io::PipeWriter>| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            if let Some(r) = stdin {
                c.stdin(std::os::fd::OwnedFd::from(r));
            }
            if let Some(w) = stdout {
                c.stdout(std::os::fd::OwnedFd::from(w));
            }
            c.spawn().unwrap()
        };
        // source → r1 → r2 → sink over pipes a, b, c.
        let mut procs = [
            spawn(None, Some(a_w)),
            spawn(Some(a_r), Some(b_w)),
            spawn(Some(b_r), Some(c_w)),
            spawn(Some(c_r), None),
        ];
        let [src, r1, r2, sink] = [0, 1, 2, 3].map(|i| procs[i].id());
        // Every third moment has a header inside its window on pipe b: neither end sees it.
        let moments = (0..30u64)
            .map(|i| {
                let t = 10_000 * i;
                let mut m = vec![ev(i, 1, true, t, src), ev(i, 0, false, t + 10, r1)];
                if i % 3 != 0 {
                    m.extend([ev(i, 1, true, t + 20, r1), ev(i, 0, false, t + 30, r2)]);
                }
                m.extend([ev(i, 1, true, t + 40, r2), ev(i, 0, false, t + 50, sink)]);
                m
            })
            .collect();
        // r1 and r2 hold their pipes between them as opaque links: a stretch could join them.
        let between = [(r1, 1), (r2, 0)];
        let (hops, c) = run_moments(&between, moments);
        for p in &mut procs {
            p.kill().ok();
            p.wait().ok();
        }
        assert!(opaque(&hops).is_empty(), "{hops:?}");
        assert_eq!((c.opaque_emerged, c.refused_opaque), (0, 0));
        // The visible hops are all there: 5 per whole moment, the 2 transits of a hidden one.
        assert_eq!(hops.len(), 20 * 5 + 10 * 2);
    }
}
