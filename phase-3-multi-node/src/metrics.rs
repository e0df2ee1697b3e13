//! The collector's Prometheus metrics: per-hop latency and alignment-bound histograms, per
//! agent node the cumulative sighting counters and the clock model's offset and bound, the
//! requests the collector refused per reason, and the matcher's data-quality counts. Encoded by
//! `prometheus-client` (its histograms, label escaping and text format) and served with the
//! collector's other endpoints (`endpoints`); what is kept and when it is dropped is this
//! module's.
//!
//! A hop's series name each side as a Beyla user knows it: `k8s_src_owner_name` and
//! `k8s_src_namespace` (`k8s_dst_*` for the other side) for a Kubernetes workload, `src_name`
//! (a process's command name) otherwise. The nodes of the two sides are labels only when asked
//! for (`k8s_src_node_name`, or `src_node` outside Kubernetes): with them, every pair of nodes a
//! hop crosses is a series of its own, N² for a workload spread over N nodes.
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
//! Series that go quiet are dropped (at each [`Metrics::forget_quiet`], which the collector
//! calls several times a second, and while observing), so that memory and the scrape stay
//! bounded while processes, pods and nodes come and go: a hop's after no observation for the
//! forget period (10 minutes by default), a node's after the collector had nothing new from it
//! for as long (none of its counters or its clock's offset moved; a live agent sends clock
//! exchanges every 250 ms or faster). A hop seen again starts its histograms from 0, which
//! Prometheus reads as a counter reset. A node's values are kept, hidden, to tell when it is
//! heard from again.

use crate::endpoints::encode_one;
use agent::clock::monotonic_ns;
use phase_2_straddle::matcher::MatchCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the histogram buckets, in ns (exported in seconds; +Inf is implied).
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

/// One side of a hop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    /// The Kubernetes workload (phase 4 on), else the process's command name.
    pub name: String,
    /// The workload's namespace; empty outside Kubernetes.
    pub namespace: String,
    /// The node; empty unless node labels are asked for.
    pub node: String,
}

impl Peer {
    /// `side` is `src` or `dst`; empty values are left out (Prometheus reads an empty label as
    /// an absent one).
    fn labels(&self, side: &str, out: &mut Vec<(String, String)>) {
        let kubernetes = !self.namespace.is_empty();
        let (name, node) = match kubernetes {
            true => (
                format!("k8s_{side}_owner_name"),
                format!("k8s_{side}_node_name"),
            ),
            false => (format!("{side}_name"), format!("{side}_node")),
        };
        out.push((name, self.name.clone()));
        if kubernetes {
            out.push((format!("k8s_{side}_namespace"), self.namespace.clone()));
        }
        if !self.node.is_empty() {
            out.push((node, self.node.clone()));
        }
    }
}

/// Label set of one hop: from a component on one node to a component on the same or another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HopLabels {
    pub src: Peer,
    pub dst: Peer,
    /// `transit`, `residence`, `write_to_write` or `read_to_read` (docs/results-schema.md).
    pub kind: &'static str,
}

impl EncodeLabelSet for HopLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> std::fmt::Result {
        let mut labels = Vec::new();
        self.src.labels("src", &mut labels);
        self.dst.labels("dst", &mut labels);
        labels.push(("kind".to_string(), self.kind.to_string()));
        labels.encode(encoder)
    }
}

/// Name and help of each histogram family, in the order of [`Hop::histograms`].
const HISTOGRAMS: [(&str, &str); 2] = [
    (
        "audio_hop_latency_seconds",
        "Latency of a hop of an audio moment: transit (a write in one process to a read in another) or residence (a read to a write inside one process)",
    ),
    (
        "audio_hop_error_bound_seconds",
        "Error bound of each hop latency from cross-node clock alignment (0 within a node)",
    ),
];

/// Name (without `_total`) and help of each per-node counter, in the order of
/// [`NodeValues::counters`].
const COUNTERS: [(&str, &str); 3] = [
    (
        "audio_agent_sightings",
        "Sightings the collector took from the agent on the node",
    ),
    (
        "audio_agent_lost_sightings",
        "Sightings the agent on the node reported dropping (its uplink queue was full)",
    ),
    (
        "audio_agent_duplicate_batches",
        "Batches from the node the collector already held (resends), acknowledged and dropped",
    ),
];

