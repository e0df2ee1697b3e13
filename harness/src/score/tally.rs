//! Tallying matched records into a [`Score`]: counts of correct, duplicate, framing and false
//! records, latency errors (per record, and per chain through external components), coverage
//! of each hop's measurable seconds, and the score's text form.

use super::hops::Hops;
use super::index::CallTruthIndex;
use crate::audio::{frame_peaks, Audio};
use crate::truth::GroundTruth;
use agent::schema::Dir;
use agent::schema::{HopRecord, Sighting};
use agent::stats::percentile;
use serde::Serialize;
use shared::FingerprintConfig;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// A second of a call counts as non-silent when at least this share of its 20 ms frames is loud.
pub const NONSILENT_SHARE: f64 = 0.25;

/// Non-silent seconds that hold a moment whose signature occurs once in the call: what a
/// tracer can measure. Tones and DTMF repeat on their own flow and are refused by design;
/// seconds with nothing but those are not measurable.
pub fn measurable_seconds(
    audio: &Audio,
    moments: &[shared::Moment],
    quiet_threshold: u16,
) -> Vec<bool> {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for m in moments {
        *count.entry(m.signature).or_default() += 1;
    }
    let mut measurable = nonsilent_seconds(audio, quiet_threshold);
    let mut has = vec![false; measurable.len()];
    for m in moments.iter().filter(|m| count[&m.signature] == 1) {
        if let Some(h) = has.get_mut(((m.end - 1) / audio.bytes_per_second()) as usize) {
            *h = true;
        }
    }
    for (m, h) in measurable.iter_mut().zip(has) {
        *m &= h;
    }
    measurable
}

/// Seconds of a call that are non-silent.
pub fn nonsilent_seconds(audio: &Audio, quiet_threshold: u16) -> Vec<bool> {
    let frame = audio.rate as usize / 50;
    frame_peaks(audio, frame)
        .chunks(50)
        .map(|sec| {
            sec.iter().filter(|&&p| p >= quiet_threshold).count() as f64 >= NONSILENT_SHARE * 50.0
        })
        .collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct HopScore {
    pub call: u32,
    pub from: String,
    pub to: String,
    pub matched: usize,
    pub coverage: f64,
    /// Over the hop's latency errors whose truth was not preempted.
    pub error_p50_ns: u64,
    pub error_p99_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub scenario: String,
    pub tracer: String,
    pub hops_exist: usize,
    pub hops_found: usize,
    /// Lowest, over calls and hops, share of measurable seconds with a matched moment.
    pub coverage_min: f64,
    pub coverage_mean: f64,
    pub nonsilent_seconds: usize,
    /// Non-silent seconds holding a moment that occurs once in its call.
    pub measurable_seconds: usize,
    /// Distinct moments matched on at least one hop, per non-silent second.
    pub moments_per_nonsilent_second: f64,
    pub records: usize,
    pub correct: usize,
    pub false_matches: usize,
    /// Of the false matches, those whose signature is no call's audio: windows of other bytes
    /// (ciphertext read where TLS is not probed, unrecognised headers) that the tracer matched
    /// along a real hop. False matches of audio are `false_matches - false_not_audio`.
    pub false_not_audio: usize,
    /// The same moment reported twice on the same hop.
    pub duplicates: usize,
    /// Windows anchored in framing bytes (envelope headers), seen at the same position on both
    /// ends of the same link, or read and written again by a relay that forwards the same
    /// envelope's header bytes: real transits of real bytes, but not audio moments.
    pub framing: usize,
    /// A few false records and why they are false.
    pub false_examples: Vec<String>,
    /// Latency error over correct records (and chains) whose truth was not preempted: the
    /// tracer's error, not the ground truth's.
    pub error_p50_ns: u64,
    pub error_p99_ns: u64,
    pub error_max_ns: u64,
    /// Latency error over all correct records and chains, preempted truth included.
    pub error_p99_all_ns: u64,
    pub error_max_all_ns: u64,
    /// Latency errors set aside because the truth of a side (of a chain's end, for chains
    /// through external components) came from a syscall whose component thread was preempted
    /// around its stamp: one per such correct record, or per such chain and moment.
    pub preempted_truth: usize,
    /// Median of (tracer's stamp − truth) of correct records' reads and writes: where a
    /// latency error comes from.
    pub read_stamp_offset_p50_ns: i64,
    pub write_stamp_offset_p50_ns: i64,
    pub hops: Vec<HopScore>,
    /// Correct records whose sides are on different nodes, truth not preempted.
    pub cross_node: CrossNodeErrors,
}

/// Hops between nodes: their error, and whether the clock-alignment bound each record carries
/// held.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CrossNodeErrors {
    pub records: usize,
    pub error_p50_ns: u64,
    pub error_p99_ns: u64,
    pub error_max_ns: u64,
    /// The part of the error the clock alignment made, of records whose sides carry their
    /// node's own stamps (the rest is the stamps' own delays, as on one node).
    pub clock_error_p99_ns: u64,
    pub clock_error_max_ns: u64,
    /// Records whose clock error (whole error, without node stamps) exceeded their `bound_ns`
    /// (or that carried none).
    pub outside_bound: usize,
    pub bound_p50_ns: u64,
    pub bound_max_ns: u64,
}

