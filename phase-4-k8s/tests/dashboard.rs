//! deploy/grafana/audio-tracer-dashboard.json asks only for what the collector exposes. Every
//! metric name in its PromQL is a series name that phase 3's metrics module renders (a
//! histogram's `_bucket`, `_sum` and `_count`, the counters and gauges). Every label name it
//! uses is a label of that rendering, or one of the namespace labels phase 4 adds to hops.
//! Counters and buckets go through rate()/increase() and gauges do not. Every variable is
//! defined, and every query goes to the `${DS_PROMETHEUS}` data source.

use phase_3_multi_node::metrics::{HopLabels, Metrics};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The labels phase 4 adds to the hop metrics (deploy/README.md).
const PHASE_4_LABELS: [&str; 2] = ["source_namespace", "destination_namespace"];
/// The labels a hop has (phase 3's and phase 4's); per-hop quantiles must keep them all apart.
const HOP_LABELS: [&str; 7] = [
    "source_namespace",
    "source",
    "source_node",
    "destination_namespace",
    "destination",
    "destination_node",
    "kind",
];
/// Grafana's own variables.
const BUILTIN_VARIABLES: [&str; 4] = ["__rate_interval", "__range", "__interval", "__all"];
/// The PromQL functions and aggregations the dashboard may call.
const FUNCTIONS: [&str; 22] = [
    "histogram_quantile",
    "rate",
    "irate",
    "increase",
    "deriv",
    "delta",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "topk",
    "bottomk",
    "abs",
    "clamp_min",
    "clamp_max",
    "max_over_time",
    "min_over_time",
    "avg_over_time",
    "last_over_time",
    "sort_desc",
    "vector",
];
const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
/// Clauses followed by a parenthesised list of label names.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/audio-tracer-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What phase 3's collector exposes: series names with their family's type, and label names.
struct Exposed {
    /// Series name → type of its family ("histogram", "counter", "gauge").
    series: BTreeMap<String, String>,
    labels: BTreeSet<String>,
}

/// Renders phase 3's metrics with one hop and one node, every family present.
fn exposed() -> Exposed {
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

/// What one PromQL expression uses.
#[derive(Debug, Default)]
struct Uses {
    /// Metric names, each with the function it is a direct argument of ("" for none).
    metrics: Vec<(String, String)>,
    labels: BTreeSet<String>,
    /// Labels of `by (…)` clauses.
    grouping: BTreeSet<String>,
    /// The `sum by (…)` lists of histogram_quantile's argument, one per quantile.
    quantile_groupings: Vec<BTreeSet<String>>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Lexes `expr` just enough to tell metric names, label names and functions apart.
fn promql(expr: &str) -> Result<Uses, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let mut i = 0;
    // Functions whose parenthesis is open, innermost last ("" for plain grouping).
    let mut stack: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && is_ident(chars[*i]) {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let string = |i: &mut usize| -> Result<(), String> {
        let quote = chars[*i];
        *i += 1;
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        if *i >= chars.len() {
            return Err(format!("unclosed string in {expr}"));
        }
        *i += 1;
        Ok(())
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' || c == '`' {
            string(&mut i)?;
        } else if c == '[' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or(format!("unclosed [ in {expr}"))?;
            let range: String = chars[i + 1..i + end].iter().collect();
            let ok = range.starts_with('$')
                || (range.len() > 1
                    && range.chars().all(|c| c.is_ascii_alphanumeric())
                    && range.starts_with(|c: char| c.is_ascii_digit()));
            if !ok {
                return Err(format!("range [{range}] in {expr}"));
            }
            i += end + 1;
        } else if c == '{' {
            i += 1;
            loop {
                skip_ws(&mut i);
                if chars.get(i) == Some(&'}') {
                    i += 1;
                    break;
                }
                if !chars.get(i).is_some_and(|&c| is_ident_start(c)) {
                    return Err(format!("a label name expected at {i} in {expr}"));
                }
                uses.labels.insert(ident(&mut i));
                skip_ws(&mut i);
                let op: String = chars[i..]
                    .iter()
                    .take_while(|c| "=!~".contains(**c))
                    .collect();
                if !["=", "!=", "=~", "!~"].contains(&op.as_str()) {
                    return Err(format!("matcher operator {op:?} in {expr}"));
                }
                i += op.len();
                skip_ws(&mut i);
                if chars.get(i) != Some(&'"') {
                    return Err(format!("a quoted label value expected at {i} in {expr}"));
                }
                string(&mut i)?;
                skip_ws(&mut i);
                match chars.get(i) {
                    Some(',') => i += 1,
                    Some('}') => {}
                    _ => return Err(format!(", or }} expected at {i} in {expr}")),
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let paren = chars.get(j) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if !paren {
                    continue;
                }
                let end = chars[j..].iter().position(|&c| c == ')').unwrap() + j;
                let list: String = chars[j + 1..end].iter().collect();
                let names: BTreeSet<String> = list
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
                if word == "by" {
                    uses.grouping.extend(names.iter().cloned());
                    if stack.last().map(String::as_str) == Some("histogram_quantile") {
                        uses.quantile_groupings.push(names.clone());
                    }
                }
                uses.labels.extend(names);
                i = end + 1;
            } else if FUNCTIONS.contains(&word.as_str()) {
                pending = Some(word);
            } else if paren {
                return Err(format!("unknown function {word} in {expr}"));
            } else if KEYWORDS.contains(&word.as_str()) {
            } else {
                let inside = stack.last().cloned().unwrap_or_default();
                uses.metrics.push((word, inside));
            }
        } else if c == '(' {
            stack.push(pending.take().unwrap_or_default());
            i += 1;
        } else if c == ')' {
            stack.pop().ok_or(format!("unbalanced ) in {expr}"))?;
            i += 1;
        } else if "+-*/%^=!<>,".contains(c) {
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} at {i} in {expr}"));
        }
    }
    if !stack.is_empty() {
        return Err(format!("unclosed ( in {expr}"));
    }
    Ok(uses)
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
            exposed.labels.contains(label) || PHASE_4_LABELS.contains(&label.as_str()),
            "{where_}: label {label} is not exposed ({expr})"
        );
    }
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

#[test]
fn exposed_names_are_phase_3s() {
    let e = exposed();
    let expected: BTreeSet<String> = HOP_LABELS
        .iter()
        .chain(&["le", "node"])
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
                    exposed.labels.contains(label) || PHASE_4_LABELS.contains(&label)
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
                            None => {
                                column == "Time"
                                    || exposed.labels.contains(column)
                                    || PHASE_4_LABELS.contains(&column.as_str())
                            }
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
            exposed.labels.contains(label) || PHASE_4_LABELS.contains(&label),
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
            assert!(
                exposed.labels.contains(l) || PHASE_4_LABELS.contains(&l.as_str()),
                "variable {name}: label {l}"
            );
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
