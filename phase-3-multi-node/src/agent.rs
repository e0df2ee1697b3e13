//! The node agent: phase 2's kernel side on this node, each event's link resolved here (only
//! this node can read its /proc), and the sightings shipped to the collector (each to the
//! replica owning its signature, `shards`) through the uplinks, with the node's opaque sockets (to
//! every replica). It matches nothing itself: a moment's other sightings may be on other nodes.

use crate::agent_metrics::Snapshot;
use crate::proto::{NodeSighting, OpaqueSocket, PodRef};
use crate::shards::Shards;
use agent::pipeline::Kernel;
use agent::schema::Dir;
use anyhow::Result;
use phase_2_straddle::event::Phase2Event;
use phase_2_straddle::links::{Link, Observed, Seen};
use phase_2_straddle::tracer::Tracer;
use std::time::Duration;

/// How often the ring buffer is drained into a batch.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// The name both ends of a link give it. A TCP connection between two addresses that are not
/// loopback names itself the same on every node; anything else (pipes, unix sockets, loopback
/// TCP) exists on one node only and is qualified by it. Empty: no known other end.
pub fn link_name(node: &str, link: &Link) -> String {
    match link {
        Link::Tcp(a, b) if !a.ip().is_loopback() && !b.ip().is_loopback() => {
            format!("tcp {a} {b}")
        }
        Link::Unpaired(..) => String::new(),
        Link::Pipe(ino) => format!("{node} pipe {ino}"),
        Link::Unix(a, b) => format!("{node} unix {a} {b}"),
        Link::Tcp(a, b) => format!("{node} tcp {a} {b}"),
    }
}

/// Names the process of an event in Kubernetes terms (`AgentHooks::annotate`), when it can.
pub type Annotate = Box<dyn FnMut(&Phase2Event) -> Option<PodRef> + Send>;

pub struct NodeAgent {
    pub tracer: Tracer,
    pub annotate: Option<Annotate>,
    pub shards: Shards,
    node: String,
    pub sightings: u64,
}

impl NodeAgent {
    /// `shards`: the uplinks, started on a tokio runtime.
    pub fn new(tracer: Tracer, node: &str, shards: Shards) -> Self {
        Self {
            tracer,
            annotate: None,
            node: node.to_string(),
            shards,
            sightings: 0,
        }
    }

    fn sighting(&mut self, Seen { e, link }: Seen) -> NodeSighting {
        let pod = self.annotate.as_mut().and_then(|f| f(&e));
        NodeSighting {
            signature: e.signature,
            t_ns: e.call.t_ns,
            pid: e.call.tgid,
            comm: e.comm(),
            fd: e.call.fd,
            write: e.dir() == Dir::Write,
            pos: e.end,
            link: link_name(&self.node, &link),
            flow_birth_ns: e.call.flow_birth_ns,
            pod,
        }
    }

    /// Drains the kernel's events into the uplinks' queues; never waits for a collector.
    pub fn tick(&mut self) {
        let mut observed = Vec::new();
        Kernel::drain(&mut self.tracer, &mut |o| observed.push(o));
        let mut batch = Vec::new();
        for o in observed {
            match o {
                Observed::Moment(seen) => batch.push(self.sighting(seen)),
                Observed::OpaqueSockets(held) => {
                    let sockets = held
                        .into_iter()
                        .map(|(pid, link)| OpaqueSocket {
                            pid,
                            link: link_name(&self.node, &link),
                        })
                        .filter(|s| !s.link.is_empty())
                        .collect();
                    self.shards.set_opaque(sockets);
                }
            }
        }
        self.sightings += batch.len() as u64;
        self.shards.push(batch);
    }

    /// The kernel's counters and the uplink's, as the metrics endpoint serves them; `targets`:
    /// the processes traced now.
    pub fn snapshot(&self, targets: u64) -> Result<Snapshot> {
        let (scan, path) = self.tracer.counters()?;
        let kernel = [scan, path]
            .iter()
            .flat_map(|c| c.names.iter().copied().zip(c.values.iter().copied()))
            .collect();
        Ok(Snapshot {
            kernel,
            flows_live: self.tracer.live_flows()? as u64,
            batch_flush_failures: self.tracer.flush_failures(),
            recursion_misses: self.tracer.recursion_misses(),
            tcp_links_untracked: self.tracer.tcp_links_untracked(),
            tls_probes: self
                .tracer
                .tls_probes()
                .map(|(probed, failed)| (probed as u64, failed as u64)),
            go_tls_probes: self
                .tracer
                .go_tls_probes()
                .map(|(probed, unplaced, failed)| (probed as u64, unplaced as u64, failed as u64)),
            verified_instructions: self
                .tracer
                .verified_instructions()
                .into_iter()
                .filter_map(|(program, n)| Some((program, n?)))
                .collect(),
            targets,
            sightings: self.sightings,
            uplink: self.shards.uplink_counters(),
            shards: self.shards.counters,
            replicas_live: self.shards.members().0 as u64,
            pending_batches: self.shards.pending() as u64,
        })
    }

    /// The kernel's counters and the uplinks' (summed), one line; then why a collector could
    /// not be reached or refused this agent, while that lasts.
    pub fn health(&self) -> Result<String> {
        let c = self.shards.uplink_counters();
        let (live, replicas) = self.shards.members();
        let mut line = format!(
            "{} | uplink: sightings={} batches_sent={} resends={} reconnects={} \
             collector_changes={} lost={} released={} pending={} kept={} replicas={live}/{replicas} \
             replicas_lost={} rerouted={}",
            self.tracer.health()?,
            self.sightings,
            c.batches_sent,
            c.resends,
            c.reconnects,
            c.collector_changes,
            c.lost,
            c.released,
            self.shards.pending(),
            self.shards.kept(),
            self.shards.counters.replicas_lost,
            self.shards.counters.rerouted,
        );
        if let Some(error) = self.shards.last_error() {
            line += &format!(" | last_error: {error}");
        }
        Ok(line)
    }
}
