//! Phase 2 against the harness's scenarios, scored against the ground truth the pipelines
//! record: every hop found, coverage ≥ 95 % of measurable seconds at every hop, no false match.

use harness::scenario;
use harness::score::TEST_BAR;
use phase_1_poc::TracedRun;
use phase_2_straddle::trace_scenario_phase2;
use shared::FingerprintConfig;
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-2-straddle");

fn run(sc: scenario::Scenario) -> TracedRun {
    let run = trace_scenario_phase2(&sc, Path::new(EXE), &FingerprintConfig::default()).unwrap();
    eprintln!("{}\n{}", run.score, run.health);
    let misses = run.score.misses(&TEST_BAR);
    assert!(misses.is_empty(), "{}: {misses:?}", sc.id);
    assert!(
        run.health.contains(" drops=0 ") && run.health.contains(" unseen_calls=0"),
        "{}",
        run.health
    );
    run
}

#[test]
fn s1_pipe_chain() {
    let r = run(scenario::s1());
    assert_eq!(
        r.score.hops_exist, 10,
        "transit and residence at every point of two chains"
    );
}

#[test]
fn s2_rechunked_moments_straddling_calls_are_found() {
    let r = run(scenario::s2());
    // Every relay, the 160-byte one included, sees every moment the source sent.
    let per_hop: Vec<usize> = r
        .score
        .hops
        .iter()
        .filter(|h| h.call == 0)
        .map(|h| h.matched)
        .collect();
    let (lo, hi) = (per_hop.iter().min().unwrap(), per_hop.iter().max().unwrap());
    assert!(*lo as f64 >= 0.98 * *hi as f64, "{per_hop:?}");
}

#[test]
fn s3_envelopes_batched_and_multiplexed() {
    let r = run(scenario::s3());
    assert_eq!(r.score.hops_exist, 15);
}

#[test]
fn s4_unix_tcp4_tcp6_with_vectors_and_messages() {
    run(scenario::s4());
}

#[test]
fn s7_quiet_tones_shared_hold_music_and_fan_out() {
    let r = run(scenario::s7());
    // Both consumers of the broker's fan-out are hops of every call.
    for consumer in ["consumer-a:read", "consumer-b:read"] {
        assert_eq!(
            r.score.hops.iter().filter(|h| h.to == consumer).count(),
            6,
            "{consumer}"
        );
    }
    assert!(r.health.contains("refused_repeats="), "{}", r.health);
}

#[test]
fn s8_many_calls_multiplexed_and_on_many_connections() {
    let r = run(scenario::s8());
    assert_eq!(r.score.hops_exist, 32 * 3);
}
