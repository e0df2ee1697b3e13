//! deploy/grafana/audio-tracer-dashboard.json asks only for what the collector and the agents
//! expose. Every metric name in its PromQL is a series name that phase 3's metrics render (a
//! histogram's `_bucket`, `_sum` and `_count`, the counters and gauges). Every label name it
//! uses is a label of those renderings (or `instance`, which names a collector replica).
//! Counters and buckets go through rate()/increase() and gauges do not. The collector runs as
//! replicas, each serving its share: every query over the collector's series sums its
//! counters and histograms across replicas, or shows each replica, as its gauges must. Every
//! variable is defined, and every query goes to the `${DS_PROMETHEUS}` data source. The
//! data-quality row shows every agent and matcher loss.
//!
//! What is exposed is read off the renderings themselves (dashboard/exposed.rs); the queries
//! are read with a small PromQL lexer (dashboard/promql.rs). Then a real Prometheus server
//! scrapes two collector replicas' and an agent's endpoints, and every query and variable of
//! the dashboard runs there and returns series: one per replica where it shows replicas, no
//! replica's own where it sums them.

#[path = "dashboard/exposed.rs"]
mod exposed;
#[path = "dashboard/prometheus.rs"]
mod prometheus;
#[path = "dashboard/promql.rs"]
mod promql;

use exposed::{agent_registry, collector_metrics, exposed, Exposed, HOP_LABELS};
use phase_3_multi_node::endpoints::{serve, Health};
use prometheus::Prometheus;
use promql::{promql, Aggregation, Uses};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Grafana's own variables.
const BUILTIN_VARIABLES: [&str; 4] = ["__rate_interval", "__range", "__interval", "__all"];
/// The label Prometheus gives each target it scrapes (its address): for the collector's
/// series, the replica that serves them.
const REPLICA_LABEL: &str = "instance";

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/audio-tracer-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The variables (`$name`, `${name}`) a string refers to.
fn variables(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let name: String = body
            .chars()
            .take_while(|&c| c.is_ascii_alphanumeric() || c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        for q in p["panels"].as_array().into_iter().flatten() {
            out.push(q);
        }
    }
    out
}

fn is_prometheus_source(ds: &Value) -> bool {
    ds["type"] == "prometheus" && ds["uid"] == "${DS_PROMETHEUS}"
}

/// Checks one expression against what is exposed; returns what it uses.
fn check_expr(expr: &str, exposed: &Exposed, where_: &str) -> Uses {
    let uses = promql(expr).unwrap_or_else(|e| panic!("{where_}: {e}"));
    assert!(!uses.metrics.is_empty(), "{where_}: no metric in {expr}");
    for (name, inside) in &uses.metrics {
        let kind = exposed
            .series
            .get(name)
            .unwrap_or_else(|| panic!("{where_}: {name} is not a series phase 3 exposes ({expr})"));
        let cumulative = kind == "counter" || kind == "histogram";
        let rated = ["rate", "irate", "increase"].contains(&inside.as_str());
        // A bucket, sum, count or counter only means something as a rate or an increase; a
        // gauge must not be rated.
        assert_eq!(
            cumulative, rated,
            "{where_}: {name} ({kind}) inside {inside:?}: {expr}"
        );
    }
    for label in &uses.labels {
        assert!(
            exposed.labels.contains(label) || label == REPLICA_LABEL,
            "{where_}: label {label} is not exposed ({expr})"
        );
    }
    replicas_merged(&uses, exposed).unwrap_or_else(|e| panic!("{where_}: {e}: {expr}"));
    for grouping in &uses.quantile_groupings {
        assert!(
            grouping.contains("le"),
            "{where_}: quantile without le: {expr}"
        );
        for l in HOP_LABELS {
            assert!(
                grouping.contains(l),
                "{where_}: quantile merges hops across {l}: {expr}"
            );
        }
    }
    uses
}

