//! S9: three "nodes" (network namespaces joined by veth), an agent process per node
//! whose clock is skewed on purpose, the collector matching across nodes. Every hop is found,
//! the collector recovers each node's offset, and every cross-node latency lies within the
//! bound its record carries. Sharded over three collector replicas, the same holds of what
//! they report together.

use agent::clock::Skew;
use agent::schema::{HopRecord, Sighting};
use harness::scenario::s9;
use harness::score::TEST_BAR;
use phase_3_multi_node::run::{trace_scenario_phase3, trace_scenario_sharded, ClusterRun};
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");

/// Unsynchronised nodes: offsets up to ±50 ms, drifts of tens of ppm.
fn skew(node: &str) -> Skew {
    let (offset_ns, ppm) = match node {
        "a" => (-20_000_000, 40.0),
        "b" => (50_000_000, -35.0),
        _ => (-48_000_000, 20.0),
    };
    Skew {
        offset_ns,
        ppm,
        // From the run's start (`skews_from_now`).
        ..Skew::default()
    }
}

#[test]
fn s9_cross_node_hops_are_measured_within_their_bound() {
    let r = trace_scenario_phase3(&s9(), Path::new(EXE), skew).expect("S9 (run as root)");
    check(&r, 1);
}

/// Each sighting goes to the replica owning its signature: every moment's sightings meet in
/// one, so the three together find what one collector finds, and each maps every node's clock
/// from that node's own exchanges with it.
#[test]
fn s9_sharded_over_three_collector_replicas_measures_as_one() {
    let r = trace_scenario_sharded(&s9(), Path::new(EXE), skew, 3).expect("S9 (run as root)");
    check(&r, 3);
}

/// Every hop found, coverage and error within the test bar, no false match; every node's
/// clock recovered by each of the `replicas`.
fn check(r: &ClusterRun, replicas: usize) {
    eprintln!(
        "{}\n{}\ncollector: {}",
        r.measured.table(),
        r.score,
        r.collector
    );
    for (node, line) in &r.agents {
        eprintln!("agent {node}: {line}");
    }
    let s = &r.score;
    assert!(
        s.misses(&TEST_BAR).is_empty(),
        "{:?}\n{s}",
        s.misses(&TEST_BAR)
    );
    let x = &s.cross_node;
    // a → b and b → c (twice): three of S9's six hops per call cross nodes, about 1000
    // records a run (coverage is the bar's); enough of them that their p99 means something.
    assert!(x.records > 500, "{s}");
    assert_eq!(x.outside_bound, 0, "{s}");
    // The cross-node promise: error p99 ≤ 200 µs.
    assert!(x.error_p99_ns <= 200_000, "{s}");
    let node_of = |hop_end: &str| {
        let name = hop_end.split(':').next().unwrap();
        r.gt.component(name).and_then(|c| c.node.clone())
    };
    let crossing = s
        .hops
        .iter()
        .filter(|h| node_of(&h.from) != node_of(&h.to))
        .count();
    // Per call: a → b, b → c twice.
    assert_eq!(crossing, 3 * 4, "{s}");
    // Hops inside node b are measured on b's own clock, as phase 2 measures them: a latency
    // is what b's stamps say on the real clock (the drift's correction aside), whatever the
    // mapping. How close b's stamps are to the truth is phase 2's accuracy (its tests, and
    // BENCHMARKS.md for the 20 µs target).
    let real = |x: &Sighting| {
        r.gt.real_ns(x.node.as_deref().unwrap(), x.node_t_ns.unwrap())
    };
    let within: Vec<&HopRecord> = r
        .records
        .iter()
        .filter(|x| x.from.node == x.to.node)
        .collect();
    assert!(within.len() > 300, "{} records within b", within.len());
    for x in within {
        let on_b = real(&x.to) as i64 - real(&x.from) as i64;
        assert!(
            (x.latency_ns - on_b).abs() <= 1_000,
            "{} ns measured, {on_b} ns on b's clock: {x:?}",
            x.latency_ns
        );
    }
    // The collector recovered every node's clock: offset (collector − node) within its bound
    // of the skew put in, at the node's drift since the run started.
    for node in ["a", "b", "c"] {
        let parts: Vec<&str> = r
            .collector
            .split(" | ")
            .filter(|p| p.starts_with(&format!("{node}: ")))
            .collect();
        assert_eq!(parts.len(), replicas, "node {node} in {}", r.collector);
        for part in parts {
            assert!(part.contains("lost=0"), "{part}");
            let offset_ms: f64 = part
                .split("offset=")
                .nth(1)
                .and_then(|v| v.split("ms").next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no offset in {part}"));
            let want_ms = -(skew(node).offset_ns as f64) / 1e6;
            // The skew's drift moves the offset by ppm × run time (≤ 50 ppm × 40 s = 2 ms).
            assert!(
                (offset_ms - want_ms).abs() < 2.0,
                "node {node}: offset {offset_ms} ms, skew {want_ms} ms"
            );
        }
    }
    for (node, line) in &r.agents {
        assert!(
            line.contains(&format!("replicas={replicas}/{replicas} ")),
            "{node}: {line}"
        );
    }
}
