//! What phase 3's collector and agents expose, read off their own renderings: every series name
//! with its family's type, and every label name. The dashboard may ask for these and nothing
//! else.

use phase_2_straddle::matcher::MatchCounters;
use phase_3_multi_node::agent_metrics::{AgentMetrics, Snapshot};
use phase_3_multi_node::endpoints::Registry;
use phase_3_multi_node::metrics::{HopLabels, Metrics, Peer};
use std::collections::{BTreeMap, BTreeSet};

/// The labels a hop has (a Kubernetes workload's or a process's, per side); per-hop quantiles
/// must keep them all apart. The node labels are optional (--metrics-node-labels).
pub const HOP_LABELS: [&str; 7] = [
    "k8s_src_namespace",
    "k8s_src_owner_name",
    "src_name",
    "k8s_dst_namespace",
    "k8s_dst_owner_name",
    "dst_name",
    "kind",
];

/// What phase 3 exposes: series names with their family's type, and label names.
pub struct Exposed {
    /// Series name → type of its family ("histogram", "counter", "gauge").
    pub series: BTreeMap<String, String>,
    pub labels: BTreeSet<String>,
    /// The series only the collector serves (not the process and build series every binary
    /// has): each replica serves its own.
    pub collector: BTreeSet<String>,
}

/// The collector's metrics with two hops (between workloads with their nodes, between
/// processes without) and one node: every family present.
pub fn collector_metrics() -> Metrics {
    let m = Metrics::default();
    let workload = |name: &str, node: &str| Peer {
        name: name.into(),
        namespace: "voice".into(),
        node: node.into(),
    };
    m.observe_hop(
        &HopLabels {
            src: workload("src", "node-a"),
            dst: workload("relay", "node-b"),
            kind: "transit",
        },
        1_500_000,
        200_000,
    );
    let process = |name: &str| Peer {
        name: name.into(),
        ..Default::default()
    };
    m.observe_hop(
        &HopLabels {
            src: process("src"),
            dst: process("relay"),
            kind: "residence",
        },
        1_500_000,
        0,
    );
    m.set_node("node-a", 10, 1, 2, Some(-3_000_000), Some(40_000));
    m.set_restarts("node-a", 1, 5);
    m.set_refused("node_limit", 1);
    m.set_quality(MatchCounters::default());
    m
}

/// An agent's registry as it serves it on node-a, with a snapshot: every family present.
pub fn agent_registry() -> Registry {
    let agent = AgentMetrics::default();
    agent.update(Snapshot {
        kernel: vec![("drops", 0), ("read_errors", 0)],
        tls_probes: Some((1, 0)),
        go_tls_probes: Some((1, 0, 0)),
        verified_instructions: vec![("sys_exit".into(), 17_000)],
        targets: 1,
        ..Default::default()
    });
    let mut registry = phase_3_multi_node::endpoints::registry();
    registry
        .sub_registry_with_label(("node".into(), "node-a".into()))
        .register_collector(Box::new(agent));
    registry
}

/// The collector's page and an agent's.
pub fn exposed() -> Exposed {
    let agent = phase_3_multi_node::endpoints::render(&agent_registry());
    let collector = collector_metrics().render();
    let (series, labels) = read(&(collector.clone() + &agent));
    // One of each kind of series, so that this test sees them all.
    for f in ["audio_hop_latency_seconds", "audio_hop_error_bound_seconds"] {
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(
                series.contains_key(&format!("{f}{suffix}")),
                "{f}{suffix} rendered"
            );
        }
    }
    for f in [
        "audio_agent_kernel_events_total",
        "audio_agent_program_verified_instructions",
        "audio_collector_unmatched_moments_total",
        "process_cpu_seconds_total",
    ] {
        assert!(series.contains_key(f), "{f} rendered");
    }
    let common = read(&phase_3_multi_node::endpoints::render(
        &phase_3_multi_node::endpoints::registry(),
    ))
    .0;
    let collector = read(&collector)
        .0
        .into_keys()
        .filter(|name| !common.contains_key(name))
        .collect();
    Exposed {
        series,
        labels,
        collector,
    }
}

/// The series of an exposition, with their family's type, and its label names.
fn read(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut types = BTreeMap::new();
    let mut series = BTreeMap::new();
    let mut labels = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("{name}: no TYPE line"));
        series.insert(name.to_string(), types[family].clone());
        if line[name_end..].starts_with('{') {
            labels.extend(sample_label_names(&line[name_end + 1..]));
        }
    }
    (series, labels)
}

/// The label names of a sample line's `name="value",…}` part (values may hold escapes).
fn sample_label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        names.push(name);
        assert_eq!(chars.next(), Some('"'));
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        match chars.next() {
            Some(',') => continue,
            Some('}') => return names,
            other => panic!("{s}: {other:?}"),
        }
    }
}
