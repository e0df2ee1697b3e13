//! The node agent: phase 2's kernel side on this node, each event's link resolved here (only
//! this node can read its /proc), and the sightings shipped to the collector through the
//! uplink. It matches nothing itself: a moment's other sightings may be on other nodes.

use crate::agent_metrics::Snapshot;
use crate::proto::{NodeSighting, PodRef};
use crate::uplink::{Uplink, UplinkConfig};
use agent::pipeline::Kernel;
use agent::schema::Dir;
use anyhow::Result;
use phase_2_straddle::event::Phase2Event;
use phase_2_straddle::links::{Link, Seen};
use phase_2_straddle::tracer::Tracer;
use std::time::{Duration, Instant};

/// How often the ring buffer is drained into a batch.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// A batch goes out at least this often, empty or not: the clock exchanges ride with it.
const HEARTBEAT: Duration = Duration::from_millis(250);

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
    pub uplink: Uplink,
    node: String,
    batch: Vec<NodeSighting>,
    last_push: Instant,
    pub sightings: u64,
}

impl NodeAgent {
    /// Needs a tokio runtime for the uplink's task.
    pub fn new(tracer: Tracer, uplink: UplinkConfig) -> Self {
        Self {
            tracer,
            annotate: None,
            node: uplink.node.clone(),
            uplink: Uplink::start(uplink),
            batch: Vec::new(),
            last_push: Instant::now(),
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

    /// Drains the kernel's events into the uplink's queue; never waits for the collector.
    pub fn tick(&mut self) {
        let mut seen = Vec::new();
        Kernel::drain(&mut self.tracer, &mut |s| seen.push(s));
        for s in seen {
            let s = self.sighting(s);
            self.batch.push(s);
        }
        if !self.batch.is_empty() || self.last_push.elapsed() >= HEARTBEAT {
            self.sightings += self.batch.len() as u64;
            self.uplink.push(std::mem::take(&mut self.batch));
            self.last_push = Instant::now();
        }
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
            uplink: self.uplink.counters(),
            pending_batches: self.uplink.pending() as u64,
        })
    }

    /// The kernel's counters and the uplink's, one line; then why the collector could not be
    /// reached or refused this agent, while that lasts.
    pub fn health(&self) -> Result<String> {
        let c = self.uplink.counters();
        let mut line = format!(
            "{} | uplink: sightings={} batches_sent={} resends={} reconnects={} \
             collector_changes={} lost={} released={} pending={} kept={}",
            self.tracer.health()?,
            self.sightings,
            c.batches_sent,
            c.resends,
            c.reconnects,
            c.collector_changes,
            c.lost,
            c.released,
            self.uplink.pending(),
            self.uplink.kept()
        );
        if let Some(error) = self.uplink.last_error() {
            line += &format!(" | last_error: {error}");
        }
        Ok(line)
    }
}
