//! What phase 3's collector exposes, read off its own rendering: every series name with its
//! family's type, and every label name. The dashboard may ask for these and nothing else.

use phase_3_multi_node::metrics::{HopLabels, Metrics};
use std::collections::{BTreeMap, BTreeSet};

/// The labels phase 4 adds to the hop metrics (deploy/README.md).
pub const PHASE_4_LABELS: [&str; 2] = ["source_namespace", "destination_namespace"];
/// The labels a hop has (phase 3's and phase 4's); per-hop quantiles must keep them all apart.
pub const HOP_LABELS: [&str; 7] = [
    "source_namespace",
    "source",
    "source_node",
    "destination_namespace",
    "destination",
    "destination_node",
    "kind",
];

/// What phase 3's collector exposes: series names with their family's type, and label names.
pub struct Exposed {
    /// Series name → type of its family ("histogram", "counter", "gauge").
    pub series: BTreeMap<String, String>,
    pub labels: BTreeSet<String>,
}

/// Renders phase 3's metrics with one hop and one node, every family present.
pub fn exposed() -> Exposed {
    let m = Metrics::default();
    m.observe_hop(
        &HopLabels {
            source_node: "node-a".into(),
            source: "src".into(),
            destination_node: "node-b".into(),
            destination: "relay".into(),
            kind: "transit",
            // Phase 4's workload namespaces, rendered when known.
            source_namespace: "voice".into(),
            destination_namespace: "voice".into(),
        },
        1_500_000,
        200_000,
    );
    m.set_node("node-a", 10, 1, 2, Some(-3_000_000), Some(40_000));
    let text = m.render();
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
    // One of each kind of series, so that this test sees them all.
    for f in ["audio_hop_latency_seconds", "audio_hop_error_bound_seconds"] {
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(
                series.contains_key(&format!("{f}{suffix}")),
                "{f}{suffix} rendered"
            );
        }
    }
    assert_eq!(series.len(), 6 + 3 + 2, "{series:?}");
    Exposed { series, labels }
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
