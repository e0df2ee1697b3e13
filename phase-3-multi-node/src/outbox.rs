//! The batches an agent process (an epoch) has made and the collector still needs: those not
//! delivered yet, and those delivered whose sightings' matching windows have not all closed (a
//! collector crash would lose them, so they go again to the next collector). Bounded: when
//! full, the oldest delivered batch goes first (the collector holds it), then the oldest
//! undelivered one, counted lost; never the batch being sent. The node's latest opaque sockets
//! ride with the next batch made whenever the collector may lack them.

use crate::proto::{Ack, Batch, Exchange, NodeSighting, OpaqueSocket, OpaqueSockets};
use std::collections::VecDeque;

/// What the uplink did, for the agent's health line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    pub batches_sent: u64,
    pub resends: u64,
    pub reconnects: u64,
    /// Connects that failed: collector unreachable, or refusing this agent (see `last_error`).
    pub connect_failures: u64,
    /// Sightings dropped undelivered because the queue was full.
    pub lost: u64,
    /// Sightings delivered but let go before their windows closed because the queue was full:
    /// a collector crash would lose them uncounted.
    pub released: u64,
    /// Collector instances that answered after another (a collector restarted or replaced).
    pub collector_changes: u64,
}

impl std::ops::Add for UplinkCounters {
    type Output = Self;

    /// Several uplinks' counters (one per collector replica) as one.
    fn add(self, o: Self) -> Self {
        Self {
            batches_sent: self.batches_sent + o.batches_sent,
            resends: self.resends + o.resends,
            reconnects: self.reconnects + o.reconnects,
            connect_failures: self.connect_failures + o.connect_failures,
            lost: self.lost + o.lost,
            released: self.released + o.released,
            collector_changes: self.collector_changes + o.collector_changes,
        }
    }
}

pub struct Outbox {
    node: String,
    epoch: u64,
    capacity: usize,
    /// Oldest first, by seq.
    kept: VecDeque<Batch>,
    next_seq: u64,
    /// Sightings put into batches so far.
    taken: u64,
    /// The collector instance batches go to (0 until one answered), and the highest seq it
    /// holds.
    collector: u64,
    delivered_through: u64,
    /// The batch being sent: it may still arrive, so it is never the one dropped.
    in_flight: Option<u64>,
    highest_sent: u64,
    /// Exchanges with `collector` that wait for the next batch.
    exchanges: Vec<Exchange>,
    /// The latest snapshot of the node's opaque sockets (version 0: none yet), and the version
    /// put into a batch that `collector` holds or will be sent.
    opaque: OpaqueSockets,
    opaque_given: u64,
    pub counters: UplinkCounters,
}

impl Outbox {
    pub fn new(node: &str, epoch: u64, capacity: usize) -> Self {
        Self {
            node: node.to_string(),
            epoch,
            capacity: capacity.max(1),
            kept: VecDeque::new(),
            next_seq: 1,
            taken: 0,
            collector: 0,
            delivered_through: 0,
            in_flight: None,
            highest_sent: 0,
            exchanges: Vec::new(),
            opaque: OpaqueSockets::default(),
            opaque_given: 0,
            counters: UplinkCounters::default(),
        }
    }

    pub fn push(&mut self, sightings: Vec<NodeSighting>) {
        if self.kept.len() >= self.capacity {
            let at = (self.kept.iter())
                .position(|b| Some(b.seq) != self.in_flight)
                .unwrap_or(0);
            if let Some(dropped) = self.kept.remove(at) {
                let n = dropped.sightings.len() as u64;
                match dropped.seq <= self.delivered_through {
                    true => self.counters.released += n,
                    false => {
                        self.counters.lost += n;
                        // Its snapshot never arrives: the next batch carries the latest.
                        if dropped.opaque.is_some() {
                            self.opaque_given = 0;
                        }
                    }
                }
            }
        }
        self.taken += sightings.len() as u64;
        let opaque = (self.opaque.version > self.opaque_given).then(|| self.opaque.clone());
        self.opaque_given = self.opaque.version;
        self.kept.push_back(Batch {
            node: self.node.clone(),
            seq: self.next_seq,
            sightings,
            epoch: self.epoch,
            taken: self.taken,
            opaque,
            ..Default::default()
        });
        self.next_seq += 1;
    }

    /// The node's opaque sockets now: the next batch made carries them.
    pub fn set_opaque(&mut self, sockets: Vec<OpaqueSocket>) {
        self.opaque = OpaqueSockets {
            version: self.opaque.version + 1,
            sockets,
        };
    }

