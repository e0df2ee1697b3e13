//! The collector: clock exchanges answered with its own monotonic clock; each agent process's
//! batches taken once (`delivery`: a resend of a batch it holds is acknowledged and dropped);
//! each node's clock model fed with the exchanges that ride with the batches; every sighting
//! mapped onto the collector's clock with its error bound, then matched across nodes (phase 2's
//! hop rules) once its window has closed, opaque hops through the sockets each node's latest
//! snapshot says are opaque. Acknowledgements say how far the windows have closed
//! over each agent process's batches: the agent keeps the rest for the next collector.

use crate::admission::Admission;
use crate::clock::{ClockModel, Exchange as ClockExchange};
use crate::delivery::{Epoch, Origin};
use crate::matcher::{CrossNode, NodeSight};
use crate::proto::collector_server::{Collector, CollectorServer};
use crate::proto::{Ack, Batch, NodeSighting, SyncReply, SyncRequest};
use agent::clock::monotonic_ns;
use agent::pipeline::Matched;
use agent::schema::HopRecord;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Clock window and slices of every node's model.
const CLOCK_WINDOW_NS: u64 = 30_000_000_000;
const CLOCK_SLICES: usize = 16;
/// A moment's sightings must fall within this window (on the collector's clock).
pub const MATCH_WINDOW: Duration = Duration::from_secs(1);
/// How late a sighting may reach the collector (batching, resends) and still be matched.
pub const LATENESS: Duration = Duration::from_secs(2);
/// An agent silent this long is gone: hops it has not been told of are reported all the same
/// (it will not send their sightings to another collector).
const GONE_AFTER_NS: u64 = 1_000_000_000;
/// A replaced agent process quiet this long is done: a batch of its would be a minute late.
const RETIRE_AFTER_NS: u64 = 60_000_000_000;

/// A sighting as the collector holds it: the node's, and its time on the collector's clock.
#[derive(Clone, Debug)]
pub struct Received {
    pub node: String,
    pub sighting: NodeSighting,
    /// On arrival; `None` while the node's clock model could not map yet.
    pub mapped: Option<(u64, u64)>,
}

pub struct Node {
    pub index: u32,
    pub name: Arc<str>,
    /// The node's recent agent processes in the order they appeared; the last is the current
    /// one. An epoch's index (in `Origin`, `Held`) counts from the node's first: the `retired`
    /// first ones are folded into `past`.
    epochs: VecDeque<Epoch>,
    retired: u32,
    past: Past,
    /// Sightings that arrived before the node's clock model could map them.
    backlog: Vec<(NodeSighting, Origin)>,
}

/// What retired epochs left behind: their counts.
#[derive(Default)]
struct Past {
    received: u64,
    duplicates: u64,
    lost: u64,
    undelivered: u64,
}

impl Node {
    fn new(index: u32, name: &str) -> Self {
        Self {
            index,
            name: name.into(),
            epochs: VecDeque::new(),
            retired: 0,
            past: Past::default(),
            backlog: Vec::new(),
        }
    }

    fn epoch(&self, index: u32) -> Option<&Epoch> {
        self.epochs.get(index.checked_sub(self.retired)? as usize)
    }

    fn epoch_mut(&mut self, index: u32) -> Option<&mut Epoch> {
        self.epochs
            .get_mut(index.checked_sub(self.retired)? as usize)
    }

    /// The index of the epoch `id`, added if new.
    fn epoch_index(&mut self, id: u64) -> u32 {
        let at = match self.epochs.iter().position(|e| e.id == id) {
            Some(at) => at,
            None => {
                self.epochs.push_back(Epoch::new(id));
                self.epochs.len() - 1
            }
        };
        self.retired + at as u32
    }

    /// Folds into `past` the replaced epochs that are done: all matched, no held hops waiting
    /// for them, and quiet long enough that a late batch of theirs is not to be expected. So a
    /// node restarted every day keeps a few epochs, not one per restart.
    fn retire_done(&mut self, now_ns: u64, held: &VecDeque<Held>) {
        while self.epochs.len() > 1 {
            let (front, index) = (&self.epochs[0], (self.index, self.retired));
            let quiet = now_ns.saturating_sub(front.heard_ns) > RETIRE_AFTER_NS;
            if !front.all_matched() || !quiet || held.iter().any(|h| h.epochs.contains(&index)) {
                return;
            }
            let e = self.epochs.pop_front().expect("checked");
            self.past.received += e.received;
            self.past.duplicates += e.duplicates;
            self.past.lost = self.past.lost.saturating_add(e.lost());
            self.past.undelivered = self.past.undelivered.saturating_add(e.undelivered());
            self.retired += 1;
        }
    }

