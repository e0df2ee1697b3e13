//! Scores a tracer's hop records against the ground truth the components recorded.
//!
//! The truth of a moment is computed, not trusted: the shared reference scans each call's audio,
//! and the components' logs say in which syscall, at which time, every point of the call's path
//! carried the moment's anchor byte with its whole window contiguous (no header inside).

use crate::audio::{frame_peaks, Audio};
use crate::schema::HopRecord;
use crate::truth::{Dir, GroundTruth, Point};
use anyhow::Result;
use serde::Serialize;
use shared::{FingerprintConfig, Scanner};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// Which syscall directions a tracer observes; its hops join consecutive observable points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Observes {
    pub reads: bool,
    pub writes: bool,
}

impl Observes {
    pub const ALL: Self = Self { reads: true, writes: true };
    pub const WRITES: Self = Self { reads: false, writes: true };

    fn sees(&self, dir: Dir) -> bool {
        match dir {
            Dir::Read => self.reads,
            Dir::Write => self.writes,
        }
    }
}

/// A second of a call counts as non-silent when at least this share of its 20 ms frames is loud.
pub const NONSILENT_SHARE: f64 = 0.25;

/// Where and when one point of a path carried one moment.
#[derive(Clone, Copy, Debug)]
pub struct Carried {
    pub t_ns: u64,
    pub fd: i32,
    pub pid: u32,
}

/// The truth of one call: its moments, the points of its path, and which point carried which
/// moment when.
pub struct CallTruthIndex {
    pub call: u32,
    pub audio: Audio,
    /// (signature, audio end offset) of every moment of the call's audio.
    pub moments: Vec<shared::Moment>,
    pub path: Vec<Point>,
    /// carried[point index][moment end] = when that point's syscall carried it.
    pub carried: Vec<HashMap<u64, Carried>>,
}

impl CallTruthIndex {
    pub fn build(gt: &GroundTruth, cfg: FingerprintConfig) -> Result<Vec<Self>> {
        gt.calls
            .iter()
            .map(|ct| {
                let audio = Audio::read_wav(&ct.wav)?;
                let moments = Scanner::new(cfg).feed_collect(&audio.to_bytes());
                let carried = ct.path.iter().map(|p| carried_at(gt, p, ct.call, &moments, cfg.window as u64)).collect();
                Ok(Self { call: ct.call, audio, moments, path: ct.path.clone(), carried })
            })
            .collect()
    }

    /// Indices into `path` of the points a tracer observes.
    pub fn observable(&self, obs: Observes) -> Vec<usize> {
        (0..self.path.len()).filter(|&i| obs.sees(self.path[i].dir)).collect()
    }
}

/// For each moment of `call`, the syscall at `point` that carried its anchor byte, when the whole
/// window sits in one contiguous run of the call's audio on that link.
fn carried_at(gt: &GroundTruth, point: &Point, call: u32, moments: &[shared::Moment], window: u64) -> HashMap<u64, Carried> {
    let mut out = HashMap::new();
    let Some(comp) = gt.component(&point.component) else { return out };
    let ios: Vec<_> = comp.ios.iter().filter(|io| io.dir == point.dir && io.link == point.link).collect();
    // Contiguous runs: (flow_off, audio_off, len), merged across syscalls.
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for seg in ios.iter().flat_map(|io| io.segments.iter()).filter(|s| s.call == call) {
        match runs.last_mut() {
            Some((f, a, l)) if *f + *l == seg.flow_off && *a + *l == seg.audio_off => *l += seg.len,
            _ => runs.push((seg.flow_off, seg.audio_off, seg.len)),
        }
    }
    for m in moments {
        let (start, anchor) = (m.end - window, m.end - 1);
        let Some(&(f, a, _)) = runs.iter().find(|(_, a, l)| *a <= start && m.end <= a + l) else { continue };
        let anchor_flow = f + (anchor - a);
        if let Some(io) = ios.iter().find(|io| io.flow_off <= anchor_flow && anchor_flow < io.flow_off + io.len) {
            out.insert(m.end, Carried { t_ns: io.t_ns, fd: io.fd, pid: comp.pid });
        }
    }
    out
}