/// What matching found so far, and the latency errors of what it matched.
pub(super) struct Tally<'r> {
    /// (hop, moment end) of every moment a correct record matched.
    pub(super) matched: HashSet<(usize, u64)>,
    /// The record with an external end matched at (hop, moment end): its latency is scored
    /// per chain.
    pub(super) matched_through_external: HashMap<(usize, u64), &'r HopRecord>,
    correct: usize,
    pub(super) duplicates: usize,
    pub(super) framing: usize,
    false_matches: usize,
    false_not_audio: usize,
    false_examples: Vec<String>,
    /// (error, truth preempted on either side).
    errors: Vec<(u64, bool)>,
    /// Per hop, its errors whose truth was not preempted.
    hop_errors: Vec<Vec<u64>>,
    cross_errors: Vec<u64>,
    clock_errors: Vec<u64>,
    cross_bounds: Vec<u64>,
    outside_bound: usize,
    /// Tracer's stamp − truth of correct records' sides, by direction (`Dir as usize`).
    offsets: [Vec<i64>; 2],
}

impl<'r> Tally<'r> {
    pub(super) fn new(hops: usize) -> Self {
        Self {
            matched: HashSet::new(),
            matched_through_external: HashMap::new(),
            correct: 0,
            duplicates: 0,
            framing: 0,
            false_matches: 0,
            false_not_audio: 0,
            false_examples: Vec::new(),
            errors: Vec::new(),
            hop_errors: vec![Vec::new(); hops],
            cross_errors: Vec::new(),
            clock_errors: Vec::new(),
            cross_bounds: Vec::new(),
            outside_bound: 0,
            offsets: [Vec::new(), Vec::new()],
        }
    }

    /// A correct record, with the truth's stamps of its (from, to) sides where known.
    pub(super) fn correct(&mut self, r: &HopRecord, truth_t_ns: [Option<u64>; 2]) {
        self.correct += 1;
        for (side, t) in [&r.from, &r.to].into_iter().zip(truth_t_ns) {
            if let Some(t) = t {
                self.offsets[side.dir as usize].push(side.t_ns as i64 - t as i64);
            }
        }
    }

    /// A latency error of a record, or of a chain and moment, along `hops`; when its truth
    /// was preempted it counts only in the figures over all truth.
    pub(super) fn latency_error(&mut self, err: u64, preempted: bool, hops: &[usize]) {
        self.errors.push((err, preempted));
        if !preempted {
            for &h in hops {
                self.hop_errors[h].push(err);
            }
        }
    }

    /// A latency error of a record whose sides are on different nodes, and the part of it
    /// its clock alignment made where known, against the bound the record carries.
    pub(super) fn cross_node_error(
        &mut self,
        err: u64,
        clock_err: Option<u64>,
        bound_ns: Option<u64>,
    ) {
        self.cross_errors.push(err);
        self.clock_errors.extend(clock_err);
        self.cross_bounds.push(bound_ns.unwrap_or(0));
        let held = clock_err.unwrap_or(err);
        self.outside_bound += usize::from(bound_ns.is_none_or(|b| held > b));
    }

