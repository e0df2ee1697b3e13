//! S11 on the faked cluster: S9's three nodes, every link a connection to a Kubernetes
//! Service's ClusterIP that kube-proxy-style iptables rules DNAT to one of two endpoint
//! addresses, every component in a pod of its own. Each node's agent names a link by
//! conntrack's post-NAT tuple: every hop is found, none falsely, every sighting named by its
//! pod, cross-node latencies within their bound. Needs root, crun and busybox-static.

use agent::clock::Skew;
use harness::scenario::s11;
use harness::score::TEST_BAR;
use phase_4_k8s::run::trace_scenario_phase4;
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-4-k8s");

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

#[test]
fn s11_hops_through_services_are_found_and_named_by_pod() {
    let run = trace_scenario_phase4(&s11(), Path::new(EXE), skew).expect("S11 (run as root)");
    let s = &run.cluster.score;
    eprintln!("{s}");
    assert!(
        s.misses(&TEST_BAR).is_empty(),
        "{:?}\n{s}",
        s.misses(&TEST_BAR)
    );
    assert_eq!(run.misattributed, 0, "{:?}", run.misattributed_examples);
    assert!(s.cross_node.records > 500, "{s}");
    assert_eq!(s.cross_node.outside_bound, 0, "{s}");
}