#[derive(Clone, Debug, Serialize)]
pub struct HopScore {
    pub call: u32,
    pub from: String,
    pub to: String,
    pub matched: usize,
    pub coverage: f64,
    pub error_p50_ns: u64,
    pub error_p99_ns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Score {
    pub scenario: String,
    pub tracer: String,
    pub hops_exist: usize,
    pub hops_found: usize,
    /// Lowest, over calls and hops, share of non-silent seconds with a matched moment.
    pub coverage_min: f64,
    pub coverage_mean: f64,
    pub nonsilent_seconds: usize,
    /// Distinct moments matched on at least one hop, per non-silent second.
    pub moments_per_nonsilent_second: f64,
    pub records: usize,
    pub correct: usize,
    pub false_matches: usize,
    /// The same moment reported twice on the same hop.
    pub duplicates: usize,
    pub error_p50_ns: u64,
    pub error_p99_ns: u64,
    pub error_max_ns: u64,
    /// Median of (tracer's stamp − truth) of correct records' reads and writes: where a
    /// latency error comes from.
    pub read_stamp_offset_p50_ns: i64,
    pub write_stamp_offset_p50_ns: i64,
    pub hops: Vec<HopScore>,
}

/// Figures a scenario must reach (BRIEF §7, same node).
pub struct Bar {
    pub coverage: f64,
    pub error_p99_ns: u64,
}

pub const SAME_NODE_BAR: Bar = Bar { coverage: 0.95, error_p99_ns: 20_000 };

impl Score {
    /// The ways this score misses the bar; empty when it passes.
    pub fn misses(&self, bar: &Bar) -> Vec<String> {
        let mut out = Vec::new();
        if self.hops_found < self.hops_exist {
            out.push(format!("{} of {} hops found", self.hops_found, self.hops_exist));
        }
        if self.coverage_min < bar.coverage {
            out.push(format!("coverage {:.1} % < {:.0} %", self.coverage_min * 100.0, bar.coverage * 100.0));
        }
        if self.error_p99_ns > bar.error_p99_ns {
            out.push(format!("latency error p99 {} ns > {} ns", self.error_p99_ns, bar.error_p99_ns));
        }
        if self.false_matches > 0 {
            out.push(format!("{} false matches", self.false_matches));
        }
        out
    }
}

/// Seconds of a call that are non-silent.
pub fn nonsilent_seconds(audio: &Audio, quiet_threshold: u16) -> Vec<bool> {
    let frame = audio.rate as usize / 50;
    frame_peaks(audio, frame)
        .chunks(50)
        .map(|sec| sec.iter().filter(|&&p| p >= quiet_threshold).count() as f64 >= NONSILENT_SHARE * 50.0)
        .collect()
}

/// The nearest-rank `q`-quantile of an ascending slice.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn score(
    gt: &GroundTruth,
    records: &[HopRecord],
    obs: Observes,
    cfg: FingerprintConfig,
    tracer: &str,
) -> Result<Score> {
    let calls = CallTruthIndex::build(gt, cfg)?;
    Ok(score_indexed(gt, &calls, records, obs, cfg, tracer))
}