    /// A false record, and why; a few are kept as examples.
    pub(super) fn false_match(&mut self, r: &HopRecord, why: &str, not_audio: bool) {
        self.false_matches += 1;
        self.false_not_audio += usize::from(not_audio);
        if self.false_examples.len() < 5 {
            let who = |x: &Sighting| format!("{}:{:?}:fd{}", x.comm, x.dir, x.fd);
            self.false_examples.push(format!(
                "{:016x} {} → {} ({} ns): {why}",
                r.signature,
                who(&r.from),
                who(&r.to),
                r.latency_ns
            ));
        }
    }

    /// Latency errors of chains: each hop into a known point from an external one, walked up
    /// to a known point. A chain's error is |sum of its records' latencies − truth|, counted
    /// once per chain and moment, in each of its hops, when every hop has a record of it.
    pub(super) fn chain_errors(&mut self, calls: &[CallTruthIndex], hops: &Hops) {
        let hop_into: HashMap<(usize, usize), usize> = hops
            .list
            .iter()
            .enumerate()
            .map(|(h, hop)| ((hop.call_idx, hop.to), h))
            .collect();
        for (h2, last) in hops.list.iter().enumerate() {
            let c = &calls[last.call_idx];
            if c.external[last.to] || !c.external[last.from] {
                continue;
            }
            let mut chain = vec![h2];
            let mut k1 = last.from;
            while c.external[k1] {
                let Some(&up) = hop_into.get(&(last.call_idx, k1)) else {
                    break;
                };
                chain.push(up);
                k1 = hops.list[up].from;
            }
            if c.external[k1] {
                continue;
            }
            for m in &c.moments {
                let (Some(t1), Some(t2)) =
                    (c.carried[k1].get(&m.end), c.carried[last.to].get(&m.end))
                else {
                    continue;
                };
                let Some(sum) = chain
                    .iter()
                    .map(|&h| {
                        self.matched_through_external
                            .get(&(h, m.end))
                            .map(|r| r.latency_ns)
                    })
                    .sum::<Option<i64>>()
                else {
                    continue;
                };
                let err = (sum - (t2.t_ns as i64 - t1.t_ns as i64)).unsigned_abs();
                self.latency_error(err, t1.preempted || t2.preempted, &chain);
            }
        }
    }

