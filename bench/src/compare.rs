//! Every phase on the scenario catalogue, side by side: which scenarios each phase passes, with
//! its figures, and what its kernel side costs a traced process. `cargo run --release -p bench
//! -- compare` writes docs/phases/comparison.md; the test in tests/compare.rs runs a subset and
//! snapshots the pass/fail matrix, so a regression in any phase fails CI.

use crate::pairs::{Content, Pipe};
use agent::clock::Skew;
use agent::loader::ScanMode;
use agent::pipeline::Kernel;
use anyhow::Result;
use harness::scenario::Scenario;
use harness::score::{Score, TEST_BAR};
use shared::FingerprintConfig;
use std::fmt::Write;
use std::path::Path;

pub const PHASES: [&str; 4] = [
    "phase-1-poc",
    "phase-2-straddle",
    "phase-3-multi-node",
    "phase-4-k8s",
];

/// One phase on one scenario.
pub enum Outcome {
    /// The phase cannot run it, and why.
    Unsupported(&'static str),
    Scored {
        score: Box<Score>,
        /// Where it falls short: the score's misses against the tests' bar, and what else the
        /// phase claims (phase 4: every sighting named by its pod).
        misses: Vec<String>,
    },
}

impl Outcome {
    fn scored(score: Score) -> Self {
        Outcome::Scored {
            misses: score.misses(&TEST_BAR),
            score: Box::new(score),
        }
    }

