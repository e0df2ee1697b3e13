//! Phase 3 (in progress, issue 7): agents on several nodes, a collector that matches across
//! them, and cross-node clock alignment whose error bound travels with every hop. So far: the
//! clock alignment (`clock`), the agent's uplink to the collector (`uplink`: batched, bounded,
//! resent until acknowledged, losses counted) and the collector's receiving side (`collector`:
//! exactly-once per batch, every sighting mapped onto its clock with a bound). Cross-node
//! matching, metrics, mutual TLS, S9 and the docs page are still to come.

pub mod clock;
pub mod collector;
pub mod uplink;

/// The agent ↔ collector protocol (proto/collector.proto).
pub mod proto {
    tonic::include_proto!("collector");
}