/// Name and help of each per-node restart counter, in the order of [`Metrics::set_restarts`].
const RESTART_COUNTERS: [(&str, &str); 2] = [
    (
        "audio_agent_restarts",
        "Agent processes on the node replaced by another (a new epoch in its batches)",
    ),
    (
        "audio_agent_lost_at_restart_sightings",
        "Sightings replaced agents on the node took and never delivered, as far as their batches told",
    ),
];

/// Name and help of each per-node gauge, in the order of [`NodeValues::gauges`].
const GAUGES: [(&str, &str); 2] = [
    (
        "audio_node_clock_offset_seconds",
        "The collector's clock minus the node's monotonic clock, as the node's clock model estimates it",
    ),
    (
        "audio_node_clock_bound_seconds",
        "Error bound of the node's clock model mapping its stamps onto the collector's clock",
    ),
];

/// Counted per reason only: a label with the node a refused request claimed would make a series
/// per invented name.
const REFUSED: (&str, &str) = (
    "audio_collector_refused_requests",
    "Clock exchanges and batches the collector refused: node_mismatch (the node claimed is not the client certificate's), node_limit (a node beyond --max-nodes)",
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
    /// Not quiet at the last [`Inner::forget_quiet`].
    shown: bool,
}

/// BTreeMaps: the exposition is in a stable order, which keeps scrapes diffable.
struct Inner {
    hops: BTreeMap<HopLabels, Hop>,
    nodes: BTreeMap<String, NodeStats>,
    /// Per reason.
    refused: BTreeMap<&'static str, u64>,
    /// Per node: restarts, sightings lost at restarts.
    restarts: BTreeMap<String, [u64; 2]>,
    quality: MatchCounters,
    forget_after_ns: u64,
    /// When next to drop quiet hops while observing.
    next_sweep_ns: u64,
}

impl Inner {
    fn quiet(&self, since_ns: u64, now_ns: u64) -> bool {
        now_ns.saturating_sub(since_ns) >= self.forget_after_ns
    }

    fn forget_quiet(&mut self, now_ns: u64) {
        let mut hops = std::mem::take(&mut self.hops);
        hops.retain(|_, hop| !self.quiet(hop.last_ns, now_ns));
        self.hops = hops;
        let forget_after_ns = self.forget_after_ns;
        for node in self.nodes.values_mut() {
            node.shown = now_ns.saturating_sub(node.changed_ns) < forget_after_ns;
        }
    }
}

/// The collector's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    /// These metrics and the process's own (`endpoints::registry`).
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(agent::stats::Retention::default().forget_after)
    }
}

