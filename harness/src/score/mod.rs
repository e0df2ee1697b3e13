//! Scores a tracer's hop records against the ground truth the components recorded, in three
//! steps: each call's truth indexed (`index`), each record matched to it (`matching`), the
//! matches tallied into a [`Score`] (`tally`).
//!
//! The truth of a moment is computed, not trusted: the shared reference scans each call's audio,
//! and the components' logs say in which syscall, at which time, every point of the call's path
//! carried the moment's anchor byte with its whole window contiguous (no header inside).
//!
//! External components (a real broker, a TLS proxy) record nothing. A record with an external
//! end is matched by signature: its known side must have carried the moment with the right fd,
//! its external side is checked by pid and by its fd staying on one link. Its latency is scored
//! per chain, from the last known point through external points to the next known point: the
//! error is |sum of the chain's records' latencies − truth|, counted once per chain and moment
//! and in each of its hops, and only when every hop of the chain has a record of the moment.
//!
//! A component thread preempted between its clock read and its syscall (or the other way round
//! for reads) records a truth off by a scheduling slice; it flags the syscall `preempted`. A
//! correct record whose truth on either known side (a chain: either known end) is flagged stays
//! correct and counts for coverage, but its latency error is set aside: the headline and per-hop
//! error figures are over undisturbed truth, with the figures over all reported beside them.

mod hops;
mod index;
mod matching;
mod tally;

#[cfg(test)]
mod fixtures;

pub use index::{CallTruthIndex, Carried};
pub use tally::{
    measurable_seconds, nonsilent_seconds, CrossNodeErrors, HopScore, Score, NONSILENT_SHARE,
};

use crate::truth::{GroundTruth, Point, TlsStack};
use agent::schema::Dir;
use agent::schema::HopRecord;
use anyhow::Result;
use hops::Hops;
use matching::Matcher;
use serde::Serialize;
use shared::FingerprintConfig;
use tally::Tally;

/// Which points a tracer observes: the syscall directions it sees, and the TLS stacks other
/// than OpenSSL whose plaintext it sees from inside (OpenSSL's plaintext counts as its syscalls'
/// directions: whoever sees those sees it, or finds nothing there). Its hops join consecutive
/// observable points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Observes {
    pub reads: bool,
    pub writes: bool,
    pub tls_stacks: &'static [TlsStack],
}

impl Observes {
    /// Every point: what the ground truth, and the oracle, see.
    pub const ALL: Self = Self {
        reads: true,
        writes: true,
        tls_stacks: &[TlsStack::Go, TlsStack::Java, TlsStack::Rustls],
    };
    /// Every read and write, no other TLS stack's plaintext.
    pub const READS_AND_WRITES: Self = Self {
        reads: true,
        writes: true,
        tls_stacks: &[],
    };
    pub const WRITES: Self = Self {
        reads: false,
        writes: true,
        tls_stacks: &[],
    };

    fn sees(&self, point: &Point) -> bool {
        let dir = match point.dir {
            Dir::Read => self.reads,
            Dir::Write => self.writes,
        };
        dir && point
            .tls_stack
            .is_none_or(|stack| self.tls_stacks.contains(&stack))
    }
}

/// Figures a scenario must reach. The error bound is checked on the p99 over records whose truth
/// was not preempted (`Score::error_p99_ns`).
pub struct Bar {
    pub coverage: f64,
    pub error_p99_ns: u64,
}

/// The project's target on one node: every hop found with coverage ≥ 95 % and latency error
/// p99 ≤ 20 µs (docs/phases/README.md, BENCHMARKS.md).
pub const SAME_NODE_BAR: Bar = Bar {
    coverage: 0.95,
    error_p99_ns: 20_000,
};

/// What tests assert: correctness in full, and an error bound that catches a wrong stamp or a
/// wrong clock but not scheduling noise. The p99 ≤ 20 µs of [`SAME_NODE_BAR`] is a benchmark
/// figure (BENCHMARKS.md): on this shared 2-core VM the p99 over all truth of one run moves between 11 and 100 µs, set
/// by truth whose component was preempted around its stamp; over undisturbed truth it was 10 to
/// 13 µs (phase 2, S3 and S7, two runs each).
pub const TEST_BAR: Bar = Bar {
    coverage: 0.95,
    error_p99_ns: 200_000,
};

impl Score {
    /// The ways this score misses the bar; empty when it passes.
    pub fn misses(&self, bar: &Bar) -> Vec<String> {
        let mut out = Vec::new();
        if self.hops_exist == 0 {
            // Nothing it observes is a hop (a tracer that sees writes only, on a path with one
            // observable write): nothing measured is no pass.
            out.push("no hop it can observe".to_string());
        }
        if self.hops_found < self.hops_exist {
            out.push(format!(
                "{} of {} hops found",
                self.hops_found, self.hops_exist
            ));
        }
        if self.coverage_min < bar.coverage {
            out.push(format!(
                "coverage {:.1} % < {:.0} %",
                self.coverage_min * 100.0,
                bar.coverage * 100.0
            ));
        }
        if self.error_p99_ns > bar.error_p99_ns {
            out.push(format!(
                "latency error p99 {} ns > {} ns",
                self.error_p99_ns, bar.error_p99_ns
            ));
        }
        if self.false_matches > 0 {
            out.push(format!("{} false matches", self.false_matches));
        }
        out
    }
}

/// Scores `records` against `gt`, seen as `obs` sees it.
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

/// [`score`] with the truth already indexed (an index serves several tracers' records).
pub fn score_indexed(
    gt: &GroundTruth,
    calls: &[CallTruthIndex],
    records: &[HopRecord],
    obs: Observes,
    cfg: FingerprintConfig,
    tracer: &str,
) -> Score {
    let hops = Hops::build(gt, calls, obs);
    let mut tally = Tally::new(hops.list.len());
    Matcher::new(gt, calls, &hops, cfg).match_all(records, &mut tally);
    tally.chain_errors(calls, &hops);
    tally.score(gt, calls, &hops, records.len(), cfg, tracer)
}