    /// Sightings taken from the node.
    pub fn sightings(&self) -> u64 {
        self.past.received + self.epochs.iter().map(|e| e.received).sum::<u64>()
    }

    /// Sightings the node's agents reported dropping (their queues were full). Saturating,
    /// as every sum of what agents report: a number on the wire can be anything.
    pub fn lost(&self) -> u64 {
        self.epochs
            .iter()
            .map(Epoch::lost)
            .fold(self.past.lost, u64::saturating_add)
    }

    pub fn duplicates(&self) -> u64 {
        self.past.duplicates + self.epochs.iter().map(|e| e.duplicates).sum::<u64>()
    }

    /// Agent processes replaced by another (a restart).
    pub fn restarts(&self) -> u64 {
        u64::from(self.retired) + self.epochs.len().saturating_sub(1) as u64
    }

    /// Sightings replaced agents took and never delivered, as far as their batches told.
    pub fn lost_at_restart(&self) -> u64 {
        let replaced = self.epochs.len().saturating_sub(1);
        self.epochs
            .iter()
            .take(replaced)
            .map(Epoch::undelivered)
            .fold(self.past.undelivered, u64::saturating_add)
    }
}

/// Hops of one close, held until every agent whose sightings they used has been told those
/// sightings are matched: a collector that crashed before telling it reported none of them,
/// and the next one matches them again.
struct Held {
    close: u64,
    records: Vec<HopRecord>,
    /// (node index, epoch index).
    epochs: Vec<(u32, u32)>,
}

pub struct State {
    pub nodes: HashMap<String, Node>,
    /// Closes that matched something, and their hops not reported yet.
    closes: u64,
    held: VecDeque<Held>,
    /// Every sighting taken, when kept (tests), mapped as it arrived.
    pub received: Option<Vec<Received>>,
    /// The matcher, which holds every node's clock model.
    pub matching: Matched<CrossNode>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            nodes: HashMap::new(),
            closes: 0,
            held: Default::default(),
            received: None,
            matching: Matched::new(MATCH_WINDOW),
        }
    }
}

impl State {
    fn admit(&mut self, node: &str, sightings: Vec<(NodeSighting, Origin)>) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if let Some(kept) = &mut self.received {
            let clock = &self.matching.matcher.clocks[n.index as usize];
            kept.extend(sightings.iter().map(|(s, _)| Received {
                node: node.to_string(),
                sighting: s.clone(),
                mapped: clock.map(s.t_ns),
            }));
        }
        n.backlog.extend(sightings);
        for (wire, origin) in std::mem::take(&mut n.backlog) {
            let mut s = NodeSight {
                node: (n.index, n.name.clone()),
                wire,
                mapped_ns: 0,
                bound_ns: 0,
                rate: 1.0,
                origin,
            };
            if !self.matching.matcher.map(&mut s) {
                n.backlog.push((s.wire, origin));
                continue;
            }
            self.matching.push(s);
        }
    }

    /// Tells each sighting's epoch that it left the window, and holds the hops of this close
    /// until those epochs have been told.
    fn hold(&mut self, records: Vec<HopRecord>) {
        let matched = std::mem::take(&mut self.matching.matcher.matched);
        if matched.is_empty() {
            return;
        }
        self.closes += 1;
        let mut by_index: Vec<&mut Node> = self.nodes.values_mut().collect();
        by_index.sort_by_key(|n| n.index);
        let mut epochs = Vec::new();
        for (node, o) in matched {
            if let Some(e) = by_index[node as usize].epoch_mut(o.epoch) {
                e.matched(o.seq, o.index);
            }
            epochs.push((node, o.epoch));
        }
        epochs.sort_unstable();
        epochs.dedup();
        self.held.push_back(Held {
            close: self.closes,
            records,
            epochs,
        });
    }

    /// The held hops whose agents have all been told (or are gone), in order; all of them
    /// with `now_ns` `None`.
    fn release(&mut self, now_ns: Option<u64>) -> Vec<HopRecord> {
        let mut by_index: Vec<&Node> = self.nodes.values().collect();
        by_index.sort_by_key(|n| n.index);
        let told = |h: &Held| {
            h.epochs.iter().all(|&(node, epoch)| {
                let Some(e) = by_index[node as usize].epoch(epoch) else {
                    return true; // retired: long gone
                };
                let gone = now_ns.is_none_or(|t| t.saturating_sub(e.heard_ns) > GONE_AFTER_NS);
                e.told >= h.close || gone
            })
        };
        let mut out = Vec::new();
        while self.held.front().is_some_and(told) {
            out.extend(self.held.pop_front().expect("checked").records);
        }
        out
    }

    /// Collector clock minus the node's at its latest exchange, and the bound.
    pub fn clock_offset(&self, node: &Node) -> Option<(i64, u64)> {
        self.matching.matcher.clocks[node.index as usize].latest_offset()
    }
}