/// Whether a query aggregates the collector's replicas, each of which serves the series of its
/// own share of the moments. Its counters and histograms are summed across replicas (the
/// cluster's rate is their sum), or kept per replica by `by (instance, …)`. Its gauges, a
/// node's clock as one replica maps it, mean nothing summed: they are shown per replica. A
/// plain selector, or any other aggregation across replicas, is refused.
fn replicas_merged(uses: &Uses, exposed: &Exposed) -> Result<(), String> {
    for ((name, _), merged) in uses.metrics.iter().zip(&uses.merged_by) {
        if !exposed.collector.contains(name) {
            continue;
        }
        let per_replica = merged
            .as_ref()
            .is_some_and(|a| a.grouping.keeps(REPLICA_LABEL));
        let summed = matches!(merged, Some(Aggregation { op, .. }) if op == "sum") && !per_replica;
        let gauge = exposed.series[name] == "gauge";
        match (gauge, per_replica, summed) {
            (_, true, _) | (false, _, true) => {}
            (true, ..) => {
                return Err(format!(
                    "{name}: a collector gauge, each replica's own: aggregate it by ({REPLICA_LABEL}, …)"
                ))
            }
            (false, ..) => {
                return Err(format!(
                    "{name}: the collector's replicas each serve a share: sum it by (…) across them, or by ({REPLICA_LABEL}, …)"
                ))
            }
        }
    }
    Ok(())
}

#[test]
fn queries_over_the_collector_merge_its_replicas() {
    let exposed = exposed();
    let hop = "le, k8s_src_namespace, k8s_src_owner_name, src_name, k8s_dst_namespace, k8s_dst_owner_name, dst_name, kind";
    let merged = [
        "sum by (node) (rate(audio_agent_sightings_total[5m]))".to_string(),
        "sum (rate(audio_collector_unmatched_moments_total[5m]))".into(),
        format!(
            "histogram_quantile(0.5, sum by ({hop}) (rate(audio_hop_latency_seconds_bucket[5m])))"
        ),
        "max by (instance, node) (audio_node_clock_offset_seconds)".into(),
        "sum by (instance) (rate(audio_collector_refused_requests_total[5m]))".into(),
        // An agent's own series: one agent per node, no replicas.
        "audio_agent_tls_probe_failures".into(),
    ];
    for expr in merged {
        let uses = promql(&expr).unwrap();
        assert_eq!(replicas_merged(&uses, &exposed), Ok(()), "{expr}");
    }
    let not_merged = [
        "rate(audio_agent_sightings_total[5m])",
        "max by (node) (rate(audio_agent_sightings_total[5m]))",
        "histogram_quantile(0.5, rate(audio_hop_latency_seconds_bucket[5m]))",
        "audio_node_clock_offset_seconds",
        "sum by (node) (audio_node_clock_bound_seconds)",
        "deriv(audio_node_clock_offset_seconds[5m])",
    ];
    for expr in not_merged {
        let uses = promql(expr).unwrap();
        assert!(replicas_merged(&uses, &exposed).is_err(), "{expr}");
    }
    assert!(
        promql("sum(rate(audio_agent_sightings_total[5m])) by (node)").is_err(),
        "a grouping after the argument is not read"
    );
}

#[test]
fn exposed_names_are_phase_3s() {
    let e = exposed();
    let node_labels = ["k8s_src_node_name", "k8s_dst_node_name"];
    let others = ["le", "node", "reason", "event", "program", "version"];
    let expected: BTreeSet<String> = HOP_LABELS
        .iter()
        .chain(&node_labels)
        .chain(&others)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(e.labels, expected);
}

#[test]
fn promql_lexer_tells_names_apart() {
    let u = promql(
        r#"histogram_quantile(0.99, sum by (le, source) (rate(a_bucket{source=~"$x", kind!="r,}"}[$__rate_interval]))) * 1e6 + on(node) group_left b"#,
    )
    .unwrap();
    assert_eq!(
        u.metrics,
        [
            ("a_bucket".to_string(), "rate".to_string()),
            ("b".into(), "".into())
        ]
    );
    assert_eq!(
        u.labels,
        ["kind", "le", "node", "source"].map(String::from).into()
    );
    assert_eq!(
        u.quantile_groupings,
        [["le", "source"].map(String::from).into()]
    );
    assert!(promql("rate(x[5m]").is_err());
    assert!(promql("nosuchfn(x)").is_err());
    assert!(promql("x{a=b}").is_err());
}

