//! The collector's Prometheus metrics: per-hop latency and alignment-bound histograms, per
//! agent node the cumulative sighting counters and the clock model's offset and bound, and the
//! requests the collector refused per reason, rendered in the text exposition format 0.0.4 and
//! served on GET /metrics.
//!
//! Negative latencies (a cross-node hop whose two ends were mapped onto the collector's clock
//! with errors of opposite sign) are observed as 0: causality says the true latency is ≥ 0, so
//! 0 is the nearest possible value, and it keeps `_sum` monotonic as counter semantics require
//! (a falling `_sum` reads as a counter reset to `rate()`). They land in the lowest bucket.
//!
//! The alignment bound is a histogram with the latency's buckets rather than a gauge: it is a
//! property of each observation (the clock models at the moment of the two sightings), so a
//! gauge would only keep the last one, while the histogram gives its spread and mean over any
//! range and lines up bucket for bucket with the latency (a latency quantile under the bound's
//! says the hop is not resolved by the clock alignment). Same-node hops observe a bound of 0.
//!
//! Series that go quiet are dropped, so that memory and the scrape stay bounded while
//! processes, pods and nodes come and go: a hop's after no observation for the forget period
//! (10 minutes by default), a node's after the collector had nothing new from it for as long
//! (none of its counters or its clock's offset moved; a live agent sends clock exchanges every
//! 250 ms or faster). A hop seen again starts its histograms from 0, which Prometheus reads as
//! a counter reset. A node's values are kept, hidden, to tell when it is heard from again.

use agent::clock::monotonic_ns;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Upper bounds of the histogram buckets, in ns (rendered in seconds; +Inf is implied).
const BUCKETS_NS: [u64; 16] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// Label set of one hop: from a component on one node to a component on the same or another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopLabels {
    pub source_node: String,
    /// A component name, such as a process comm (a workload from phase 4 on).
    pub source: String,
    pub destination_node: String,
    pub destination: String,
    /// "transit" (a write in one process → a read in another) or "residence" (a read → a write
    /// inside one process).
    pub kind: &'static str,
    /// Kubernetes namespaces of the two workloads (phase 4 on); rendered only when known, as
    /// Prometheus takes an empty label for an absent one.
    pub source_namespace: String,
    pub destination_namespace: String,
}

#[derive(Default)]
struct Histogram {
    /// Observations per bucket, not cumulative; those above the last bound are only in `count`.
    buckets: [u64; BUCKETS_NS.len()],
    /// u128: a u64 of ns overflows after 584 years of summed latency, months at high hop rates.
    sum_ns: u128,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ns: u64) {
        if let Some(b) = self
            .buckets
            .get_mut(BUCKETS_NS.partition_point(|&le| le < ns))
        {
            *b += 1;
        }
        self.sum_ns += u128::from(ns);
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, n) in BUCKETS_NS.iter().zip(self.buckets) {
            cumulative += n;
            let le = seconds(*le as f64);
            writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}").unwrap();
        }
        let (sum, count) = (seconds(self.sum_ns as f64), self.count);
        writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}").unwrap();
        writeln!(out, "{name}_sum{{{labels}}} {sum}").unwrap();
        writeln!(out, "{name}_count{{{labels}}} {count}").unwrap();
    }
}

/// Name and help of each histogram family, in the order of [`Hop::histograms`].
const HISTOGRAMS: [(&str, &str); 2] = [
    (
        "audio_hop_latency_seconds",
        "Latency of a hop of an audio moment: transit (a write in one process to a read in another) or residence (a read to a write inside one process).",
    ),
    (
        "audio_hop_error_bound_seconds",
        "Error bound of each hop latency from cross-node clock alignment (0 within a node).",
    ),
];

/// Name and help of each per-node counter, in the order of [`NodeStats::counters`].
const COUNTERS: [(&str, &str); 3] = [
    (
        "audio_agent_sightings_total",
        "Sightings the collector took from the agent on the node.",
    ),
    (
        "audio_agent_lost_sightings_total",
        "Sightings the agent on the node reported dropping (its uplink queue was full).",
    ),
    (
        "audio_agent_duplicate_batches_total",
        "Batches from the node the collector already held (resends), acknowledged and dropped.",
    ),
];

