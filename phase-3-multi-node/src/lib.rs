//! Phase 3: an agent per node (`agent`: phase 2's kernel side, links resolved on the node,
//! sightings sharded by signature over the collector's replicas, `shards`, each shipped through
//! an `uplink`: batched, bounded, resent until acknowledged, losses
//! counted), and a collector (`collector`) that maps every node's clock onto its own with an
//! error bound (`clock`) and matches moments across nodes (`matcher`: phase 2's hop rules),
//! reporting through `outputs` (table, JSON lines, Prometheus `metrics`). Both serve their
//! metrics, /healthz and /readyz through `endpoints`. Agent and collector
//! can require each other's certificates (`mtls`); the collector admits a node only as its
//! certificate names it, and a bounded number of nodes (`admission`). `cli` holds the two
//! processes; with the `demo` feature, `run` traces a harness scenario with an agent process
//! per node.

pub mod admission;
pub mod agent;
pub mod agent_metrics;
pub mod cli;
pub mod clock;
pub mod collector;
pub mod delivery;
pub mod endpoints;
pub mod matcher;
pub mod metrics;
pub mod mtls;
pub mod outbox;
pub mod outputs;
#[cfg(feature = "demo")]
pub mod run;
pub mod shards;
pub mod uplink;

/// The agent ↔ collector protocol (proto/collector.proto).
pub mod proto {
    tonic::include_proto!("collector");
}