#[test]
fn queries_use_only_exposed_metrics_and_labels() {
    let d = dashboard();
    let exposed = exposed();
    let mut used_series = BTreeSet::new();
    let mut exprs = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            let uses = check_expr(expr, &exposed, title);
            exprs += 1;
            used_series.extend(uses.metrics.iter().map(|(n, _)| n.clone()));
            // {{label}} in a legend must be a label the result keeps.
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            for part in legend.split("{{").skip(1) {
                let label = part.split("}}").next().unwrap().trim();
                // An aggregation keeps its `by` labels; a plain selector keeps them all.
                let kept = if uses.grouping.is_empty() {
                    exposed.labels.contains(label) || label == REPLICA_LABEL
                } else {
                    uses.grouping.contains(label)
                };
                assert!(
                    kept,
                    "{title}: legend {{{{{label}}}}} is not a label of {expr}"
                );
            }
        }
        // A table's columns: labels of its queries, or the value of one of them.
        if p["type"] == "table" {
            let refs: BTreeSet<String> = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["refId"].as_str().unwrap().to_string())
                .collect();
            for tr in p["transformations"].as_array().into_iter().flatten() {
                for map in ["indexByName", "renameByName", "excludeByName"] {
                    for column in tr["options"][map]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k)
                    {
                        let ok = match column.strip_prefix("Value #") {
                            Some(r) => refs.contains(r),
                            None => column == "Time" || exposed.labels.contains(column),
                        };
                        assert!(ok, "{title}: column {column} is no label or query");
                    }
                }
            }
            assert!(
                p["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|t| t["instant"] == true),
                "{title}: a table of instant queries"
            );
        }
    }
    // Template variables' label_values(selector, label) queries.
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let name = v["name"].as_str().unwrap();
        let query = v["query"]["query"].as_str().unwrap();
        assert_eq!(
            v["definition"].as_str(),
            Some(query),
            "{name}: definition = query"
        );
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: label_values(…) expected: {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let label = label.trim();
        assert!(
            exposed.labels.contains(label),
            "variable {name}: label {label}"
        );
        let uses = promql(selector).unwrap_or_else(|e| panic!("variable {name}: {e}"));
        assert_eq!(uses.metrics.len(), 1, "variable {name}: one series");
        let series = &uses.metrics[0].0;
        assert!(
            exposed.series.contains_key(series),
            "variable {name}: {series}"
        );
        for l in &uses.labels {
            assert!(exposed.labels.contains(l), "variable {name}: label {l}");
        }
        used_series.insert(series.clone());
        exprs += 1;
    }
    assert!(exprs >= 10, "{exprs} expressions");
    // Every counter and gauge family is on the dashboard, and both histograms.
    for name in [
        "audio_hop_latency_seconds_bucket",
        "audio_hop_latency_seconds_count",
        "audio_hop_error_bound_seconds_bucket",
        "audio_agent_sightings_total",
        "audio_agent_lost_sightings_total",
        "audio_agent_duplicate_batches_total",
        "audio_node_clock_offset_seconds",
        "audio_node_clock_bound_seconds",
        // The data-quality row.
        "audio_agent_kernel_events_total",
        "audio_agent_uplink_lost_sightings_total",
        "audio_agent_lost_at_restart_sightings_total",
        "audio_agent_tls_probe_failures",
        "audio_agent_targets",
        "audio_agent_program_verified_instructions",
        "audio_collector_unmatched_moments_total",
        "audio_collector_refused_sightings_total",
        "audio_collector_unpaired_sightings_total",
        "audio_collector_refused_requests_total",
    ] {
        assert!(used_series.contains(name), "{name} is on no panel");
    }
}

#[test]
fn hop_panels_are_per_hop_quantiles() {
    let d = dashboard();
    let exposed = exposed();
    let exprs: Vec<(&str, &str)> = panels(&d)
        .into_iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (p["title"].as_str().unwrap(), t["expr"].as_str().unwrap()))
        })
        .collect();
    let quantile_of = |q: &str, series: &str, range_fn: &str| {
        exprs.iter().any(|(title, e)| {
            let u = check_expr(e, &exposed, title);
            e.starts_with(&format!("histogram_quantile({q},"))
                && u.metrics == [(series.to_string(), range_fn.to_string())]
                && u.quantile_groupings.len() == 1
        })
    };
    assert!(
        quantile_of("0.5", "audio_hop_latency_seconds_bucket", "rate"),
        "p50 over time"
    );
    assert!(
        quantile_of("0.99", "audio_hop_latency_seconds_bucket", "rate"),
        "p99 over time"
    );
    assert!(
        quantile_of("0.5", "audio_hop_latency_seconds_bucket", "increase"),
        "table p50"
    );
    assert!(
        quantile_of("0.99", "audio_hop_latency_seconds_bucket", "increase"),
        "table p99"
    );
    assert!(
        quantile_of("0.99", "audio_hop_error_bound_seconds_bucket", "increase"),
        "table: the error bound's p99"
    );
}