pub fn score_indexed(
    gt: &GroundTruth,
    calls: &[CallTruthIndex],
    records: &[HopRecord],
    obs: Observes,
    cfg: FingerprintConfig,
    tracer: &str,
) -> Score {
    // The hops that exist: consecutive observable points of each call's path.
    struct Hop {
        call_idx: usize,
        from: usize,
        to: usize,
    }
    let mut hops: Vec<Hop> = Vec::new();
    let mut hop_of: HashMap<(u32, Dir, u32, Dir), Vec<usize>> = HashMap::new();
    for (ci, c) in calls.iter().enumerate() {
        let pts = c.observable(obs);
        for w in pts.windows(2) {
            let pid = |i: usize| gt.component(&c.path[i].component).map_or(0, |l| l.pid);
            let key = (pid(w[0]), c.path[w[0]].dir, pid(w[1]), c.path[w[1]].dir);
            hop_of.entry(key).or_default().push(hops.len());
            hops.push(Hop { call_idx: ci, from: w[0], to: w[1] });
        }
    }
    let mut by_sig: HashMap<u64, Vec<(usize, u64)>> = HashMap::new();
    for (ci, c) in calls.iter().enumerate() {
        for m in &c.moments {
            by_sig.entry(m.signature).or_default().push((ci, m.end));
        }
    }

    let mut matched: HashSet<(usize, u64)> = HashSet::new();
    let mut errors = Vec::new();
    let mut hop_errors: Vec<Vec<u64>> = vec![Vec::new(); hops.len()];
    let mut offsets: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let (mut false_matches, mut duplicates) = (0, 0);
    for r in records {
        let key = (r.from.pid, r.from.dir, r.to.pid, r.to.dir);
        let best = hop_of
            .get(&key)
            .into_iter()
            .flatten()
            .flat_map(|&h| {
                let hop = &hops[h];
                let c = &calls[hop.call_idx];
                by_sig.get(&r.signature).into_iter().flatten().filter_map(move |&(ci, end)| {
                    if ci != hop.call_idx {
                        return None;
                    }
                    let (a, b) = (c.carried[hop.from].get(&end)?, c.carried[hop.to].get(&end)?);
                    if a.fd != r.from.fd || b.fd != r.to.fd {
                        return None;
                    }
                    let distance = a.t_ns.abs_diff(r.from.t_ns) + b.t_ns.abs_diff(r.to.t_ns);
                    Some((distance, h, end, b.t_ns as i64 - a.t_ns as i64, (a.t_ns, b.t_ns)))
                })
            })
            .min_by_key(|x| x.0);
        match best {
            None => false_matches += 1,
            Some((_, h, end, truth, (ta, tb))) => {
                if matched.insert((h, end)) {
                    for (side, t) in [(&r.from, ta), (&r.to, tb)] {
                        offsets[side.dir as usize].push(side.t_ns as i64 - t as i64);
                    }
                    errors.push((r.latency_ns - truth).unsigned_abs());
                    hop_errors[h].push((r.latency_ns - truth).unsigned_abs());
                } else {
                    duplicates += 1;
                }
            }
        }
    }
    errors.sort_unstable();
    for o in &mut offsets {
        o.sort_unstable();
    }

    let mut hop_scores = Vec::new();
    let mut seconds_total = 0;
    let mut moments_matched: HashSet<(usize, u64)> = HashSet::new();
    for (h, hop) in hops.iter().enumerate() {
        let c = &calls[hop.call_idx];
        let bps = c.audio.bytes_per_second();
        let loud = nonsilent_seconds(&c.audio, cfg.quiet_threshold);
        let mut covered = vec![false; loud.len()];
        let mut n = 0;
        for m in &c.moments {
            if matched.contains(&(h, m.end)) {
                n += 1;
                moments_matched.insert((hop.call_idx, m.end));
                let sec = ((m.end - 1) / bps) as usize;
                if sec < covered.len() {
                    covered[sec] = true;
                }
            }
        }
        let need = loud.iter().filter(|&&l| l).count();
        let errs = &mut hop_errors[h];
        errs.sort_unstable();
        let got = loud.iter().zip(&covered).filter(|(&l, &c)| l && c).count();
        hop_scores.push(HopScore {
            call: c.call,
            from: format!("{}:{:?}", c.path[hop.from].component, c.path[hop.from].dir).to_lowercase(),
            to: format!("{}:{:?}", c.path[hop.to].component, c.path[hop.to].dir).to_lowercase(),
            matched: n,
            coverage: if need == 0 { 1.0 } else { got as f64 / need as f64 },
            error_p50_ns: percentile(errs, 0.5),
            error_p99_ns: percentile(errs, 0.99),
        });
    }
    for c in calls {
        seconds_total += nonsilent_seconds(&c.audio, cfg.quiet_threshold).iter().filter(|&&l| l).count();
    }
    let cov: Vec<f64> = hop_scores.iter().map(|h| h.coverage).collect();
    Score {
        scenario: gt.scenario.clone(),
        tracer: tracer.to_string(),
        hops_exist: hops.len(),
        hops_found: hop_scores.iter().filter(|h| h.matched > 0).count(),
        coverage_min: cov.iter().copied().fold(f64::INFINITY, f64::min).min(1.0),
        coverage_mean: if cov.is_empty() { 0.0 } else { cov.iter().sum::<f64>() / cov.len() as f64 },
        nonsilent_seconds: seconds_total,
        moments_per_nonsilent_second: moments_matched.len() as f64 / seconds_total.max(1) as f64,
        records: records.len(),
        correct: errors.len(),
        false_matches,
        duplicates,
        error_p50_ns: percentile(&errors, 0.50),
        error_p99_ns: percentile(&errors, 0.99),
        error_max_ns: errors.last().copied().unwrap_or(0),
        read_stamp_offset_p50_ns: percentile(&offsets[Dir::Read as usize], 0.5),
        write_stamp_offset_p50_ns: percentile(&offsets[Dir::Write as usize], 0.5),
        hops: hop_scores,
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} scored for tracer {}", self.scenario, self.tracer)?;
        writeln!(f, "  hops found          {} / {}", self.hops_found, self.hops_exist)?;
        writeln!(
            f,
            "  coverage            min {:.1} %, mean {:.1} % of {} non-silent seconds",
            self.coverage_min * 100.0,
            self.coverage_mean * 100.0,
            self.nonsilent_seconds
        )?;
        writeln!(f, "  moments matched     {:.1} per non-silent second", self.moments_per_nonsilent_second)?;
        writeln!(
            f,
            "  records             {} ({} correct, {} false, {} duplicate)",
            self.records, self.correct, self.false_matches, self.duplicates
        )?;
        writeln!(
            f,
            "  latency error       p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            self.error_p50_ns as f64 / 1e3,
            self.error_p99_ns as f64 / 1e3,
            self.error_max_ns as f64 / 1e3
        )?;
        writeln!(
            f,
            "  stamps − truth      reads p50 {:.1} µs, writes p50 {:.1} µs",
            self.read_stamp_offset_p50_ns as f64 / 1e3,
            self.write_stamp_offset_p50_ns as f64 / 1e3
        )?;
        let per: BTreeMap<(&str, &str), &HopScore> = self.hops.iter().map(|h| ((&*h.from, &*h.to), h)).collect();
        for ((from, to), h) in per {
            writeln!(
                f,
                "    {from:>16} → {to:<16} {:>5} moments  coverage {:5.1} %  error p50 {:5.1} µs p99 {:5.1} µs",
                h.matched,
                h.coverage * 100.0,
                h.error_p50_ns as f64 / 1e3,
                h.error_p99_ns as f64 / 1e3
            )?;
        }
        Ok(())
    }
}