    /// The collector instance that answers now. Another than before holds nothing this epoch
    /// sent, and its clock is another: every batch kept goes to it again, without exchanges,
    /// and the next batch made carries the opaque sockets (those in batches let go are lost to
    /// it).
    pub fn answered_by(&mut self, instance: u64) -> bool {
        if instance == self.collector {
            return false;
        }
        if self.collector != 0 {
            self.counters.collector_changes += 1;
        }
        self.collector = instance;
        self.delivered_through = 0;
        self.opaque_given = 0;
        self.exchanges.clear();
        for b in &mut self.kept {
            b.exchanges.clear();
        }
        true
    }

    pub fn exchanged(&mut self, e: Exchange) {
        self.exchanges.push(e);
    }

    /// The oldest batch the collector does not hold, with the exchanges waiting and the count
    /// lost so far; `None` when it holds them all.
    pub fn to_send(&mut self) -> Option<Batch> {
        let delivered = self.delivered_through;
        let b = self.kept.iter_mut().find(|b| b.seq > delivered)?;
        b.lost = self.counters.lost;
        b.collector = self.collector;
        // Kept in the batch: they go again with it if this send fails.
        b.exchanges.append(&mut self.exchanges);
        self.in_flight = Some(b.seq);
        Some(b.clone())
    }

    /// The send of batch `seq` ended with `ack` (`None`: failed). True if the collector holds
    /// it; the batches it has matched through are let go.
    pub fn sent(&mut self, seq: u64, ack: Option<&Ack>) -> bool {
        self.in_flight = None;
        if seq <= self.highest_sent {
            self.counters.resends += 1;
        }
        self.highest_sent = self.highest_sent.max(seq);
        let Some(ack) = ack.filter(|a| a.seq == seq && a.instance == self.collector) else {
            return false;
        };
        self.counters.batches_sent += 1;
        self.delivered_through = self.delivered_through.max(seq);
        while self
            .kept
            .front()
            .is_some_and(|b| b.seq <= ack.closed_through)
        {
            self.kept.pop_front();
        }
        for m in &ack.partly {
            if let Some(b) = self.kept.iter_mut().find(|b| b.seq == m.seq) {
                b.matched.clone_from(&m.index);
            }
        }
        true
    }

    /// Empties the queue for another collector to take over: the sightings of every batch kept
    /// but those the collector matched already. The batch being sent goes too; its ack, if any
    /// comes, finds nothing to let go. The opaque sockets go with the next batch made, in case
    /// the batch carrying them never arrived.
    pub fn take_unmatched(&mut self) -> Vec<NodeSighting> {
        self.opaque_given = 0;
        let mut out = Vec::new();
        for b in self.kept.drain(..) {
            out.extend(
                (b.sightings.into_iter().enumerate())
                    .filter(|(i, _)| !b.matched.contains(&(*i as u32)))
                    .map(|(_, s)| s),
            );
        }
        out
    }

    /// Batches the collector does not hold yet.
    pub fn undelivered(&self) -> usize {
        let delivered = self.delivered_through;
        self.kept.iter().filter(|b| b.seq > delivered).count()
    }

    /// Batches kept: undelivered, or delivered with windows still open.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Matched;

    fn sightings(n: usize) -> Vec<NodeSighting> {
        vec![NodeSighting::default(); n]
    }

    fn ack(seq: u64, instance: u64, closed_through: u64) -> Ack {
        Ack {
            seq,
            instance,
            closed_through,
            partly: Vec::new(),
        }
    }

    /// Sends every batch the collector lacks, acknowledged as `ack` says.
    fn send_all(o: &mut Outbox, mut ack: impl FnMut(u64) -> Ack) -> Vec<u64> {
        let mut sent = Vec::new();
        while let Some(b) = o.to_send() {
            assert!(o.sent(b.seq, Some(&ack(b.seq))));
            sent.push(b.seq);
        }
        sent
    }

    #[test]
    fn delivered_batches_are_kept_until_their_windows_close() {
        let mut o = Outbox::new("n", 5, 100);
        o.answered_by(1);
        for n in [2, 3, 1] {
            o.push(sightings(n));
        }
        assert_eq!(send_all(&mut o, |seq| ack(seq, 1, 0)), vec![1, 2, 3]);
        assert_eq!((o.undelivered(), o.kept()), (0, 3));
        o.push(sightings(1));
        let b = o.to_send().unwrap();
        assert_eq!((b.seq, b.epoch, b.taken, b.collector), (4, 5, 7, 1));
        assert!(o.sent(4, Some(&ack(4, 1, 2))));
        assert_eq!(o.kept(), 2, "batches 3 and 4 wait for their windows");
        assert!(
            o.to_send().is_none(),
            "nothing to send: the collector holds them"
        );
    }