#[test]
fn dashboard_is_importable_and_self_consistent() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39);
    assert!(d["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    let vars = d["templating"]["list"].as_array().unwrap();
    let mut defined: BTreeSet<String> = BUILTIN_VARIABLES.iter().map(|s| s.to_string()).collect();
    for v in vars {
        assert!(
            defined.insert(v["name"].as_str().unwrap().to_string()),
            "variable twice"
        );
    }
    let ds = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("DS_PROMETHEUS");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert!(
            is_prometheus_source(&v["datasource"]),
            "{}: data source",
            v["name"]
        );
        for used in variables(v["query"]["query"].as_str().unwrap()) {
            assert!(defined.contains(&used), "{}: ${used} undefined", v["name"]);
        }
    }
    for name in ["namespace", "source", "destination"] {
        assert!(defined.contains(name), "a {name} variable");
    }
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("an id")),
            "{title}: id twice"
        );
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && g["h"].as_u64().unwrap() > 0,
            "{title}: gridPos"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            is_prometheus_source(&p["datasource"]),
            "{title}: data source"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                is_prometheus_source(&t["datasource"]),
                "{title}: target data source"
            );
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId twice"
            );
            for used in variables(t["expr"].as_str().unwrap()) {
                assert!(defined.contains(&used), "{title}: ${used} undefined");
            }
        }
    }
}

/// A dashboard expression as Grafana sends it: variables replaced ("All", and ranges that hold
/// several 1 s scrapes).
fn as_sent(expr: &str) -> String {
    let mut e = expr
        .replace("$__rate_interval", "15s")
        .replace("$__range", "1m");
    for v in ["namespace", "source", "destination", "node"] {
        e = e.replace(&format!("${v}"), ".*");
    }
    e
}

#[test]
fn every_query_returns_series_from_a_real_prometheus() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serve_on_a_port = |registry| {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stopped = stopped.clone();
        runtime.spawn(serve(
            listener,
            registry,
            Health::waiting_for("-"),
            async move {
                stopped.wait_for(|&s| s).await.ok();
            },
        ));
        addr
    };
    // Two collector replicas (each with the same series, as replicas sharing the moments of
    // the same hops and nodes have) and an agent.
    let replicas = [
        serve_on_a_port(collector_metrics().registry()),
        serve_on_a_port(collector_metrics().registry()),
    ];
    let agent = serve_on_a_port(Arc::new(agent_registry()));
    let prometheus = Prometheus::scraping(&[("collector", &replicas), ("agent", &[agent])]);
    let targets = replicas.len() + 1;

    // Every target scraped a few times: enough samples for every rate() over 15 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = prometheus.query("min(count_over_time(up[15s]))");
        let enough = scrapes.as_ref().is_ok_and(|r| {
            r.first()
                .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                >= Some(4.0)
        });
        if enough && prometheus.query("up").is_ok_and(|r| r.len() == targets) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not scraped within 60 s: {scrapes:?}\n{:?}\n{}",
            prometheus.api("/api/v1/targets"),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let replica_names: BTreeSet<String> = replicas.iter().map(|a| a.to_string()).collect();
    let exposed = exposed();
    let d = dashboard();
    let mut queries = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or_default();
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = as_sent(t["expr"].as_str().unwrap());
            let result = prometheus
                .query(&expr)
                .unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
            assert!(!result.is_empty(), "{title}: no series for {expr}");
            queries += 1;
            // A query over the collector shows every replica, or none on its own.
            let uses = promql(&expr).unwrap();
            let over_collector = uses
                .metrics
                .iter()
                .any(|(name, _)| exposed.collector.contains(name));
            if over_collector {
                let shown: BTreeSet<String> = result
                    .iter()
                    .filter_map(|r| r["metric"][REPLICA_LABEL].as_str().map(String::from))
                    .collect();
                let per_replica = uses
                    .merged_by
                    .iter()
                    .flatten()
                    .any(|a| a.grouping.keeps(REPLICA_LABEL));
                let expected = match per_replica {
                    true => replica_names.clone(),
                    false => BTreeSet::new(),
                };
                assert_eq!(shown, expected, "{title}: the replicas of {expr}");
            }
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        let Some(query) = v["query"]["query"].as_str() else {
            continue;
        };
        let (selector, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap();
        let expr = format!("count by ({}) ({})", label.trim(), as_sent(selector));
        let result = prometheus
            .query(&expr)
            .unwrap_or_else(|e| panic!("variable {}: {expr}: {e}", v["name"]));
        assert!(
            result.iter().any(|r| r["metric"][label.trim()].is_string()),
            "variable {}: no values for {expr}: {result:?}",
            v["name"]
        );
        queries += 1;
    }
    assert!(queries >= 20, "{queries} queries");
    stop.send(true).unwrap();
}