/// Name and help of each per-node restart counter, in the order of [`Metrics::set_restarts`].
const RESTART_COUNTERS: [(&str, &str); 2] = [
    (
        "audio_agent_restarts_total",
        "Agent processes on the node replaced by another (a new epoch in its batches).",
    ),
    (
        "audio_agent_lost_at_restart_sightings_total",
        "Sightings replaced agents on the node took and never delivered, as far as their batches told.",
    ),
];

/// Name and help of each per-node gauge, in the order of [`NodeStats::gauges`].
const GAUGES: [(&str, &str); 2] = [
    (
        "audio_node_clock_offset_seconds",
        "The collector's clock minus the node's monotonic clock, as the node's clock model estimates it.",
    ),
    (
        "audio_node_clock_bound_seconds",
        "Error bound of the node's clock model mapping its stamps onto the collector's clock.",
    ),
];

/// Counted per reason only: a label with the node a refused request claimed would make a series
/// per invented name.
const REFUSED: (&str, &str) = (
    "audio_collector_refused_requests_total",
    "Clock exchanges and batches the collector refused: node_mismatch (the node claimed is not the client certificate's), node_limit (a node beyond --max-nodes).",
);

struct Hop {
    /// Latency, alignment bound.
    histograms: [Histogram; 2],
    last_ns: u64,
}

#[derive(PartialEq)]
struct NodeValues {
    /// Sightings, lost, duplicate batches.
    counters: [u64; 3],
    /// Clock offset and bound in seconds, while the clock model has them.
    gauges: [Option<f64>; 2],
}

struct NodeStats {
    values: NodeValues,
    /// When the values last changed.
    changed_ns: u64,
}

/// BTreeMaps: the rendering is in a stable order, which keeps scrapes diffable.
struct Inner {
    hops: BTreeMap<HopLabels, Hop>,
    nodes: BTreeMap<String, NodeStats>,
    /// Per reason.
    refused: BTreeMap<&'static str, u64>,
    /// Per node: restarts, sightings lost at restarts.
    restarts: BTreeMap<String, [u64; 2]>,
    forget_after_ns: u64,
    /// When next to drop quiet hops while observing.
    next_sweep_ns: u64,
}

impl Inner {
    fn quiet(&self, since_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(since_ns) >= self.forget_after_ns
    }

    fn forget_quiet_hops(&mut self, now_ns: u64) {
        let mut hops = std::mem::take(&mut self.hops);
        hops.retain(|_, hop| !self.quiet(hop.last_ns, now_ns));
        self.hops = hops;
    }
}

/// The collector's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(agent::stats::Retention::default().forget_after)
    }
}

