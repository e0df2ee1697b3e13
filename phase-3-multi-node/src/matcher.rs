//! Phase 2's hop rules over sightings from several nodes. A process is (node, pid); a link is
//! the name both of its ends gave it; times are on the collector's clock, each with the bound
//! its node's clock mapping carries. A hop within one node is measured on that node's own
//! clock (µs-exact); a hop across nodes on the mapped clocks, with the sum of both bounds.
//!
//! Sightings are mapped twice: on arrival, to place them in the matching window, and again
//! when their window closes, seconds later, when exchanges after them are in. The second
//! mapping interpolates between exchanges instead of extrapolating past the latest one, which
//! is what makes the bound (and the error) small.

use crate::clock::ClockModel;
use crate::delivery::Origin;
use crate::proto::NodeSighting as Wire;
use agent::schema::{signed_difference, Dir, HopRecord, PodRef, Sighting};
use phase_2_straddle::matcher::{Hops, Sight};
use std::sync::Arc;

/// One sighting as the collector matches it.
#[derive(Clone, Debug)]
pub struct NodeSight {
    /// Index of the node in the collector's list, and its name.
    pub node: (u32, Arc<str>),
    pub wire: Wire,
    /// On the collector's clock, and how far off that can be.
    pub mapped_ns: u64,
    pub bound_ns: u64,
    /// The node's clock rate against the collector's (1 + drift).
    pub rate: f64,
    pub origin: Origin,
}

impl NodeSight {
    fn sighting(&self) -> Sighting {
        Sighting {
            pid: self.wire.pid,
            comm: self.wire.comm.clone(),
            fd: self.wire.fd,
            dir: self.dir(),
            t_ns: self.mapped_ns,
            pos: Some(self.wire.pos),
            node: Some(self.node.1.to_string()),
            node_t_ns: Some(self.wire.t_ns),
            pod: self.wire.pod.as_ref().map(|p| PodRef {
                namespace: p.namespace.clone(),
                pod: p.pod.clone(),
                container: p.container.clone(),
                workload: p.workload.clone(),
            }),
        }
    }
}

impl Sight for NodeSight {
    type Process = (u32, u32);
    type Link = String;
    fn process(&self) -> (u32, u32) {
        (self.node.0, self.wire.pid)
    }
    fn flow(&self) -> (i32, u64) {
        (self.wire.fd, self.wire.flow_birth_ns)
    }
    fn dir(&self) -> Dir {
        if self.wire.write {
            Dir::Write
        } else {
            Dir::Read
        }
    }
    fn t_ns(&self) -> u64 {
        self.mapped_ns
    }
    fn link(&self) -> &String {
        &self.wire.link
    }
    fn paired(&self) -> bool {
        !self.wire.link.is_empty()
    }
    /// Across nodes the order is known only within both bounds.
    fn may_precede(&self, read: &Self) -> bool {
        if self.node.0 == read.node.0 {
            return self.wire.t_ns <= read.wire.t_ns;
        }
        self.mapped_ns
            <= read
                .mapped_ns
                .saturating_add(self.bound_ns)
                .saturating_add(read.bound_ns)
    }
    fn hop(from: &Self, to: &Self) -> HopRecord {
        let mut hop = HopRecord::new(from.wire.signature, from.sighting(), to.sighting());
        if from.node.0 == to.node.0 {
            // The node's own clock, scaled to collector nanoseconds.
            let on_node = signed_difference(to.wire.t_ns, from.wire.t_ns);
            hop.latency_ns = (on_node as f64 / from.rate).round() as i64;
        } else {
            hop.bound_ns = Some(from.bound_ns.saturating_add(to.bound_ns));
        }
        hop
    }
}

/// The collector's matcher: every node's clock model, and the hop rules (nothing to resolve:
/// nodes named the links).
#[derive(Default)]
pub struct CrossNode {
    /// By node index.
    pub clocks: Vec<ClockModel>,
    pub hops: Hops<NodeSight>,
    /// Node index and origin of the sightings that left the window since the collector looked.
    pub matched: Vec<(u32, Origin)>,
}

impl CrossNode {
    /// Maps `s` with its node's clock as it is now; false while the model cannot map.
    pub fn map(&self, s: &mut NodeSight) -> bool {
        let clock = &self.clocks[s.node.0 as usize];
        let Some((mapped, bound)) = clock.map(s.wire.t_ns) else {
            return false;
        };
        (s.mapped_ns, s.bound_ns) = (mapped, bound);
        s.rate = 1.0 + clock.drift().unwrap_or(0.0);
        true
    }
}

impl agent::pipeline::Matching for CrossNode {
    type Event = NodeSight;
    type Seen = NodeSight;

    fn admit(&mut self, s: NodeSight) -> Option<(u64, u64, NodeSight)> {
        Some((s.wire.signature, s.mapped_ns, s))
    }

    fn close(&mut self, mut seen: Vec<NodeSight>, out: &mut Vec<HopRecord>) {
        for s in &mut seen {
            self.map(s);
            self.matched.push((s.node.0, s.origin));
        }
        self.hops.close(seen, out);
    }

    fn health(&self) -> String {
        self.hops.counters.to_string()
    }
}
