//! Matching hop records to the truth: which hop of which call, and which moment, each record
//! is; or why it is a duplicate, framing, or false.
//!
//! A record whose two ends are our components is matched by flow position when it names
//! both (the two sides carried the same audio byte) and by signature otherwise (both sides
//! carried the moment with the record's fds). A record with an external end is matched by
//! signature on its known side; its external side must keep to the link its fd is on.

use super::hops::{key_of, Hops};
use super::index::{CallTruthIndex, FlowOwners, PointFlow};
use super::tally::Tally;
use crate::truth::{GroundTruth, Point};
use agent::schema::Dir;
use agent::schema::{HopRecord, Sighting};
use shared::FingerprintConfig;
use std::collections::{HashMap, HashSet};

/// A record matched to the truth of a hop and moment.
struct Match {
    /// How far the record's two stamps are from the truth's, summed: the nearest match wins.
    distance: u64,
    hop: usize,
    /// The moment's audio end offset.
    end: u64,
    /// The true latency, and the true stamps of both sides.
    latency_ns: i64,
    from_t_ns: u64,
    to_t_ns: u64,
    /// Either side's truth was preempted.
    preempted: bool,
}

/// Why a record is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FalseMatch {
    ExternalFdOnAnotherLink,
    NoSuchHop,
    SidesCarriedDifferentBytes,
    NotAudio,
    NotCarriedThere,
}

impl FalseMatch {
    pub(super) fn why(self) -> &'static str {
        match self {
            Self::ExternalFdOnAnotherLink => "the external fd is another link's",
            Self::NoSuchHop => "no such hop",
            Self::SidesCarriedDifferentBytes => "the two sides did not carry the same audio byte",
            Self::NotAudio => "a signature of no call's audio",
            Self::NotCarriedThere => "that moment is not carried there",
        }
    }
}

/// Everything a record is matched against.
pub(super) struct Matcher<'a> {
    gt: &'a GroundTruth,
    calls: &'a [CallTruthIndex],
    hops: &'a Hops,
    owners: FlowOwners,
    /// signature → (call index, moment end) of every moment with it.
    by_signature: HashMap<u64, Vec<(usize, u64)>>,
    external_pids: HashSet<u32>,
    window: u64,
}

impl<'a> Matcher<'a> {
    pub(super) fn new(
        gt: &'a GroundTruth,
        calls: &'a [CallTruthIndex],
        hops: &'a Hops,
        cfg: FingerprintConfig,
    ) -> Self {
        let mut by_signature: HashMap<u64, Vec<(usize, u64)>> = HashMap::new();
        for (ci, c) in calls.iter().enumerate() {
            for m in &c.moments {
                by_signature
                    .entry(m.signature)
                    .or_default()
                    .push((ci, m.end));
            }
        }
        Self {
            gt,
            calls,
            hops,
            owners: FlowOwners::build(calls),
            by_signature,
            external_pids: gt
                .components
                .iter()
                .filter(|c| c.external)
                .map(|c| c.pid)
                .collect(),
            window: cfg.window as u64,
        }
    }