impl Metrics {
    /// Metrics that drop a series after `forget_after` without news.
    pub fn new(forget_after: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                hops: BTreeMap::new(),
                nodes: BTreeMap::new(),
                refused: BTreeMap::new(),
                restarts: BTreeMap::new(),
                forget_after_ns: u64::try_from(forget_after.as_nanos()).unwrap_or(u64::MAX),
                next_sweep_ns: 0,
            })),
        }
    }

    /// One hop of one moment: its latency and the error bound of that latency (0 within a node).
    pub fn observe_hop(&self, labels: &HopLabels, latency_ns: i64, bound_ns: u64) {
        self.observe_hop_at(labels, latency_ns, bound_ns, monotonic_ns());
    }

    fn observe_hop_at(&self, labels: &HopLabels, latency_ns: i64, bound_ns: u64, now_ns: u64) {
        let mut inner = self.inner.lock().unwrap();
        // Also without scrapes: a collector serving no /metrics still observes.
        if now_ns >= inner.next_sweep_ns {
            inner.forget_quiet_hops(now_ns);
            inner.next_sweep_ns = now_ns.saturating_add(inner.forget_after_ns / 10);
        }
        let hop = inner.hops.entry(labels.clone()).or_insert_with(|| Hop {
            histograms: Default::default(),
            last_ns: now_ns,
        });
        hop.last_ns = hop.last_ns.max(now_ns);
        let [latency, bound] = &mut hop.histograms;
        latency.observe(latency_ns.max(0) as u64);
        bound.observe(bound_ns);
    }

    /// A node's cumulative counters as the collector holds them, and its clock model's offset
    /// (collector − node) and bound (`None` until the model has enough exchanges; the series
    /// is then left out).
    pub fn set_node(
        &self,
        node: &str,
        sightings_total: u64,
        lost_total: u64,
        duplicates_total: u64,
        clock_offset_ns: Option<i64>,
        clock_bound_ns: Option<u64>,
    ) {
        let values = NodeValues {
            counters: [sightings_total, lost_total, duplicates_total],
            gauges: [
                clock_offset_ns.map(|ns| seconds(ns as f64)),
                clock_bound_ns.map(|ns| seconds(ns as f64)),
            ],
        };
        self.set_node_at(node, values, monotonic_ns());
    }

    fn set_node_at(&self, node: &str, values: NodeValues, now_ns: u64) {
        let mut inner = self.inner.lock().unwrap();
        match inner.nodes.get_mut(node) {
            Some(stats) if stats.values == values => {}
            Some(stats) => {
                *stats = NodeStats {
                    values,
                    changed_ns: now_ns,
                }
            }
            None => {
                inner.nodes.insert(
                    node.to_string(),
                    NodeStats {
                        values,
                        changed_ns: now_ns,
                    },
                );
            }
        }
    }

    /// The requests refused so far for `reason`.
    pub fn set_refused(&self, reason: &'static str, total: u64) {
        self.inner.lock().unwrap().refused.insert(reason, total);
    }

    /// A node's agent restarts and the sightings the replaced agents never delivered.
    pub fn set_restarts(&self, node: &str, restarts_total: u64, lost_at_restart_total: u64) {
        let mut inner = self.inner.lock().unwrap();
        let counters = [restarts_total, lost_at_restart_total];
        inner.restarts.insert(node.to_string(), counters);
    }

    /// Everything in the Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        self.render_at(monotonic_ns())
    }

    fn render_at(&self, now_ns: u64) -> String {
        let mut inner = self.inner.lock().unwrap();
        inner.forget_quiet_hops(now_ns);
        let nodes: Vec<(&String, &NodeValues)> = inner
            .nodes
            .iter()
            .filter(|(_, n)| !inner.quiet(n.changed_ns, now_ns))
            .map(|(name, n)| (name, &n.values))
            .collect();
        let mut out = String::new();
        let hops: Vec<_> = inner
            .hops
            .iter()
            .map(|(l, hop)| {
                let mut labels = format!(
                    "source_node=\"{}\",source=\"{}\",destination_node=\"{}\",destination=\"{}\",kind=\"{}\"",
                    escape(&l.source_node),
                    escape(&l.source),
                    escape(&l.destination_node),
                    escape(&l.destination),
                    escape(l.kind),
                );
                for (name, value) in [
                    ("source_namespace", &l.source_namespace),
                    ("destination_namespace", &l.destination_namespace),
                ] {
                    if !value.is_empty() {
                        labels += &format!(",{name}=\"{}\"", escape(value));
                    }
                }
                (labels, hop)
            })
            .collect();
        for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
            header(&mut out, name, help, "histogram");
            for (labels, hop) in &hops {
                hop.histograms[i].render(&mut out, name, labels);
            }
        }
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            header(&mut out, name, help, "counter");
            for (node, stats) in &nodes {
                let v = stats.counters[i];
                writeln!(out, "{name}{{node=\"{}\"}} {v}", escape(node)).unwrap();
            }
        }
        for (i, (name, help)) in RESTART_COUNTERS.iter().enumerate() {
            header(&mut out, name, help, "counter");
            for (node, counters) in &inner.restarts {
                let v = counters[i];
                writeln!(out, "{name}{{node=\"{}\"}} {v}", escape(node)).unwrap();
            }
        }
        for (i, (name, help)) in GAUGES.iter().enumerate() {
            header(&mut out, name, help, "gauge");
            for (node, stats) in &nodes {
                if let Some(v) = stats.gauges[i] {
                    writeln!(out, "{name}{{node=\"{}\"}} {v}", escape(node)).unwrap();
                }
            }
        }
        let (name, help) = REFUSED;
        header(&mut out, name, help, "counter");
        for (reason, n) in &inner.refused {
            writeln!(out, "{name}{{reason=\"{reason}\"}} {n}").unwrap();
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}").unwrap();
}

fn seconds(ns: f64) -> f64 {
    ns / 1e9
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves GET /metrics on `addr` until `shutdown` resolves.
pub async fn serve_metrics(
    metrics: Metrics,
    addr: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_metrics_on(metrics, TcpListener::bind(addr).await?, shutdown).await
}

/// [`serve_metrics`] on a listener already bound (port 0 in tests).
pub async fn serve_metrics_on(
    metrics: Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics.render(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
