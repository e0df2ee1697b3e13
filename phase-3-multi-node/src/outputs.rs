//! Where the collector's hop records go: the live table, JSON lines, Prometheus metrics, and
//! (for tests and the demo's score) the records themselves.

use crate::collector::Service;
use crate::metrics::{HopLabels, Metrics};
use agent::schema::{self, HopRecord, Sighting};
use agent::stats::HopStats;
use anyhow::Result;
use std::io::Write;

#[derive(Default)]
pub struct Outputs {
    pub stats: HopStats,
    pub metrics: Metrics,
    pub json: Option<Box<dyn Write + Send>>,
    pub records: Option<Vec<HopRecord>>,
}

/// A hop between workloads where they are known (phase 4), else between process names.
fn labels(r: &HopRecord) -> HopLabels {
    let node = |s: &Sighting| s.node.clone().unwrap_or_default();
    let name = |s: &Sighting| {
        s.pod
            .as_ref()
            .map_or(s.comm.clone(), |p| p.workload.clone())
    };
    let namespace = |s: &Sighting| {
        s.pod
            .as_ref()
            .map(|p| p.namespace.clone())
            .unwrap_or_default()
    };
    HopLabels {
        source_node: node(&r.from),
        source: name(&r.from),
        source_namespace: namespace(&r.from),
        destination_node: node(&r.to),
        destination: name(&r.to),
        destination_namespace: namespace(&r.to),
        kind: r.kind.as_str(),
    }
}

impl Outputs {
    pub fn take(&mut self, records: Vec<HopRecord>) -> Result<()> {
        for r in &records {
            self.stats.add(r);
            self.metrics
                .observe_hop(&labels(r), r.latency_ns, r.bound_ns.unwrap_or(0));
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

    /// The nodes' counters and clocks, and the refusals, as the metrics show them.
    pub fn update_nodes(&self, service: &Service) {
        for (refusal, n) in service.admission.refused() {
            self.metrics.set_refused(refusal.reason(), n);
        }
        let state = service.state.lock().unwrap();
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
