//! S11: S9's three nodes with every link a connection to a Kubernetes Service's ClusterIP,
//! DNAT-ed by kube-proxy-style iptables rules in the writer's node to one of two endpoint
//! addresses. The reader's socket never sees the ClusterIP: the agents name each link by
//! conntrack's post-NAT tuple, so every hop is still found, none falsely, across nodes within
//! the bound.

use agent::clock::Skew;
use harness::scenario::s11;
use harness::score::TEST_BAR;
use phase_3_multi_node::run::trace_scenario_phase3;
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");

fn skew(node: &str) -> Skew {
    let (offset_ns, ppm) = match node {
        "a" => (30_000_000, -25.0),
        "b" => (-40_000_000, 30.0),
        _ => (10_000_000, 15.0),
    };
    Skew {
        offset_ns,
        ppm,
        // From the run's start (`skews_from_now`).
        ..Skew::default()
    }
}

#[test]
fn s11_hops_through_services_are_found_across_nodes() {
    let r = trace_scenario_phase3(&s11(), Path::new(EXE), skew).expect("S11 (run as root)");
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
    // Every hop found, coverage ≥ 95 %, no false match, error p99 within the bar.
    assert!(
        s.misses(&TEST_BAR).is_empty(),
        "{:?}\n{s}",
        s.misses(&TEST_BAR)
    );
    let x = &s.cross_node;
    assert!(x.records > 500, "{s}");
    assert_eq!(x.outside_bound, 0, "{s}");
    assert!(x.error_p99_ns <= 200_000, "{s}");
    let node_of = |hop_end: &str| {
        let name = hop_end.split(':').next().unwrap();
        r.gt.component(name).and_then(|c| c.node.clone())
    };
    // Per call: a → b and b → c twice cross nodes; b-r1 → b-r2 goes through a Service whose
    // endpoints are on the writer's own node.
    let crossing = s
        .hops
        .iter()
        .filter(|h| node_of(&h.from) != node_of(&h.to))
        .count();
    assert_eq!(crossing, 3 * 4, "{s}");
    // The writers' nodes track every Service connection: none named without conntrack.
    for node in ["a", "b"] {
        let line = &r.agents.iter().find(|(n, _)| n == node).unwrap().1;
        assert!(
            line.contains("tcp_links_untracked=0"),
            "agent {node}: {line}"
        );
    }
}
