//! The agent's own metrics, served on its `--metrics` address: what its health line says, as
//! series. The agent's loop owns the tracer, so it takes a [`Snapshot`] every 200 ms and a
//! scrape encodes the latest one (no series before the eBPF programs are attached). Each series
//! carries the agent's `node` label.

use crate::endpoints::encode_one;
use crate::outbox::UplinkCounters;
use crate::shards::ShardCounters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, Mutex};

/// The agent's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The kernel side's per-CPU counters, summed, by name (scan's, then the data path's).
    pub kernel: Vec<(&'static str, u64)>,
    pub flows_live: u64,
    pub batch_flush_failures: u64,
    pub recursion_misses: u64,
    pub tcp_links_untracked: u64,
    /// Processes probed and probes failed, while the TLS probes are on.
    pub tls_probes: Option<(u64, u64)>,
    /// Go processes probed, refused for their Go version, and probes failed, while they are on.
    pub go_tls_probes: Option<(u64, u64, u64)>,
    /// Per program, the instructions the verifier processed (when the kernel says).
    pub verified_instructions: Vec<(String, u32)>,
    /// Processes traced now.
    pub targets: u64,
    /// Sightings put in the uplink's queue.
    pub sightings: u64,
    /// Summed over the uplinks (one per collector replica).
    pub uplink: UplinkCounters,
    pub shards: ShardCounters,
    pub replicas_live: u64,
    /// Batches not acknowledged by the collector yet.
    pub pending_batches: u64,
}

/// Shared by the agent's loop, which replaces the snapshot, and the metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct AgentMetrics(Arc<Mutex<Option<Snapshot>>>);

impl AgentMetrics {
    pub fn update(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap() = Some(snapshot);
    }
}

impl Collector for AgentMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(s) = self.0.lock().unwrap().clone() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "audio_agent_kernel_events",
            "The eBPF programs' per-CPU counters summed, by name: drops (moments lost, the ring buffer full), truncated, candidate_overflow, read_errors, unscanned_nested, broken_flows, unseen_calls, tls_unattributed... (bytes counts bytes scanned)",
            None,
            MetricType::Counter,
        )?;
        for (name, value) in &s.kernel {
            ConstCounter::new(*value).encode(family.encode_family(&[("event", *name)])?)?;
        }
        let counters: [(&str, &str, u64); 13] = [
            (
                "audio_agent_batch_flush_failures",
                "Runs of the program that flushes a CPU's batch of call records the kernel refused",
                s.batch_flush_failures,
            ),
            (
                "audio_agent_recursion_misses",
                "Runs of the eBPF programs the kernel skipped (recursion protection)",
                s.recursion_misses,
            ),
            (
                "audio_agent_tcp_links_untracked",
                "TCP links conntrack did not know, named by their own socket's addresses",
                s.tcp_links_untracked,
            ),
            (
                "audio_agent_uplink_sightings",
                "Sightings the agent queued for the collector",
                s.sightings,
            ),
            (
                "audio_agent_uplink_lost_sightings",
                "Sightings dropped undelivered because the uplink's queue was full",
                s.uplink.lost,
            ),
            (
                "audio_agent_uplink_released_sightings",
                "Sightings delivered but let go before their windows closed (queue full): a collector crash would lose them",
                s.uplink.released,
            ),
            (
                "audio_agent_uplink_batches_sent",
                "Batches the collector acknowledged",
                s.uplink.batches_sent,
            ),
            (
                "audio_agent_uplink_resends",
                "Batches sent again (to a restarted collector, or unacknowledged)",
                s.uplink.resends,
            ),
            (
                "audio_agent_uplink_reconnects",
                "Connections to the collector made again after one was lost",
                s.uplink.reconnects,
            ),
            (
                "audio_agent_uplink_connect_failures",
                "Connects to the collector that failed: unreachable, or refusing this agent",
                s.uplink.connect_failures,
            ),
            (
                "audio_agent_uplink_collector_changes",
                "Collector instances that answered after another (a collector restarted or replaced)",
                s.uplink.collector_changes,
            ),
            (
                "audio_agent_uplink_replicas_lost",
                "Times a collector replica was unreachable long enough that its share went to the others",
                s.shards.replicas_lost,
            ),
            (
                "audio_agent_uplink_rerouted_sightings",
                "Sightings a lost collector replica had not matched, handed to the replicas owning them now",
                s.shards.rerouted,
            ),
        ];
        for (name, help, value) in counters {
            encode_one(&mut encoder, name, help, ConstCounter::new(value))?;
        }
        let gauges: [(&str, &str, u64); 4] = [
            (
                "audio_agent_flows_live",
                "Flow states the kernel side holds now",
                s.flows_live,
            ),
            ("audio_agent_targets", "Processes traced now", s.targets),
            (
                "audio_agent_uplink_pending_batches",
                "Batches the collector has not acknowledged yet",
                s.pending_batches,
            ),
            (
                "audio_agent_uplink_replicas_live",
                "Collector replicas sightings are sharded over now",
                s.replicas_live,
            ),
        ];
        for (name, help, value) in gauges {
            encode_one(&mut encoder, name, help, ConstGauge::new(value))?;
        }
        if let Some((probed, failures)) = s.tls_probes {
            encode_one(
                &mut encoder,
                "audio_agent_tls_probed_processes",
                "Traced processes whose libssl the agent probed",
                ConstGauge::new(probed),
            )?;
            encode_one(
                &mut encoder,
                "audio_agent_tls_probe_failures",
                "Traced processes whose libssl could not be probed: their TLS traffic is seen only as ciphertext",
                ConstGauge::new(failures),
            )?;
        }
        if let Some((probed, unplaced, failures)) = s.go_tls_probes {
            for (name, help, value) in [
                (
                    "audio_agent_go_tls_probed_processes",
                    "Traced Go processes whose crypto/tls the agent probed",
                    probed,
                ),
                (
                    "audio_agent_go_tls_unplaced_processes",
                    "Traced Go processes with crypto/tls of a Go version the agent cannot place: their TLS traffic is seen only as ciphertext",
                    unplaced,
                ),
                (
                    "audio_agent_go_tls_probe_failures",
                    "Traced Go processes whose crypto/tls could not be probed",
                    failures,
                ),
            ] {
                encode_one(&mut encoder, name, help, ConstGauge::new(value))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "audio_agent_program_verified_instructions",
            "Instructions the kernel's verifier processed to load each eBPF program (the limit is 1 million)",
            None,
            MetricType::Gauge,
        )?;
        for (program, n) in &s.verified_instructions {
            ConstGauge::new(*n).encode(family.encode_family(&[("program", program.as_str())])?)?;
        }
        Ok(())
    }
}