impl Metrics {
    /// Metrics that drop a series after `forget_after` without news.
    pub fn new(forget_after: Duration) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            hops: BTreeMap::new(),
            nodes: BTreeMap::new(),
            refused: BTreeMap::new(),
            restarts: BTreeMap::new(),
            quality: MatchCounters::default(),
            forget_after_ns: u64::try_from(forget_after.as_nanos()).unwrap_or(u64::MAX),
            next_sweep_ns: 0,
        }));
        let mut registry = crate::endpoints::registry();
        registry.register_collector(Box::new(Exposition(inner.clone())));
        Self {
            inner,
            registry: Arc::new(registry),
        }
    }

    /// What GET /metrics serves.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// One hop of one moment: its latency and the error bound of that latency (0 within a node).
    pub fn observe_hop(&self, labels: &HopLabels, latency_ns: i64, bound_ns: u64) {
        self.observe_hop_at(labels, latency_ns, bound_ns, monotonic_ns());
    }

    fn observe_hop_at(&self, labels: &HopLabels, latency_ns: i64, bound_ns: u64, now_ns: u64) {
        let mut inner = self.inner.lock().unwrap();
        // Also without the collector's sweeps (tests, a collector stuck in its report).
        if now_ns >= inner.next_sweep_ns {
            inner.forget_quiet(now_ns);
            inner.next_sweep_ns = now_ns.saturating_add(inner.forget_after_ns / 10);
        }
        let hop = inner.hops.entry(labels.clone()).or_insert_with(|| Hop {
            histograms: std::array::from_fn(|_| {
                Histogram::new(BUCKETS_NS.iter().map(|&ns| seconds(ns as f64)))
            }),
            last_ns: now_ns,
        });
        hop.last_ns = hop.last_ns.max(now_ns);
        let [latency, bound] = &hop.histograms;
        latency.observe(seconds(latency_ns.max(0) as f64));
        bound.observe(seconds(bound_ns as f64));
    }

    /// Drops the series that went quiet: call often (their memory is freed only then).
    pub fn forget_quiet(&self) {
        self.inner.lock().unwrap().forget_quiet(monotonic_ns());
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
                stats.values = values;
                stats.changed_ns = now_ns;
                stats.shown = true;
            }
            None => {
                inner.nodes.insert(
                    node.to_string(),
                    NodeStats {
                        values,
                        changed_ns: now_ns,
                        shown: true,
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

    /// The matcher's counts of what it could not turn into hops.
    pub fn set_quality(&self, counters: MatchCounters) {
        self.inner.lock().unwrap().quality = counters;
    }

    /// Everything, as GET /metrics serves it.
    pub fn render(&self) -> String {
        crate::endpoints::render(&self.registry)
    }

    #[cfg(test)]
    fn render_at(&self, now_ns: u64) -> String {
        self.inner.lock().unwrap().forget_quiet(now_ns);
        self.render()
    }
}

/// The metrics above, encoded at each scrape.
struct Exposition(Arc<Mutex<Inner>>);

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("collector metrics")
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let inner = self.0.lock().unwrap();
        for (i, (name, help)) in HISTOGRAMS.iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, hop) in &inner.hops {
                hop.histograms[i].encode(family.encode_family(labels)?)?;
            }
        }
        let nodes: Vec<(&String, &NodeValues)> = inner
            .nodes
            .iter()
            .filter(|(_, n)| n.shown)
            .map(|(name, n)| (name, &n.values))
            .collect();
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (node, values) in &nodes {
                ConstCounter::new(values.counters[i])
                    .encode(family.encode_family(&[("node", node.as_str())])?)?;
            }
        }
        for (i, (name, help)) in RESTART_COUNTERS.iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (node, counters) in &inner.restarts {
                ConstCounter::new(counters[i])
                    .encode(family.encode_family(&[("node", node.as_str())])?)?;
            }
        }
        for (i, (name, help)) in GAUGES.iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (node, values) in &nodes {
                if let Some(v) = values.gauges[i] {
                    ConstGauge::new(v).encode(family.encode_family(&[("node", node.as_str())])?)?;
                }
            }
        }
        let (name, help) = REFUSED;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (reason, n) in &inner.refused {
            ConstCounter::new(*n).encode(family.encode_family(&[("reason", *reason)])?)?;
        }
        let q = inner.quality;
        encode_one(
            &mut encoder,
            "audio_collector_unmatched_moments",
            "Moments whose signature the collector saw once only: no hop",
            ConstCounter::new(q.unmatched),
        )?;
        let mut family = encoder.encode_descriptor(
            "audio_collector_refused_sightings",
            "Sightings the matcher left out: repeat (the moment seen twice on one flow within the window), ambiguous (a write whose feeding read could not be told apart), opaque (a moment out of an unseen stretch that several learned entries could have fed)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("repeat", q.refused_repeats),
            ("ambiguous", q.refused_ambiguous),
            ("opaque", q.refused_opaque),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        encode_one(
            &mut encoder,
            "audio_collector_unpaired_sightings",
            "Sightings on file descriptors with no known other end (files, closed descriptors)",
            ConstCounter::new(q.unpaired),
        )?;
        encode_one(
            &mut encoder,
            "audio_collector_opaque_emerged_moments",
            "Moments that reappeared after a stretch no probe sees (TLS of a stack without uprobes)",
            ConstCounter::new(q.opaque_emerged),
        )?;
        encode_one(
            &mut encoder,
            "audio_collector_opaque_matched_moments",
            "Of those, the moments reported as one opaque hop from where they were last seen",
            ConstCounter::new(q.opaque_matched),
        )
    }
}

fn seconds(ns: f64) -> f64 {
    ns / 1e9
}

#[cfg(test)]
mod tests;
