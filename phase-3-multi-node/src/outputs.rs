//! Where the collector's hop records go: the live table, JSON lines, Prometheus metrics, and
//! (for tests and the demo's score) the records themselves.

use crate::collector::Service;
use crate::metrics::{HopLabels, Metrics, Peer};
use agent::schema::{self, HopRecord, Sighting};
use agent::stats::HopStats;
use anyhow::Result;
use std::io::Write;

#[derive(Default)]
pub struct Outputs {
    pub stats: HopStats,
    pub metrics: Metrics,
    /// Hop series carry the nodes of their two sides.
    pub node_labels: bool,
    pub json: Option<Box<dyn Write + Send>>,
    pub records: Option<Vec<HopRecord>>,
}

/// A hop between workloads where they are known (phase 4), else between process names; with
/// their nodes only if `nodes`.
fn labels(r: &HopRecord, nodes: bool) -> HopLabels {
    let peer = |s: &Sighting| Peer {
        name: s
            .pod
            .as_ref()
            .map_or(s.comm.clone(), |p| p.workload.clone()),
        namespace: s
            .pod
            .as_ref()
            .map(|p| p.namespace.clone())
            .unwrap_or_default(),
        node: match nodes {
            true => s.node.clone().unwrap_or_default(),
            false => String::new(),
        },
    };
    HopLabels {
        src: peer(&r.from),
        dst: peer(&r.to),
        kind: r.kind.as_str(),
    }
}

impl Outputs {
    pub fn take(&mut self, records: Vec<HopRecord>) -> Result<()> {
        for r in &records {
            self.stats.add(r);
            self.metrics.observe_hop(
                &labels(r, self.node_labels),
                r.latency_ns,
                r.bound_ns.unwrap_or(0),
            );
        }
        if let Some(json) = &mut self.json {
            schema::write_jsonl(json, &records)?;
            json.flush()?;
        }
        if let Some(kept) = &mut self.records {
            kept.extend(records);
        }
        Ok(())
    }

    /// The nodes' counters and clocks, the refusals and the matcher's counts, as the metrics
    /// show them; drops the series gone quiet.
    pub fn update_nodes(&self, service: &Service) {
        self.metrics.forget_quiet();
        for (refusal, n) in service.admission.refused() {
            self.metrics.set_refused(refusal.reason(), n);
        }
        let state = service.state.lock().unwrap();
        self.metrics
            .set_quality(state.matching.matcher.hops.counters);
        for n in state.nodes.values() {
            let clock = state.clock_offset(n);
            self.metrics.set_node(
                &n.name,
                n.sightings(),
                n.lost(),
                n.duplicates(),
                clock.map(|c| c.0),
                clock.map(|c| c.1),
            );
            self.metrics
                .set_restarts(&n.name, n.restarts(), n.lost_at_restart());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::schema::{Dir, PodRef};

    /// A transit from a pod's workload on node-a to a plain process on node-b.
    fn record() -> HopRecord {
        let side = |node: &str, dir, pod: Option<PodRef>| Sighting {
            pid: 7,
            comm: "recorder".into(),
            fd: 3,
            dir,
            t_ns: 1_000,
            pos: None,
            node: Some(node.into()),
            node_t_ns: Some(1_000),
            pod,
        };
        let pod = PodRef {
            namespace: "voice".into(),
            pod: "mixer-5d8f-x2k4q".into(),
            container: "mixer".into(),
            workload: "mixer".into(),
        };
        HopRecord::new(
            1,
            side("node-a", Dir::Write, Some(pod)),
            side("node-b", Dir::Read, None),
        )
    }

    #[test]
    fn hops_name_workloads_and_their_nodes_only_when_asked() {
        for (node_labels, labels) in [
            (
                false,
                r#"k8s_src_owner_name="mixer",k8s_src_namespace="voice",dst_name="recorder",kind="transit""#,
            ),
            (
                true,
                r#"k8s_src_owner_name="mixer",k8s_src_namespace="voice",k8s_src_node_name="node-a",dst_name="recorder",dst_node="node-b",kind="transit""#,
            ),
        ] {
            let mut outputs = Outputs {
                node_labels,
                ..Outputs::default()
            };
            outputs.take(vec![record()]).unwrap();
            let text = outputs.metrics.render();
            let series = format!("audio_hop_latency_seconds_count{{{labels}}} 1");
            assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
        }
    }
}