#[derive(Clone)]
pub struct Service {
    pub state: Arc<Mutex<State>>,
    /// Woken when an agent has been told of matched sightings: their hops can be reported.
    pub told: Arc<tokio::sync::Notify>,
    /// This collector process, for agents to tell it from the one before (random).
    pub instance: u64,
    /// Test only: hold every batch this long before taking it (a slow collector).
    pub ack_delay: Duration,
    /// Which nodes may send: checked before a request touches `state`.
    pub admission: Admission,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            told: Arc::default(),
            instance: crate::delivery::random_id(),
            ack_delay: Duration::ZERO,
            admission: Admission::default(),
        }
    }
}

impl Service {
    /// A collector that also keeps every sighting it took (tests).
    pub fn keeping_sightings() -> Self {
        let service = Self::default();
        service.state.lock().unwrap().received = Some(Vec::new());
        service
    }

    /// The hops of moments whose window closed by `now_ns` less the lateness allowed (every
    /// open one with `None`), as far as their agents have been told (see [`Service::released`]).
    pub fn close_due(&self, now_ns: Option<u64>) -> Vec<HopRecord> {
        let mut out = Vec::new();
        let due = now_ns.map(|t| t.saturating_sub(LATENESS.as_nanos() as u64));
        let mut state = self.state.lock().unwrap();
        state.matching.close_due(due, &mut out);
        state.hold(out);
        state.release(now_ns)
    }

    /// The hops of moments closed earlier whose agents have been told since (call when
    /// [`Service::told`] wakes): reported at once, so that a crash between telling and
    /// reporting is unlikely.
    pub fn released(&self) -> Vec<HopRecord> {
        self.state.lock().unwrap().release(Some(monotonic_ns()))
    }

    /// Per node: sightings taken, lost and duplicate batches, agent restarts and what the
    /// replaced agents never delivered, the clock's offset (collector minus node) and bound at
    /// the latest exchange; then the matcher's counters and the requests refused.
    pub fn health(&self) -> String {
        let state = self.state.lock().unwrap();
        let mut nodes: Vec<&Node> = state.nodes.values().collect();
        nodes.sort_by_key(|n| n.index);
        let mut line = String::new();
        for n in nodes {
            let clock = match state.clock_offset(n) {
                Some((offset, bound)) => format!(
                    "offset={:.3}ms±{:.1}µs drift={:.1}ppm",
                    offset as f64 / 1e6,
                    bound as f64 / 1e3,
                    state.matching.matcher.clocks[n.index as usize]
                        .drift()
                        .unwrap_or(0.0)
                        * 1e6
                ),
                None => "clock=unknown".into(),
            };
            line += &format!(
                "{}: sightings={} lost={} duplicate_batches={} restarts={} lost_at_restart={} \
                 {clock} | ",
                n.name,
                n.sightings(),
                n.lost(),
                n.duplicates(),
                n.restarts(),
                n.lost_at_restart()
            );
        }
        line += &state.matching.matcher.hops.counters.to_string();
        line += " | refused:";
        for (refusal, n) in self.admission.refused() {
            line += &format!(" {}={n}", refusal.reason());
        }
        line
    }
}

#[tonic::async_trait]
impl Collector for Service {
    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<SyncReply>, Status> {
        let t2 = monotonic_ns();
        // Between t2 and t3: the exchange does not count the check in its round trip.
        self.admission.check(&request, &request.get_ref().node)?;
        Ok(Response::new(SyncReply {
            t2,
            t3: monotonic_ns(),
            instance: self.instance,
        }))
    }