    /// Matches every record, counting each into `tally`.
    pub(super) fn match_all<'r>(&self, records: &'r [HopRecord], tally: &mut Tally<'r>) {
        let (through_external, known): (Vec<&HopRecord>, Vec<&HopRecord>) = records
            .iter()
            .partition(|r| self.is_external(&r.from) || self.is_external(&r.to));
        for r in known {
            self.match_known(r, tally);
        }
        self.match_through_external(&through_external, tally);
    }

    fn is_external(&self, s: &Sighting) -> bool {
        self.external_pids.contains(&s.pid)
    }

    fn is_audio(&self, r: &HopRecord) -> bool {
        self.by_signature.contains_key(&r.signature)
    }

    fn flow(&self, h: usize, to: bool) -> &PointFlow {
        let hop = &self.hops.list[h];
        &self.calls[hop.call_idx].flows[if to { hop.to } else { hop.from }]
    }

    fn point(&self, h: usize, to: bool) -> &Point {
        let hop = &self.hops.list[h];
        &self.calls[hop.call_idx].points[if to { hop.to } else { hop.from }]
    }

    /// Why `r` is false; `fits_another_link`: it had candidates, but only on other links
    /// than its external fd's.
    fn false_match(&self, r: &HopRecord, positioned: bool, fits_another_link: bool) -> FalseMatch {
        if fits_another_link {
            FalseMatch::ExternalFdOnAnotherLink
        } else if !self.hops.exist(&key_of(r)) {
            FalseMatch::NoSuchHop
        } else if positioned {
            FalseMatch::SidesCarriedDifferentBytes
        } else if !self.is_audio(r) {
            FalseMatch::NotAudio
        } else {
            FalseMatch::NotCarriedThere
        }
    }

    fn count_false(&self, r: &HopRecord, why: FalseMatch, tally: &mut Tally) {
        tally.false_match(r, why.why(), !self.is_audio(r));
    }

    /// A record between two of our components.
    fn match_known(&self, r: &HopRecord, tally: &mut Tally) {
        let positioned = r.from.pos.is_some() && r.to.pos.is_some();
        let best = if positioned {
            self.best_by_position(r)
        } else {
            self.best_by_signature(r)
        };
        match best {
            None if positioned && (self.is_framing_transit(r) || self.is_framing_residence(r)) => {
                tally.framing += 1;
            }
            None => self.count_false(r, self.false_match(r, positioned, false), tally),
            Some(m) => {
                if tally.matched.insert((m.hop, m.end)) {
                    tally.correct(r, [Some(m.from_t_ns), Some(m.to_t_ns)]);
                    let err = (r.latency_ns - m.latency_ns).unsigned_abs();
                    tally.latency_error(err, m.preempted, &[m.hop]);
                    if !m.preempted && r.from.node != r.to.node {
                        tally.cross_node_error(err, self.clock_error(r), r.bound_ns);
                    }
                } else {
                    tally.duplicates += 1;
                }
            }
        }
    }

    /// How far a cross-node record's latency is from the latency of its own stamps on the
    /// real clock: the error of its nodes' clock alignment alone, without the stamps' own
    /// delays, which the bound does not cover. None when its sides carry no node stamps.
    fn clock_error(&self, r: &HopRecord) -> Option<u64> {
        let real = |s: &Sighting| Some(self.gt.real_ns(s.node.as_deref()?, s.node_t_ns?));
        let on_real = i128::from(real(&r.to)?) - i128::from(real(&r.from)?);
        Some(u64::try_from((i128::from(r.latency_ns) - on_real).unsigned_abs()).unwrap_or(u64::MAX))
    }

    /// Both sides name a flow position: a hop matches when both carried the same audio byte.
    /// Only hops of calls whose audio the from side's byte is are tried, in hop order, as the
    /// nearest first found wins ties.
    fn best_by_position(&self, r: &HopRecord) -> Option<Match> {
        let key = key_of(r);
        let mut cands: Vec<usize> = r
            .from
            .pos
            .and_then(|p| p.checked_sub(1))
            .map(|flow| self.owners.calls_at(r.from.pid, r.from.dir, flow))
            .unwrap_or_default()
            .into_iter()
            .flat_map(|ci| self.hops.of_key_and_call(key, ci))
            .collect();
        cands.sort_unstable();
        cands.dedup();
        cands
            .into_iter()
            .filter_map(|h| self.by_position(r, h))
            .min_by_key(|m| m.distance)
    }

    fn by_position(&self, r: &HopRecord, h: usize) -> Option<Match> {
        let (from_pos, to_pos) = (r.from.pos?, r.to.pos?);
        let (a, oa) = self.flow(h, false).at_flow(from_pos.checked_sub(1)?)?;
        let (b, ob) = self.flow(h, true).at_flow(to_pos.checked_sub(1)?)?;
        if a != b || oa.fd != r.from.fd || ob.fd != r.to.fd {
            return None;
        }
        Some(Match {
            distance: oa.t_ns.abs_diff(r.from.t_ns) + ob.t_ns.abs_diff(r.to.t_ns),
            hop: h,
            end: a + 1,
            latency_ns: ob.t_ns as i64 - oa.t_ns as i64,
            from_t_ns: oa.t_ns,
            to_t_ns: ob.t_ns,
            preempted: oa.preempted || ob.preempted,
        })
    }

    /// Hops of the calls with the record's signature whose sides carried the moment with the
    /// record's fds; ties go to the lowest hop, then the call's first moment of the signature.
    fn best_by_signature(&self, r: &HopRecord) -> Option<Match> {
        let key = key_of(r);
        self.by_signature
            .get(&r.signature)
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, &(ci, end))| {
                self.hops
                    .of_key_and_call(key, ci)
                    .map(move |h| (i, h, ci, end))
            })
            .filter_map(|(i, h, ci, end)| {
                let hop = &self.hops.list[h];
                let c = &self.calls[ci];
                let (a, b) = (c.carried[hop.from].get(&end)?, c.carried[hop.to].get(&end)?);
                if a.fd != r.from.fd || b.fd != r.to.fd {
                    return None;
                }
                let distance = a.t_ns.abs_diff(r.from.t_ns) + b.t_ns.abs_diff(r.to.t_ns);
                Some((
                    (distance, h, i),
                    Match {
                        distance,
                        hop: h,
                        end,
                        latency_ns: b.t_ns as i64 - a.t_ns as i64,
                        from_t_ns: a.t_ns,
                        to_t_ns: b.t_ns,
                        preempted: a.preempted || b.preempted,
                    },
                ))
            })
            .min_by_key(|(order, _)| *order)
            .map(|(_, m)| m)
    }

    /// Framing bytes in transit: one link's two ends, the same position, the syscalls that
    /// moved them.
    fn is_framing_transit(&self, r: &HopRecord) -> bool {
        self.hops
            .of_key(&key_of(r))
            .any(|h| self.framing_transit_on(r, h).is_some())
    }

    fn framing_transit_on(&self, r: &HopRecord, h: usize) -> Option<()> {
        let pos = r.from.pos?.checked_sub(1)?;
        if self.point(h, false).link != self.point(h, true).link || r.to.pos? != pos + 1 {
            return None;
        }
        let (oa, ob) = (
            self.flow(h, false).op_at(pos)?,
            self.flow(h, true).op_at(pos)?,
        );
        (oa.fd == r.from.fd && ob.fd == r.to.fd).then_some(())
    }

    /// Framing bytes a relay forwards unchanged (a residence): both windows sit in framing,
    /// the same distance before the same call's same audio byte, with the record's fds: the
    /// same envelope's header (sequence, checksum, metadata) read and written again.
    fn is_framing_residence(&self, r: &HopRecord) -> bool {
        let (Some(pf), Some(pt)) = (r.from.pos, r.to.pos) else {
            return false;
        };
        if r.from.pid != r.to.pid || pf == 0 || pt == 0 {
            return false;
        }
        let starts = |flow: &PointFlow, at: u64| {
            flow.run_at_flow(at)
                .filter(|run| run.0 == at)
                .map(|run| run.1)
        };
        let framing = |flow: &PointFlow, pos: u64, fd: i32| {
            flow.run_at_flow(pos - 1).is_none() && flow.op_at(pos - 1).is_some_and(|op| op.fd == fd)
        };
        self.owners
            .next_audio(r.from.pid, r.from.dir, pf)
            .into_iter()
            .any(|(f1, ci)| {
                let f2 = pt + (f1 - pf);
                self.hops.of_key_and_call(key_of(r), ci).any(|h| {
                    let (a, b) = (self.flow(h, false), self.flow(h, true));
                    starts(a, f1).is_some()
                        && starts(a, f1) == starts(b, f2)
                        && framing(a, pf, r.from.fd)
                        && framing(b, pt, r.to.fd)
                })
            })
    }

    /// Records with an external end, matched by signature.
    fn match_through_external<'r>(&self, records: &[&'r HopRecord], tally: &mut Tally<'r>) {
        let candidates: Vec<Vec<(usize, u64)>> = records
            .iter()
            .map(|r| self.external_candidates(r))
            .collect();
        let link_of_fd = self.links_of_external_fds(records, &candidates);
        let framing_signatures: HashSet<u64> = records
            .iter()
            .filter(|r| !self.is_audio(r) && self.is_framing_at_known_side(r))
            .map(|r| r.signature)
            .collect();
        let is_framing = |r: &HopRecord| {
            framing_signatures.contains(&r.signature)
                && (self.is_framing_at_known_side(r)
                    || (self.is_external(&r.from) && self.is_external(&r.to)))
        };
        for (&r, cands) in records.iter().zip(&candidates) {
            let fits = |&&(h, _): &&(usize, u64)| {
                [(false, &r.from), (true, &r.to)].iter().all(|(to, s)| {
                    match link_of_fd.get(&(s.pid, s.dir, s.fd)) {
                        Some(Some(link)) => self.point(h, *to).link == *link,
                        _ => true,
                    }
                })
            };
            let fitting: Vec<_> = cands.iter().filter(fits).collect();
            match fitting.iter().find(|c| !tally.matched.contains(c)) {
                Some(&&(h, end)) => {
                    tally.matched.insert((h, end));
                    tally.matched_through_external.insert((h, end), r);
                    let hop = &self.hops.list[h];
                    let c = &self.calls[hop.call_idx];
                    let truth = |p: usize| c.carried[p].get(&end).map(|k| k.t_ns);
                    tally.correct(r, [truth(hop.from), truth(hop.to)]);
                }
                None if !fitting.is_empty() => tally.duplicates += 1,
                None if is_framing(r) => tally.framing += 1,
                None => self.count_false(r, self.false_match(r, false, !cands.is_empty()), tally),
            }
        }
    }

    /// Hops of the record's key whose call has the moment and whose known sides carried it
    /// with the record's fd, nearest to the known stamps first (a signature may repeat in a
    /// call): (hop, moment end).
    fn external_candidates(&self, r: &HopRecord) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for h in self.hops.of_key(&key_of(r)) {
            let hop = &self.hops.list[h];
            let c = &self.calls[hop.call_idx];
            // How far the record's stamp is from the truth's; `None` if not carried there.
            let distance = |p: usize, s: &Sighting, end: u64| {
                if c.external[p] {
                    return Some(0);
                }
                let k = c.carried[p].get(&end).filter(|k| k.fd == s.fd)?;
                Some(k.t_ns.abs_diff(s.t_ns))
            };
            for &(ci, end) in self.by_signature.get(&r.signature).into_iter().flatten() {
                if ci != hop.call_idx {
                    continue;
                }
                if let (Some(a), Some(b)) = (
                    distance(hop.from, &r.from, end),
                    distance(hop.to, &r.to, end),
                ) {
                    out.push((a + b, h, end));
                }
            }
        }
        out.sort_by_key(|&(d, _, _)| d);
        out.into_iter().map(|(_, h, end)| (h, end)).collect()
    }

    /// An external fd is one end of one link: learnt from records whose candidates agree on
    /// it (a broker's fan-out or a proxy's two passes give hops that differ only there).
    /// (pid, dir, fd) → its link, or `None` when records disagree.
    fn links_of_external_fds(
        &self,
        records: &[&HopRecord],
        candidates: &[Vec<(usize, u64)>],
    ) -> HashMap<(u32, Dir, i32), Option<&str>> {
        let mut link_of_fd: HashMap<(u32, Dir, i32), Option<&str>> = HashMap::new();
        for (r, cands) in records.iter().zip(candidates) {
            for (to, s) in [(false, &r.from), (true, &r.to)] {
                let Some(&(first, _)) = cands.first() else {
                    continue;
                };
                let link = self.point(first, to).link.as_str();
                if self.is_external(s) && cands.iter().all(|&(h, _)| self.point(h, to).link == link)
                {
                    link_of_fd
                        .entry((s.pid, s.dir, s.fd))
                        .and_modify(|l| *l = l.filter(|l| *l == link))
                        .or_insert(Some(link));
                }
            }
        }
        link_of_fd
    }

    /// Windows holding the broker's or proxy's protocol bytes cross externals too. A known
    /// side shows one: its syscall carried `pos` with the record's fd, but the window before
    /// `pos` is not one run of a call's audio. (A record with both ends external is framing
    /// when its signature was framing at a known side.)
    fn is_framing_at_known_side(&self, r: &HopRecord) -> bool {
        let window = self.window;
        let known: Vec<(bool, &Sighting)> = [(false, &r.from), (true, &r.to)]
            .into_iter()
            .filter(|(_, s)| !self.is_external(s))
            .collect();
        !known.is_empty()
            && known.iter().all(|&(to, s)| {
                let Some(pos) = s.pos.filter(|&p| p >= window) else {
                    return false;
                };
                self.hops.of_key(&key_of(r)).any(|h| {
                    let flow = self.flow(h, to);
                    flow.op_at(pos - 1).is_some_and(|op| op.fd == s.fd)
                        && !flow
                            .runs
                            .iter()
                            .any(|&(f, _, l)| f + window <= pos && pos <= f + l)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::FalseMatch;
    use agent::schema::HopRecord;

    /// A moment carried at every point, whose truth is not preempted anywhere.
    fn undisturbed(f: &Fixture) -> u64 {
        let c = f.call();
        *f.moments_everywhere()
            .iter()
            .find(|end| c.carried.iter().all(|k| !k[end].preempted))
            .unwrap()
    }

    #[test]
    fn a_correct_transit_matches_by_position_and_by_signature() {
        let f = Fixture::new(false);
        let end = undisturbed(&f);
        let by_position = f.record(SRC_WRITE, RELAY_READ, end);
        let mut by_signature = f.record(RELAY_WRITE, SINK_READ, end);
        (by_signature.from.pos, by_signature.to.pos) = (None, None);
        let s = f.score(&[by_position, by_signature]);
        assert_eq!((s.correct, s.false_matches, s.duplicates), (2, 0, 0), "{s}");
        assert_eq!(s.error_max_all_ns, 0);
    }

    /// The one false record's reason.
    fn why_false(f: &Fixture, r: HopRecord) -> String {
        let s = f.score(&[r]);
        assert_eq!((s.correct, s.false_matches), (0, 1), "{s}");
        s.false_examples[0].clone()
    }

    #[test]
    fn false_records_say_why() {
        let f = Fixture::new(false);
        let end = undisturbed(&f);
        let mut other_pid = f.record(SRC_WRITE, RELAY_READ, end);
        other_pid.to.pid = 999;
        let mut wrong_fd = f.record(SRC_WRITE, RELAY_READ, end);
        wrong_fd.to.fd = 9;
        let mut other_byte = f.record(SRC_WRITE, RELAY_READ, end);
        other_byte.to.pos = other_byte.to.pos.map(|p| p + 2);
        let mut wrong_fd_unpositioned = wrong_fd.clone();
        (wrong_fd_unpositioned.from.pos, wrong_fd_unpositioned.to.pos) = (None, None);
        let mut not_audio = wrong_fd_unpositioned.clone();
        not_audio.to.fd = 4;
        not_audio.signature ^= 1;
        for (r, why) in [
            (other_pid, FalseMatch::NoSuchHop),
            (wrong_fd, FalseMatch::SidesCarriedDifferentBytes),
            (other_byte, FalseMatch::SidesCarriedDifferentBytes),
            (wrong_fd_unpositioned, FalseMatch::NotCarriedThere),
            (not_audio, FalseMatch::NotAudio),
        ] {
            let example = why_false(&f, r);
            assert!(example.ends_with(why.why()), "{example} is not {why:?}");
        }
    }

    #[test]
    fn the_same_moment_twice_on_a_hop_is_a_duplicate() {
        let f = Fixture::new(false);
        let r = f.record(RELAY_READ, RELAY_WRITE, undisturbed(&f));
        let s = f.score(&[r.clone(), r]);
        assert_eq!((s.correct, s.duplicates, s.false_matches), (1, 1, 0), "{s}");
    }

    #[test]
    fn a_window_of_header_bytes_in_transit_is_framing() {
        let f = Fixture::new(false);
        let mut r = f.record(SRC_WRITE, RELAY_READ, undisturbed(&f));
        (r.from.pos, r.to.pos) = (Some(STREAM_HEADER), Some(STREAM_HEADER));
        r.signature = 0x5eed;
        let s = f.score(&[r]);
        assert_eq!((s.framing, s.false_matches, s.correct), (1, 0, 0), "{s}");
    }

    #[test]
    fn records_through_an_external_component_match_by_signature_and_add_up_per_chain() {
        let f = Fixture::new(true);
        let ends = f.moments_everywhere();
        let chain = [
            (SRC_WRITE, RELAY_READ),
            (RELAY_READ, RELAY_WRITE),
            (RELAY_WRITE, SINK_READ),
        ];
        let mut records: Vec<HopRecord> = ends
            .iter()
            .flat_map(|&end| chain.map(|(from, to)| f.record(from, to, end)))
            .collect();
        records.push(records[0].clone());
        let s = f.score(&records);
        assert_eq!(s.correct, 3 * ends.len(), "{s}");
        assert_eq!((s.duplicates, s.false_matches), (1, 0), "{s}");
        assert_eq!(
            s.error_max_all_ns, 0,
            "every chain adds up to the truth: {s}"
        );
        // A chain's error is its records' latencies against the truth from end to end.
        records[1].latency_ns += 7000;
        assert_eq!(f.score(&records).error_max_all_ns, 7000);
        // The known side did not carry it with that fd.
        let mut wrong_fd = records[0].clone();
        wrong_fd.from.fd = 9;
        let example = why_false(&f, wrong_fd);
        assert!(
            example.ends_with(FalseMatch::NotCarriedThere.why()),
            "{example}"
        );
    }
}
