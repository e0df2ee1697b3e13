use super::*;
use phase_2_straddle::matcher::MatchCounters;

fn hop(source: &str, destination: &str, kind: &'static str) -> HopLabels {
    let peer = |name: &str| Peer {
        name: name.into(),
        ..Default::default()
    };
    HopLabels {
        src: peer(source),
        dst: peer(destination),
        kind,
    }
}

/// The value of the one sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let lines: Vec<_> = text
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .collect();
    assert_eq!(lines.len(), 1, "{series} in\n{text}");
    lines[0].parse().unwrap()
}

#[test]
fn histograms_are_cumulative_and_sum_in_seconds() {
    let m = Metrics::default();
    let h = hop("src", "relay", "transit");
    for ns in [5_000, 10_000, 1_200_000, 1_300_000, 3_000_000_000] {
        m.observe_hop(&h, ns, 200_000);
    }
    let text = m.render();
    let labels = r#"src_name="src",dst_name="relay",kind="transit""#;
    let bucket = |le: &str| {
        sample(
            &text,
            &format!("audio_hop_latency_seconds_bucket{{{labels},le=\"{le}\"}}"),
        )
    };
    // An observation equal to a bound is in that bucket (le is ≤).
    assert_eq!(bucket("1e-05"), 2.0);
    assert_eq!(bucket("0.001"), 2.0);
    assert_eq!(bucket("0.0025"), 4.0);
    assert_eq!(bucket("1"), 4.0);
    assert_eq!(bucket("+Inf"), 5.0);
    let les: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("audio_hop_latency_seconds_bucket"))
        .map(|l| l.split(' ').next_back().unwrap().parse().unwrap())
        .collect();
    assert_eq!(les.len(), BUCKETS_NS.len() + 1);
    assert!(les.windows(2).all(|w| w[0] <= w[1]), "{les:?}");
    let sum = sample(&text, &format!("audio_hop_latency_seconds_sum{{{labels}}}"));
    assert!((sum - 3.002515).abs() < 1e-12, "{sum}");
    assert_eq!(
        sample(
            &text,
            &format!("audio_hop_latency_seconds_count{{{labels}}}")
        ),
        5.0
    );
    assert_eq!(
        sample(
            &text,
            &format!("audio_hop_error_bound_seconds_bucket{{{labels},le=\"0.00025\"}}")
        ),
        5.0
    );
}

#[test]
fn negative_latency_counts_in_the_lowest_bucket_as_zero() {
    let m = Metrics::default();
    let h = hop("src", "relay", "transit");
    m.observe_hop(&h, -40_000, 100_000);
    m.observe_hop(&h, 2_000_000, 100_000);
    let text = m.render();
    let labels = r#"src_name="src",dst_name="relay",kind="transit""#;
    assert_eq!(
        sample(
            &text,
            &format!("audio_hop_latency_seconds_bucket{{{labels},le=\"1e-05\"}}")
        ),
        1.0
    );
    assert_eq!(
        sample(&text, &format!("audio_hop_latency_seconds_sum{{{labels}}}")),
        0.002
    );
}

const S: u64 = 1_000_000_000;

#[test]
fn quiet_hops_leave_the_scrape_and_memory() {
    let m = Metrics::new(Duration::from_secs(600));
    let (gone, live) = (
        hop("gone", "relay", "transit"),
        hop("live", "relay", "transit"),
    );
    let t0 = 1_000 * S;
    m.observe_hop_at(&gone, 1_000, 0, t0);
    m.observe_hop_at(&live, 1_000, 0, t0 + 500 * S);
    let count = |text: &str, source: &str| {
        let series = format!(
            r#"audio_hop_latency_seconds_count{{src_name="{source}",dst_name="relay",kind="transit"}}"#
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<u64>().ok())
    };
    let text = m.render_at(t0 + 599 * S);
    assert_eq!(count(&text, "gone"), Some(1), "{text}");
    let text = m.render_at(t0 + 600 * S);
    assert_eq!(count(&text, "gone"), None, "{text}");
    assert_eq!(count(&text, "live"), Some(1), "{text}");
    assert_eq!(m.inner.lock().unwrap().hops.len(), 1);
    // Observing alone forgets too, when nothing scrapes.
    let m2 = Metrics::new(Duration::from_secs(600));
    m2.observe_hop_at(&gone, 1_000, 0, t0);
    m2.observe_hop_at(&live, 1_000, 0, t0 + 700 * S);
    assert_eq!(m2.inner.lock().unwrap().hops.len(), 1);
    // Seen again, a series starts from 0.
    m.observe_hop_at(&gone, 1_000, 0, t0 + 601 * S);
    assert_eq!(count(&m.render_at(t0 + 601 * S), "gone"), Some(1));
}

#[test]
fn nodes_not_heard_from_leave_the_scrape() {
    let m = Metrics::new(Duration::from_secs(600));
    let values = |sightings: u64, offset: f64| NodeValues {
        counters: [sightings, 0, 0],
        gauges: [Some(offset), Some(1e-4)],
    };
    let t0 = 1_000 * S;
    m.set_node_at("node-a", values(10, 0.5), t0);
    m.set_node_at("node-b", values(10, 0.5), t0);
    // node-a's clock moved (a new exchange), node-b's values are as they were.
    m.set_node_at("node-a", values(10, 0.6), t0 + 300 * S);
    m.set_node_at("node-b", values(10, 0.5), t0 + 300 * S);
    let shown = |text: &str, node: &str| {
        text.contains(&format!("audio_agent_sightings_total{{node=\"{node}\"}}"))
            && text.contains(&format!(
                "audio_node_clock_offset_seconds{{node=\"{node}\"}}"
            ))
    };
    let text = m.render_at(t0 + 599 * S);
    assert!(shown(&text, "node-a") && shown(&text, "node-b"), "{text}");
    let text = m.render_at(t0 + 600 * S);
    assert!(shown(&text, "node-a") && !shown(&text, "node-b"), "{text}");
    // The same values again are no news; a sighting is.
    m.set_node_at("node-b", values(10, 0.5), t0 + 700 * S);
    assert!(!shown(&m.render_at(t0 + 700 * S), "node-b"));
    m.set_node_at("node-b", values(11, 0.5), t0 + 701 * S);
    assert!(shown(&m.render_at(t0 + 701 * S), "node-b"));
}