    #[test]
    fn a_new_collector_gets_every_batch_kept_without_the_old_exchanges() {
        let mut o = Outbox::new("n", 5, 100);
        o.answered_by(1);
        for _ in 0..3 {
            o.push(sightings(2));
        }
        let b = o.to_send().unwrap();
        assert!(o.sent(b.seq, Some(&ack(b.seq, 1, 0))));
        // Rides with batch 2, which the collector had not matched when it went.
        o.exchanged(Exchange::default());
        send_all(&mut o, |seq| {
            let mut a = ack(seq, 1, 1);
            a.partly = vec![Matched {
                seq: 3,
                index: vec![1],
            }];
            a
        });
        assert_eq!(o.kept(), 2);
        assert!(!o.answered_by(1), "the same collector");
        assert!(o.answered_by(2));
        let b = o.to_send().unwrap();
        assert_eq!((b.seq, b.collector), (2, 2));
        assert!(
            b.exchanges.is_empty(),
            "made with the other collector's clock"
        );
        assert!(o.sent(2, Some(&ack(2, 2, 0))));
        let b = o.to_send().unwrap();
        assert_eq!((b.seq, b.matched.clone()), (3, vec![1]));
        // An Ack from another instance than the one addressed is not one.
        assert!(!o.sent(3, Some(&ack(3, 1, 3))));
        assert_eq!(o.counters.collector_changes, 1);
    }

    #[test]
    fn a_full_queue_lets_delivered_batches_go_first_then_counts_losses() {
        let mut o = Outbox::new("n", 5, 3);
        o.answered_by(1);
        o.push(sightings(1));
        o.push(sightings(2));
        send_all(&mut o, |seq| ack(seq, 1, 0));
        o.push(sightings(4));
        let sending = o.to_send().unwrap();
        o.push(sightings(8));
        assert_eq!((o.counters.released, o.counters.lost), (1, 0));
        o.push(sightings(16));
        o.push(sightings(32));
        // Batches 1 and 2 (delivered) went first, then batch 4: batch 3 is being sent.
        assert_eq!((o.counters.released, o.counters.lost), (3, 8));
        assert!(o.sent(sending.seq, Some(&ack(3, 1, 0))));
        assert_eq!(send_all(&mut o, |seq| ack(seq, 1, 0)), vec![5, 6]);
        assert_eq!(o.to_send(), None);
        o.push(Vec::new());
        assert_eq!(
            o.to_send().unwrap().lost,
            8,
            "the count travels with later batches"
        );
    }

    /// The opaque sockets ride with the next batch made, once per version; again whenever the
    /// collector may lack them: another instance answers (the batch that carried them was let
    /// go), the batch carrying them is dropped undelivered, or the queue is taken over.
    #[test]
    fn opaque_sockets_go_again_to_a_collector_that_may_lack_them() {
        let mut o = Outbox::new("n", 5, 3);
        o.answered_by(1);
        // The version of the snapshot the batch made now carries.
        let next = |o: &mut Outbox| {
            o.push(Vec::new());
            o.kept.back().unwrap().opaque.as_ref().map(|s| s.version)
        };
        assert_eq!(next(&mut o), None, "none yet");
        o.set_opaque(vec![OpaqueSocket {
            pid: 7,
            link: "tcp a b".into(),
        }]);
        assert_eq!(next(&mut o), Some(1));
        assert_eq!(next(&mut o), None, "already in a batch");
        send_all(&mut o, |seq| ack(seq, 1, seq));
        assert_eq!(o.kept(), 0, "the batch carrying it let go");
        assert!(o.answered_by(2));
        assert_eq!(next(&mut o), Some(1), "a new collector holds none");
        assert_eq!(next(&mut o), None);
        send_all(&mut o, |seq| ack(seq, 2, seq));
        o.set_opaque(Vec::new());
        assert_eq!(next(&mut o), Some(2));
        assert_eq!(next(&mut o), None);
        assert_eq!(next(&mut o), None);
        assert_eq!(next(&mut o), Some(2), "the batch carrying it was dropped");
        assert_eq!(o.counters.lost, 0, "empty batches");
        o.take_unmatched();
        assert_eq!(next(&mut o), Some(2), "taken over with the queue");
        assert_eq!(next(&mut o), None);
    }

    #[test]
    fn a_queue_taken_over_gives_every_sighting_not_matched_yet() {
        let mut o = Outbox::new("n", 5, 100);
        o.answered_by(1);
        for n in [2, 3] {
            o.push(sightings(n));
        }
        send_all(&mut o, |seq| {
            let mut a = ack(seq, 1, 0);
            a.partly = vec![Matched {
                seq: 1,
                index: vec![0],
            }];
            a
        });
        o.push(sightings(4));
        assert_eq!(o.take_unmatched().len(), 1 + 3 + 4);
        assert_eq!((o.kept(), o.undelivered()), (0, 0));
        assert_eq!(o.to_send(), None);
        o.push(sightings(1));
        assert_eq!(
            o.to_send().unwrap().seq,
            4,
            "later batches go on from there"
        );
    }
}