    async fn send(&self, request: Request<Batch>) -> Result<Response<Ack>, Status> {
        self.admission.check(&request, &request.get_ref().node)?;
        let mut batch = request.into_inner();
        if batch.collector != self.instance {
            // Sent to the collector before this one, which may have taken batches this one has
            // not: the agent asks again (Sync) and sends everything it kept.
            return Err(Status::failed_precondition(
                "addressed to another collector instance",
            ));
        }
        if !self.ack_delay.is_zero() {
            tokio::time::sleep(self.ack_delay).await;
        }
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let index = state.nodes.len() as u32;
        let node = state
            .nodes
            .entry(batch.node.clone())
            .or_insert_with(|| Node::new(index, &batch.node));
        let clocks = &mut state.matching.matcher.clocks;
        if clocks.len() <= node.index as usize {
            clocks.push(ClockModel::new(CLOCK_WINDOW_NS, CLOCK_SLICES));
        }
        let clock = &mut clocks[node.index as usize];
        let now_ns = monotonic_ns();
        node.retire_done(now_ns, &state.held);
        let at = node.epoch_index(batch.epoch);
        let node_index = node.index;
        let epoch = node.epoch_mut(at).expect("just found or added");
        epoch.heard_ns = now_ns;
        // Whatever batch carries it, a resend included: only the version says it is newer. It
        // goes in before the batch's sightings, which may run through those sockets.
        let opaque = batch.opaque.take();
        if let Some(opaque) = opaque.filter(|o| o.version > epoch.opaque_version) {
            epoch.opaque_version = opaque.version;
            let holdings = opaque
                .sockets
                .into_iter()
                .map(|s| ((node_index, s.pid), s.link))
                .collect();
            let links = &mut state.matching.matcher.hops.opaque_links;
            links.set(node_index, holdings);
        }
        if let Some(to_match) = epoch.take(&batch) {
            for e in &batch.exchanges {
                clock.add(ClockExchange {
                    t1: e.t1,
                    t2: e.t2,
                    t3: e.t3,
                    t4: e.t4,
                });
            }
            let mut sightings = batch.sightings;
            let admitted = to_match
                .into_iter()
                .map(|index| {
                    let origin = Origin {
                        epoch: at,
                        seq: batch.seq,
                        index,
                    };
                    (std::mem::take(&mut sightings[index as usize]), origin)
                })
                .collect();
            state.admit(&batch.node, admitted);
        }
        let closes = state.closes;
        let node = state.nodes.get_mut(&batch.node).expect("added");
        let epoch = node
            .epoch_mut(at)
            .expect("not retired: retirement runs before");
        let ack = epoch.ack(batch.seq, self.instance);
        if epoch.told < closes {
            epoch.told = closes;
            self.told.notify_one();
        }
        Ok(Response::new(ack))
    }
}

/// Serves `service` on `addr` until `shutdown` resolves; with `tls`, only to agents whose
/// certificate its CA signed, each for the node its certificate names (`admission`).
pub async fn serve(
    service: Service,
    addr: SocketAddr,
    tls: Option<crate::mtls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    serve_on(service, agent::cli::listen(addr)?, tls, shutdown).await
}