    /// The score: counts, error figures, and each hop's coverage of its call's measurable
    /// seconds.
    pub(super) fn score(
        mut self,
        gt: &GroundTruth,
        calls: &[CallTruthIndex],
        hops: &Hops,
        records: usize,
        cfg: FingerprintConfig,
        tracer: &str,
    ) -> Score {
        let mut all_errors: Vec<u64> = self.errors.iter().map(|&(e, _)| e).collect();
        all_errors.sort_unstable();
        let mut errors: Vec<u64> = self
            .errors
            .iter()
            .filter(|&&(_, preempted)| !preempted)
            .map(|&(e, _)| e)
            .collect();
        errors.sort_unstable();
        for o in &mut self.offsets {
            o.sort_unstable();
        }
        let measurable_of: Vec<Vec<bool>> = calls
            .iter()
            .map(|c| measurable_seconds(&c.audio, &c.moments, cfg.quiet_threshold))
            .collect();
        let mut moments_matched: HashSet<(usize, u64)> = HashSet::new();
        let mut hop_scores = Vec::new();
        for (h, hop) in hops.list.iter().enumerate() {
            let c = &calls[hop.call_idx];
            let bps = c.audio.bytes_per_second();
            let loud = &measurable_of[hop.call_idx];
            let mut covered = vec![false; loud.len()];
            let mut n = 0;
            for m in &c.moments {
                if self.matched.contains(&(h, m.end)) {
                    n += 1;
                    moments_matched.insert((hop.call_idx, m.end));
                    let sec = ((m.end - 1) / bps) as usize;
                    if sec < covered.len() {
                        covered[sec] = true;
                    }
                }
            }
            let need = loud.iter().filter(|&&l| l).count();
            let errs = &mut self.hop_errors[h];
            errs.sort_unstable();
            let got = loud.iter().zip(&covered).filter(|(&l, &c)| l && c).count();
            let name = |p: usize| {
                format!("{}:{:?}", c.points[p].component, c.points[p].dir).to_lowercase()
            };
            hop_scores.push(HopScore {
                call: c.call,
                from: name(hop.from),
                to: name(hop.to),
                matched: n,
                coverage: if need == 0 {
                    1.0
                } else {
                    got as f64 / need as f64
                },
                error_p50_ns: percentile(errs, 0.5),
                error_p99_ns: percentile(errs, 0.99),
            });
        }
        let nonsilent: usize = calls
            .iter()
            .map(|c| {
                nonsilent_seconds(&c.audio, cfg.quiet_threshold)
                    .iter()
                    .filter(|&&l| l)
                    .count()
            })
            .sum();
        let measurable = measurable_of
            .iter()
            .map(|loud| loud.iter().filter(|&&l| l).count())
            .sum();
        let cov: Vec<f64> = hop_scores.iter().map(|h| h.coverage).collect();
        self.cross_errors.sort_unstable();
        self.clock_errors.sort_unstable();
        self.cross_bounds.sort_unstable();
        Score {
            scenario: gt.scenario.clone(),
            tracer: tracer.to_string(),
            hops_exist: hops.list.len(),
            hops_found: hop_scores.iter().filter(|h| h.matched > 0).count(),
            coverage_min: cov.iter().copied().fold(f64::INFINITY, f64::min).min(1.0),
            coverage_mean: if cov.is_empty() {
                0.0
            } else {
                cov.iter().sum::<f64>() / cov.len() as f64
            },
            nonsilent_seconds: nonsilent,
            measurable_seconds: measurable,
            moments_per_nonsilent_second: moments_matched.len() as f64 / nonsilent.max(1) as f64,
            records,
            correct: self.correct,
            false_matches: self.false_matches,
            false_not_audio: self.false_not_audio,
            duplicates: self.duplicates,
            framing: self.framing,
            false_examples: self.false_examples,
            error_p50_ns: percentile(&errors, 0.50),
            error_p99_ns: percentile(&errors, 0.99),
            error_max_ns: errors.last().copied().unwrap_or(0),
            error_p99_all_ns: percentile(&all_errors, 0.99),
            error_max_all_ns: all_errors.last().copied().unwrap_or(0),
            preempted_truth: all_errors.len() - errors.len(),
            read_stamp_offset_p50_ns: percentile(&self.offsets[Dir::Read as usize], 0.5),
            write_stamp_offset_p50_ns: percentile(&self.offsets[Dir::Write as usize], 0.5),
            hops: hop_scores,
            cross_node: CrossNodeErrors {
                records: self.cross_errors.len(),
                error_p50_ns: percentile(&self.cross_errors, 0.5),
                error_p99_ns: percentile(&self.cross_errors, 0.99),
                error_max_ns: self.cross_errors.last().copied().unwrap_or(0),
                clock_error_p99_ns: percentile(&self.clock_errors, 0.99),
                clock_error_max_ns: self.clock_errors.last().copied().unwrap_or(0),
                outside_bound: self.outside_bound,
                bound_p50_ns: percentile(&self.cross_bounds, 0.5),
                bound_max_ns: self.cross_bounds.last().copied().unwrap_or(0),
            },
        }
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} scored for tracer {}", self.scenario, self.tracer)?;
        writeln!(
            f,
            "  hops found          {} / {}",
            self.hops_found, self.hops_exist
        )?;
        writeln!(
            f,
            "  coverage            min {:.1} %, mean {:.1} % of {} measurable seconds ({} non-silent)",
            self.coverage_min * 100.0,
            self.coverage_mean * 100.0,
            self.measurable_seconds,
            self.nonsilent_seconds
        )?;
        writeln!(
            f,
            "  moments matched     {:.1} per non-silent second",
            self.moments_per_nonsilent_second
        )?;
        writeln!(
            f,
            "  records             {} ({} correct, {} false ({} not audio), {} duplicate, {} framing)",
            self.records,
            self.correct,
            self.false_matches,
            self.false_not_audio,
            self.duplicates,
            self.framing
        )?;
        for e in &self.false_examples {
            writeln!(f, "    false: {e}")?;
        }
        writeln!(
            f,
            "  latency error       p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (truth not preempted; \
             all: p99 {:.1} µs, max {:.1} µs, {} set aside)",
            self.error_p50_ns as f64 / 1e3,
            self.error_p99_ns as f64 / 1e3,
            self.error_max_ns as f64 / 1e3,
            self.error_p99_all_ns as f64 / 1e3,
            self.error_max_all_ns as f64 / 1e3,
            self.preempted_truth
        )?;
        let x = &self.cross_node;
        if x.records > 0 {
            writeln!(
                f,
                "  across nodes        {} records: error p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs \
                 (of it the clocks' p99 {:.1} µs, max {:.1} µs); \
                 bound p50 {:.1} µs, max {:.1} µs; {} outside their bound",
                x.records,
                x.error_p50_ns as f64 / 1e3,
                x.error_p99_ns as f64 / 1e3,
                x.error_max_ns as f64 / 1e3,
                x.clock_error_p99_ns as f64 / 1e3,
                x.clock_error_max_ns as f64 / 1e3,
                x.bound_p50_ns as f64 / 1e3,
                x.bound_max_ns as f64 / 1e3,
                x.outside_bound
            )?;
        }
        writeln!(
            f,
            "  stamps − truth      reads p50 {:.1} µs, writes p50 {:.1} µs",
            self.read_stamp_offset_p50_ns as f64 / 1e3,
            self.write_stamp_offset_p50_ns as f64 / 1e3
        )?;
        // One line per hop of the topology, over its calls: moments summed, the worst call's
        // coverage and errors.
        let mut per: BTreeMap<(&str, &str), HopScore> = BTreeMap::new();
        for h in &self.hops {
            per.entry((&h.from, &h.to))
                .and_modify(|w| {
                    w.matched += h.matched;
                    w.coverage = w.coverage.min(h.coverage);
                    w.error_p50_ns = w.error_p50_ns.max(h.error_p50_ns);
                    w.error_p99_ns = w.error_p99_ns.max(h.error_p99_ns);
                })
                .or_insert_with(|| h.clone());
        }
        for ((from, to), h) in per {
            writeln!(
                f,
                "    {from:>16} → {to:<16} {:>5} moments  coverage {:5.1} %  error p50 {:5.1} µs p99 {:5.1} µs (worst call)",
                h.matched,
                h.coverage * 100.0,
                h.error_p50_ns as f64 / 1e3,
                h.error_p99_ns as f64 / 1e3
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::{measurable_seconds, nonsilent_seconds};
    use crate::audio::{digital_silence, speech_like, tone};
    use agent::clock::Skew;
    use agent::schema::HopRecord;
    use shared::{FingerprintConfig, Scanner};

    /// Records of the source → relay transit, one undisturbed and one whose read's truth was
    /// preempted, their latencies off by 1 µs and 9 µs.
    fn off_records(f: &Fixture) -> (HopRecord, HopRecord) {
        let c = f.call();
        let preempted = |end: &&u64| c.carried[RELAY_READ][*end].preempted;
        let ends = f.moments_everywhere();
        let mut undisturbed = f.record(
            SRC_WRITE,
            RELAY_READ,
            *ends.iter().find(|e| !preempted(e)).unwrap(),
        );
        let mut disturbed = f.record(SRC_WRITE, RELAY_READ, *ends.iter().find(preempted).unwrap());
        undisturbed.latency_ns += 1000;
        disturbed.latency_ns += 9000;
        (undisturbed, disturbed)
    }

    #[test]
    fn an_error_on_preempted_truth_is_set_aside() {
        let f = Fixture::new(false);
        let (undisturbed, disturbed) = off_records(&f);
        let s = f.score(&[undisturbed, disturbed]);
        assert_eq!((s.correct, s.preempted_truth), (2, 1), "{s}");
        assert_eq!((s.error_max_ns, s.error_max_all_ns), (1000, 9000), "{s}");
        let hop = s.hops.iter().find(|h| h.from == "src:write").unwrap();
        assert_eq!((hop.matched, hop.error_p99_ns), (2, 1000));
    }

    #[test]
    fn a_cross_node_error_without_node_stamps_is_held_whole_against_its_bound() {
        let f = Fixture::new(false);
        let (mut undisturbed, mut disturbed) = off_records(&f);
        undisturbed.to.node = Some("b".into());
        disturbed.to.node = Some("b".into());
        for (bound, outside) in [(Some(500), 1), (Some(5000), 0), (None, 1)] {
            undisturbed.bound_ns = bound;
            let x = f
                .score(&[undisturbed.clone(), disturbed.clone()])
                .cross_node;
            assert_eq!(
                (x.records, x.error_max_ns, x.outside_bound),
                (1, 1000, outside)
            );
        }
    }

    #[test]
    fn across_nodes_only_the_clocks_part_of_the_error_is_held_against_the_bound() {
        let mut f = Fixture::new(false);
        let skew_b = Skew {
            offset_ns: 50_000_000,
            ppm: -35.0,
            origin_ns: 0,
        };
        f.gt.node_clocks.insert("b".into(), skew_b);
        // 1000 ns over the truth's latency; its own stamps, on the real clock, are 800 ns
        // over it: the stamps' delays, not the clocks'. The clock alignment added 200 ns.
        let (mut r, _) = off_records(&f);
        (r.from.node, r.to.node) = (Some("a".into()), Some("b".into()));
        let real_to = r.from.t_ns + (r.latency_ns - 200) as u64;
        (r.from.node_t_ns, r.to.node_t_ns) = (Some(r.from.t_ns), Some(skew_b.apply(real_to)));
        for (bound, outside) in [(500, 0), (150, 1)] {
            r.bound_ns = Some(bound);
            let x = f.score(std::slice::from_ref(&r)).cross_node;
            assert_eq!(
                (x.records, x.error_max_ns, x.outside_bound),
                (1, 1000, outside)
            );
            assert!(x.clock_error_max_ns.abs_diff(200) <= 1, "{x:?}");
        }
    }

    #[test]
    fn a_hop_covers_the_measurable_seconds_where_it_matched_a_moment() {
        let f = Fixture::new(false);
        let c = f.call();
        let cfg = FingerprintConfig::default();
        let measurable = measurable_seconds(&c.audio, &c.moments, cfg.quiet_threshold);
        let need = measurable.iter().filter(|&&m| m).count();
        assert!(need > 1, "{measurable:?}");
        let last = measurable.iter().rposition(|&m| m).unwrap() as u64;
        let bps = c.audio.bytes_per_second();
        let transits = |only_last: bool| -> Vec<HopRecord> {
            c.moments
                .iter()
                .filter(|m| !only_last || (m.end - 1) / bps == last)
                .map(|m| f.record(SRC_WRITE, RELAY_READ, m.end))
                .collect()
        };
        let all = f.score(&transits(false));
        let last = f.score(&transits(true));
        let transit = |s: &super::Score| {
            s.hops
                .iter()
                .find(|h| h.from == "src:write")
                .unwrap()
                .coverage
        };
        assert_eq!(transit(&all), 1.0);
        assert_eq!(transit(&last), 1.0 / need as f64);
        assert_eq!((all.hops_found, all.coverage_min), (1, 0.0), "{all}");
        assert_eq!(all.measurable_seconds, need);
    }

    #[test]
    fn silence_is_not_measurable_and_neither_is_a_tone() {
        let cfg = FingerprintConfig::default();
        let mut audio = digital_silence(8000, 1.0);
        audio.append(&tone(8000, 1.0, 400.0, 8000.0));
        audio.append(&speech_like(8000, 2.0, 3));
        let moments = Scanner::new(cfg).feed_collect(&audio.to_bytes());
        let nonsilent = nonsilent_seconds(&audio, cfg.quiet_threshold);
        assert_eq!(nonsilent[..2], [false, true]);
        assert!(nonsilent[2..].iter().any(|&l| l));
        let measurable = measurable_seconds(&audio, &moments, cfg.quiet_threshold);
        assert_eq!(measurable[..2], [false, false]);
        assert_eq!(measurable[2..], nonsilent[2..]);
    }
}