#[test]
fn format_headers_escaping_and_node_series() {
    let m = Metrics::default();
    m.observe_hop(&hop("a\\b", "say \"hi\"\nnow", "residence"), 1_000, 0);
    m.set_node("node-a", 10, 2, 1, Some(-50_000_000), None);
    m.set_node("node-\"b\"", 7, 0, 0, Some(1_500), Some(20_000));
    m.set_refused("node_mismatch", 3);
    m.set_restarts("node-a", 2, 30);
    let text = m.render();
    assert!(text.contains(
        r#"audio_hop_latency_seconds_count{src_name="a\\b",dst_name="say \"hi\"\nnow",kind="residence"} 1"#
    ), "{text}");
    for (name, kind) in [
        ("audio_hop_latency_seconds", "histogram"),
        ("audio_hop_error_bound_seconds", "histogram"),
        ("audio_agent_sightings_total", "counter"),
        ("audio_agent_lost_sightings_total", "counter"),
        ("audio_agent_duplicate_batches_total", "counter"),
        ("audio_agent_restarts_total", "counter"),
        ("audio_agent_lost_at_restart_sightings_total", "counter"),
        ("audio_node_clock_offset_seconds", "gauge"),
        ("audio_node_clock_bound_seconds", "gauge"),
        ("audio_collector_refused_requests_total", "counter"),
    ] {
        // HELP then TYPE, each family once and before its samples.
        let at = text.find(&format!("# HELP {name} ")).unwrap();
        assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1);
        let kind_line = format!("# TYPE {name} {kind}");
        assert_eq!(text[at..].lines().nth(1), Some(kind_line.as_str()));
        assert!(!text[..at].contains(&format!("\n{name}")));
    }
    assert_eq!(
        sample(&text, r#"audio_agent_sightings_total{node="node-a"}"#),
        10.0
    );
    assert_eq!(
        sample(&text, r#"audio_agent_lost_sightings_total{node="node-a"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"audio_agent_duplicate_batches_total{node="node-a"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"audio_agent_restarts_total{node="node-a"}"#),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            r#"audio_agent_lost_at_restart_sightings_total{node="node-a"}"#
        ),
        30.0
    );
    assert_eq!(
        sample(&text, r#"audio_node_clock_offset_seconds{node="node-a"}"#),
        -0.05
    );
    assert_eq!(
        sample(
            &text,
            r#"audio_node_clock_bound_seconds{node="node-\"b\""}"#
        ),
        2e-5
    );
    assert!(!text.contains(r#"audio_node_clock_bound_seconds{node="node-a"}"#));
    assert_eq!(
        sample(
            &text,
            r#"audio_collector_refused_requests_total{reason="node_mismatch"}"#
        ),
        3.0
    );
    // Every sample line: a name, labels in braces if any, one space, a number.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert_eq!(series.contains('{'), series.ends_with('}'), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(text.ends_with('\n'));
}

#[test]
fn the_matchers_counts_are_series() {
    let m = Metrics::default();
    m.set_quality(MatchCounters {
        unmatched: 4,
        refused_repeats: 3,
        refused_ambiguous: 2,
        unpaired: 1,
        opaque_emerged: 7,
        opaque_matched: 6,
        refused_opaque: 1,
    });
    let text = m.render();
    for (series, value) in [
        ("audio_collector_unmatched_moments_total", 4.0),
        (
            r#"audio_collector_refused_sightings_total{reason="repeat"}"#,
            3.0,
        ),
        (
            r#"audio_collector_refused_sightings_total{reason="ambiguous"}"#,
            2.0,
        ),
        ("audio_collector_unpaired_sightings_total", 1.0),
        (
            r#"audio_collector_refused_sightings_total{reason="opaque"}"#,
            1.0,
        ),
        ("audio_collector_opaque_emerged_moments_total", 7.0),
        ("audio_collector_opaque_matched_moments_total", 6.0),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
}

#[test]
fn workloads_are_named_as_beyla_names_them_and_nodes_only_when_given() {
    let m = Metrics::default();
    let workload = |name: &str, node: &str| Peer {
        name: name.into(),
        namespace: "voice".into(),
        node: node.into(),
    };
    m.observe_hop(
        &HopLabels {
            src: workload("gateway", ""),
            dst: workload("mixer", ""),
            kind: "transit",
        },
        1_000,
        0,
    );
    m.observe_hop(
        &HopLabels {
            src: workload("mixer", "node-a"),
            dst: Peer {
                name: "recorder".into(),
                node: "node-b".into(),
                ..Default::default()
            },
            kind: "write_to_write",
        },
        1_000,
        0,
    );
    let text = m.render();
    assert_eq!(
        sample(
            &text,
            r#"audio_hop_latency_seconds_count{k8s_src_owner_name="gateway",k8s_src_namespace="voice",k8s_dst_owner_name="mixer",k8s_dst_namespace="voice",kind="transit"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"audio_hop_latency_seconds_count{k8s_src_owner_name="mixer",k8s_src_namespace="voice",k8s_src_node_name="node-a",dst_name="recorder",dst_node="node-b",kind="write_to_write"}"#
        ),
        1.0
    );
}