    pub fn passes(&self) -> Option<bool> {
        match self {
            Outcome::Unsupported(_) => None,
            Outcome::Scored { misses, .. } => Some(misses.is_empty()),
        }
    }
}

/// S9's node clocks (phases 3 and 4), as the phase-3 demo skews them.
fn skew(node: &str) -> Skew {
    let (offset_ns, ppm) = match node {
        "b" => (37_500_000, 25.0),
        "c" => (-45_000_000, -30.0),
        _ => (0, 0.0),
    };
    Skew {
        offset_ns,
        ppm,
        // From the run's start (`skews_from_now`).
        ..Skew::default()
    }
}

/// Runs `phase` on `sc`, its components (and phase 3's and 4's agents) launched from `exe`.
pub fn run(phase: &str, sc: &Scenario, exe: &Path) -> Result<Outcome> {
    let cfg = FingerprintConfig::default();
    let nodes = !sc.topology.nodes().is_empty();
    Ok(match phase {
        "phase-1-poc" | "phase-2-straddle" if nodes => {
            Outcome::Unsupported("one node: no clock alignment across nodes")
        }
        "phase-1-poc" => {
            Outcome::scored(phase_1_poc::demo::trace_scenario_phase1(sc, exe, &cfg)?.score)
        }
        "phase-2-straddle" => {
            Outcome::scored(phase_2_straddle::demo::trace_scenario_phase2(sc, exe, &cfg)?.score)
        }
        "phase-3-multi-node" => {
            Outcome::scored(phase_3_multi_node::run::trace_scenario_phase3(sc, exe, skew)?.score)
        }
        "phase-4-k8s" => {
            let run = phase_4_k8s::run::trace_scenario_phase4(sc, exe, skew)?;
            let mut misses = run.cluster.score.misses(&TEST_BAR);
            if run.misattributed > 0 {
                misses.push(format!(
                    "{} sightings not named by their pod (e.g. {})",
                    run.misattributed,
                    run.misattributed_examples.join("; ")
                ));
            }
            Outcome::Scored {
                score: Box::new(run.cluster.score),
                misses,
            }
        }
        other => anyhow::bail!("no phase {other}"),
    })
}

/// Scanned ÷ not-a-target cost of a 2 KiB write+read pair of speech through a pipe (the phase
/// loaded throughout, this process a target or not), for a kernel side
/// (medians of interleaved batches).
pub fn overhead<K: Kernel>() -> Result<f64> {
    let (pipe, bytes) = (Pipe::new()?, Content::Speech.bytes()?);
    let mut buf = vec![0; 2048];
    let me = [std::process::id()];
    let mut k = K::start(&FingerprintConfig::default(), None, ScanMode::Scan)?;
    let (mut not_target, mut scan) = (Vec::new(), Vec::new());
    for _ in 0..8 {
        k.remove_targets(&me)?;
        not_target.push(pipe.batch(&bytes, 2048, &mut buf));
        k.add_targets(&me)?;
        scan.push(pipe.batch(&bytes, 2048, &mut buf));
        k.drain(&mut |_| {});
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(median(&mut scan) / median(&mut not_target))
}

/// Which scenarios each phase passes: the deterministic part, snapshotted by the CI test.
pub fn matrix(results: &[(String, Vec<Outcome>)]) -> String {
    let mut out = format!("{:<10}", "scenario");
    for p in PHASES {
        let _ = write!(out, " {p:<19}");
    }
    out.push('\n');
    for (id, outcomes) in results {
        let _ = write!(out, "{id:<10}");
        for o in outcomes {
            let cell = match o.passes() {
                None => "-",
                Some(true) => "pass",
                Some(false) => "fail",
            };
            let _ = write!(out, " {cell:<19}");
        }
        out.push('\n');
    }
    out
}

/// The page: the matrix, then every figure.
pub fn page(results: &[(String, Vec<Outcome>)], overheads: &[(&str, f64)]) -> String {
    let mut out = String::from(
        "# Every phase on every scenario\n\nGenerated by `cargo run --release -p bench -- compare` \
         (root); CI runs a subset and snapshots which scenarios each phase passes \
         (`bench/tests/compare.rs`). A phase passes a scenario when it finds every hop with \
         coverage ≥ 95 %, no false match and latency error p99 ≤ 200 µs (the tests' bar; \
         BENCHMARKS.md holds the 20 µs figures). Phase 4 runs on a cluster faked on this \
         machine: each component in a crun container of a pod of its own, a fake API server, an \
         agent per node selecting those pods (`phase-4-k8s/src/run.rs`); it passes only if every \
         sighting also names its component's pod. One run each on a shared 2-core VM.\n\n",
    );
    out += "| scenario | phase | result | hops found | coverage min | error p50 / p99 / max (µs) | false | across nodes: p99 error / max bound (µs) |\n";
    out += "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for (id, outcomes) in results {
        for (phase, o) in PHASES.iter().zip(outcomes) {
            match o {
                Outcome::Unsupported(why) => {
                    let _ = writeln!(out, "| {id} | {phase} | not supported: {why} | | | | | |");
                }
                Outcome::Scored { score: s, misses } => {
                    let us = |ns: u64| ns as f64 / 1e3;
                    let cross = if s.cross_node.records > 0 {
                        format!(
                            "{:.1} / {:.1}",
                            us(s.cross_node.error_p99_ns),
                            us(s.cross_node.bound_max_ns)
                        )
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "| {id} | {phase} | {} | {} / {} | {:.1} % | {:.1} / {:.1} / {:.1} | {} | {cross} |",
                        if misses.is_empty() {
                            "pass".to_string()
                        } else {
                            format!("fail: {}", misses.join("; "))
                        },
                        s.hops_found,
                        s.hops_exist,
                        s.coverage_min * 100.0,
                        us(s.error_p50_ns),
                        us(s.error_p99_ns),
                        us(s.error_max_ns),
                        s.false_matches,
                    );
                }
            }
        }
    }
    out += "\nOverhead on a traced process: a 2 KiB write+read pair of speech through a pipe, \
            scanned ÷ not a target (the phase loaded either way; medians of 8 interleaved batches; BENCHMARKS.md has the full \
            sweep). Phases 3 and 4 load phase 2's kernel side.\n\n| phase | scanned ÷ not a target |\n| --- | --- |\n";
    for (phase, ratio) in overheads {
        let _ = writeln!(out, "| {phase} | {ratio:.2}× |");
    }
    out
}

/// Runs `scenarios` against every phase.
pub fn run_all(scenarios: &[Scenario], exe: &Path) -> Result<Vec<(String, Vec<Outcome>)>> {
    scenarios
        .iter()
        .map(|sc| {
            let outcomes = PHASES
                .iter()
                .map(|p| {
                    eprintln!("{p} on {}", sc.id);
                    run(p, sc, exe)
                })
                .collect::<Result<_>>()?;
            Ok((sc.id.to_string(), outcomes))
        })
        .collect()
}

/// `ids`, or the whole catalogue, S9 and S11 with the overhead measurement, every phase; prints
/// the matrix and writes the page to `out`.
pub fn write_page(out: &Path, ids: &[String]) -> Result<()> {
    let exe = std::env::current_exe()?;
    let scenarios: Vec<Scenario> = if ids.is_empty() {
        let mut all = harness::scenario::catalogue();
        all.push(harness::scenario::s9());
        all.push(harness::scenario::s11());
        all
    } else {
        ids.iter()
            .map(|id| {
                harness::scenario::by_id(id)
                    .ok_or_else(|| anyhow::anyhow!("unknown scenario {id:?}"))
            })
            .collect::<Result<_>>()?
    };
    let results = run_all(&scenarios, &exe)?;
    let overheads = if ids.is_empty() {
        vec![
            ("phase-1-poc", overhead::<phase_1_poc::tracer::Tracer>()?),
            (
                "phase-2-straddle",
                overhead::<phase_2_straddle::tracer::Tracer>()?,
            ),
        ]
    } else {
        Vec::new()
    };
    print!("{}", matrix(&results));
    std::fs::write(out, page(&results, &overheads))?;
    println!("wrote {}", out.display());
    Ok(())
}