/// As [`serve`], on a socket bound before (so that a busy address fails before anything else
/// starts).
pub async fn serve_on(
    service: Service,
    listener: std::net::TcpListener,
    tls: Option<crate::mtls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls.into())?;
    }
    let incoming = tonic::transport::server::TcpIncoming::from_listener(
        tokio::net::TcpListener::from_std(listener)?,
        true,
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    server
        .add_service(CollectorServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Exchange;

    fn sighting(pid: u32, write: bool, t_ns: u64) -> NodeSighting {
        NodeSighting {
            signature: 77,
            t_ns,
            pid,
            fd: 3,
            write,
            link: "n pipe 9".into(),
            flow_birth_ns: 1,
            ..Default::default()
        }
    }

    /// A batch of node "n" to `service`, with two exchanges that map its clock as is.
    fn batch(service: &Service, epoch: u64, seq: u64, sightings: Vec<NodeSighting>) -> Batch {
        let at = |t| Exchange {
            t1: t,
            t2: t,
            t3: t,
            t4: t,
        };
        Batch {
            node: "n".into(),
            seq,
            epoch,
            taken: seq * 2,
            collector: service.instance,
            exchanges: vec![at(10), at(20)],
            sightings,
            ..Default::default()
        }
    }

    async fn send(service: &Service, b: Batch) -> Result<Ack, Status> {
        service.send(Request::new(b)).await.map(|a| a.into_inner())
    }

    #[tokio::test]
    async fn hops_are_reported_once_the_agent_is_told_their_sightings_are_matched() {
        let service = Service::default();
        let pair = vec![sighting(1, true, 1_000), sighting(2, false, 2_000)];
        let ack = send(&service, batch(&service, 5, 1, pair.clone()))
            .await
            .unwrap();
        assert_eq!((ack.seq, ack.closed_through), (1, 0));
        // Due long ago, closed, but held: the agent does not know yet.
        assert!(service.close_due(Some(10_000_000_000)).is_empty());
        let ack = send(&service, batch(&service, 5, 2, Vec::new()))
            .await
            .unwrap();
        assert_eq!(ack.closed_through, 2, "told");
        assert_eq!(service.released().len(), 1, "the transit hop, once told");
        // A resend of batch 1 is a duplicate; the same seq from a restarted agent is new.
        send(&service, batch(&service, 5, 1, pair.clone()))
            .await
            .unwrap();
        let ack = send(&service, batch(&service, 6, 1, pair)).await.unwrap();
        assert_eq!(ack.closed_through, 0);
        let health = service.health();
        assert!(health.contains("sightings=4 lost=0 duplicate_batches=1 restarts=1"));
        // Epoch 5 said it took 4 sightings by batch 2 and delivered 2 of them.
        assert!(health.contains("lost_at_restart=2"), "{health}");
    }

    /// A node restarted many times keeps only the epochs that may still matter, and its
    /// counts as if it kept them all.
    #[tokio::test]
    async fn replaced_epochs_that_are_done_are_folded_into_the_node_counts() {
        let service = Service::default();
        for epoch in 1..=5 {
            let mut pair = vec![sighting(1, true, 1_000), sighting(2, false, 2_000)];
            // A moment of its own per agent process, far enough apart to be a group each.
            for s in &mut pair {
                s.signature = epoch;
                s.t_ns += epoch * 10_000_000_000;
            }
            send(&service, batch(&service, epoch, 1, pair))
                .await
                .unwrap();
            send(&service, batch(&service, epoch, 1, Vec::new()))
                .await
                .unwrap();
        }
        let before = service.health();
        assert!(before.contains("sightings=10 lost=0 duplicate_batches=5 restarts=4"));
        // Epochs 1-4 took 2 sightings each of the 2 they said they took: none undelivered.
        assert!(before.contains("lost_at_restart=0"), "{before}");
        let mut guard = service.state.lock().unwrap();
        let state = &mut *guard;
        let node = state.nodes.get_mut("n").unwrap();
        let soon = monotonic_ns() + RETIRE_AFTER_NS / 2;
        node.retire_done(soon, &state.held);
        assert_eq!(node.epochs.len(), 5, "heard from a moment ago");
        let later = monotonic_ns() + 2 * RETIRE_AFTER_NS;
        node.retire_done(later, &state.held);
        assert_eq!(
            node.epochs.len(),
            5,
            "their sightings are still in the window"
        );
        let mut hops = Vec::new();
        state.matching.close_due(None, &mut hops);
        state.hold(hops);
        let node = state.nodes.get_mut("n").unwrap();
        node.retire_done(later, &state.held);
        assert_eq!(
            node.epochs.len(),
            5,
            "their hops wait for the agents to be told"
        );
        assert_eq!(state.release(None).len(), 5);
        let node = state.nodes.get_mut("n").unwrap();
        node.retire_done(later, &state.held);
        assert_eq!(node.epochs.len(), 1, "only the current epoch is left");
        assert_eq!(node.epoch(4).map(|e| e.id), Some(5));
        assert!(node.epoch(0).is_none());
        drop(guard);
        assert_eq!(service.health(), before);
    }

    #[tokio::test]
    async fn a_batch_for_another_collector_instance_is_refused() {
        let service = Service::default();
        let mut b = batch(&service, 5, 1, vec![sighting(1, true, 1_000)]);
        b.collector += 1;
        let refused = send(&service, b).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(service.state.lock().unwrap().nodes.is_empty());
    }
}
