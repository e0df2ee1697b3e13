//! Phase 1 against the harness's scenarios, scored against the ground truth the pipelines record.

use harness::scenario;
use harness::score::TEST_BAR;
use phase_1_poc::demo::trace_scenario_phase1 as trace_scenario;
use shared::FingerprintConfig;
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-1-poc");

#[test]
fn s1_every_hop_found_accurately_with_no_false_match() {
    let run = trace_scenario(
        &scenario::s1(),
        Path::new(EXE),
        &FingerprintConfig::default(),
    )
    .unwrap();
    eprintln!("{}\n{}", run.score, run.health);
    assert_eq!(
        run.score.hops_exist, 4,
        "source → relay 1 → relay 2, two calls"
    );
    assert!(
        run.score.misses(&TEST_BAR).is_empty(),
        "{:?}",
        run.score.misses(&TEST_BAR)
    );
    assert!(
        run.health.contains(" drops=0 ") && run.health.contains(" truncated=0 "),
        "{}",
        run.health
    );
}

/// Re-chunking to 160/1000/3001 bytes: phase 1 scans each write on its own, so a moment that
/// straddles two writes is lost, and a relay that lost it makes the matcher pair its neighbours
/// directly — a hop that does not exist. This records how phase 1 does; phase 2 fixes it.
#[test]
fn s2_loses_straddling_moments_and_pairs_around_them() {
    let run = trace_scenario(
        &scenario::s2(),
        Path::new(EXE),
        &FingerprintConfig::default(),
    )
    .unwrap();
    let s = &run.score;
    eprintln!("{s}\n{}", run.health);
    assert_eq!(s.hops_found, s.hops_exist);
    assert!(
        s.error_p99_ns <= TEST_BAR.error_p99_ns,
        "error p99 {} ns",
        s.error_p99_ns
    );
    // The 160-byte relay loses about (window - 1) / 160 of its moments.
    let lossy: Vec<_> = s
        .hops
        .iter()
        .filter(|h| h.from.ends_with("r1:write") || h.to.ends_with("r1:write"))
        .collect();
    let whole: Vec<_> = s
        .hops
        .iter()
        .filter(|h| h.from.ends_with("r2:write"))
        .collect();
    let sum = |v: &[&harness::score::HopScore]| v.iter().map(|h| h.matched).sum::<usize>() as f64;
    assert!(
        sum(&lossy) / 2.0 < 0.9 * sum(&whole),
        "the 160-byte hop should lose moments"
    );
    assert!(
        s.false_matches > 0,
        "skip-hops around lost moments are expected in phase 1"
    );
    assert!(
        s.false_matches < s.correct / 5,
        "{} false of {}",
        s.false_matches,
        s.records
    );
}
