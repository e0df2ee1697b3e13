//! What the collector took from one agent process (an epoch of a node), and how much of it has
//! been matched. Batches are told apart by (epoch, seq); a batch is matched once every one of
//! its sightings left the matching window (its hops reported). The agent keeps each batch until
//! then (`closed_through`), so that a collector crash loses none of them; sightings matched in
//! batches past that point (`partly`) are not matched again by the next collector.

use crate::proto::{Ack, Batch, Matched};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

/// An id for this process (a collector instance, an agent's epoch): random, never 0 (which is
/// "not known yet" on the wire).
pub fn random_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(agent::clock::monotonic_ns());
    h.write_u32(std::process::id());
    h.finish().max(1)
}

/// Where a sighting came from: its epoch (index in its node's list), batch and place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub epoch: u32,
    pub seq: u64,
    pub index: u32,
}

/// One agent process of a node, as this collector saw it.
#[derive(Debug)]
pub struct Epoch {
    pub id: u64,
    last_seq: u64,
    /// Sightings the epoch reported taking (`Batch::taken`) and dropping (`Batch::lost`),
    /// latest and as of the first batch this collector saw: before that is none of its business.
    taken: (u64, u64),
    lost: (u64, u64),
    /// Sightings in the batches taken.
    pub received: u64,
    pub duplicates: u64,
    /// The latest close whose matched sightings the epoch's agent has been told of, and when
    /// (collector clock) it last sent a batch.
    pub told: u64,
    pub heard_ns: u64,
    /// The version of the latest snapshot of the node's opaque sockets taken from the epoch.
    pub opaque_version: u64,
    /// Batches taken with sightings still in the window: how many, and which are matched.
    open: BTreeMap<u64, Open>,
}

#[derive(Debug)]
struct Open {
    remaining: u32,
    matched: Vec<u32>,
}

impl Epoch {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            last_seq: 0,
            taken: (0, 0),
            lost: (0, 0),
            received: 0,
            duplicates: 0,
            told: 0,
            heard_ns: 0,
            opaque_version: 0,
            open: BTreeMap::new(),
        }
    }

    /// Takes `batch` unless it was taken before: then `None` (a resend). Otherwise the indexes
    /// of its sightings to match (those an earlier collector matched are left out).
    pub fn take(&mut self, batch: &Batch) -> Option<Vec<u32>> {
        if batch.seq <= self.last_seq {
            self.duplicates += 1;
            return None;
        }
        let n = batch.sightings.len() as u64;
        if self.last_seq == 0 {
            self.taken.1 = batch.taken.saturating_sub(n);
            self.lost.1 = batch.lost;
        }
        self.last_seq = batch.seq;
        self.taken.0 = self.taken.0.max(batch.taken);
        self.lost.0 = self.lost.0.max(batch.lost);
        self.received += n;
        let mut matched: Vec<u32> = batch
            .matched
            .iter()
            .copied()
            .filter(|&i| u64::from(i) < n)
            .collect();
        matched.sort_unstable();
        matched.dedup();
        let to_match: Vec<u32> = (0..n as u32)
            .filter(|i| matched.binary_search(i).is_err())
            .collect();
        if !to_match.is_empty() {
            let remaining = to_match.len() as u32;
            self.open.insert(batch.seq, Open { remaining, matched });
        }
        Some(to_match)
    }

    /// One sighting left the window.
    pub fn matched(&mut self, seq: u64, index: u32) {
        let Some(open) = self.open.get_mut(&seq) else {
            return;
        };
        open.remaining -= 1;
        open.matched.push(index);
        if open.remaining == 0 {
            self.open.remove(&seq);
        }
    }

    /// Every batch through this seq is matched.
    pub fn closed_through(&self) -> u64 {
        match self.open.keys().next() {
            Some(&first) => first - 1,
            None => self.last_seq,
        }
    }

    /// What to tell the agent after `seq`.
    pub fn ack(&self, seq: u64, instance: u64) -> Ack {
        Ack {
            seq,
            instance,
            closed_through: self.closed_through(),
            partly: self
                .open
                .iter()
                .filter(|(_, o)| !o.matched.is_empty())
                .map(|(&seq, o)| Matched {
                    seq,
                    index: o.matched.clone(),
                })
                .collect(),
        }
    }

    /// Every sighting taken is matched: nothing of the epoch is left in the window.
    pub fn all_matched(&self) -> bool {
        self.open.is_empty()
    }

    /// Sightings the epoch dropped from its full queue (cumulative, as it reported).
    pub fn lost(&self) -> u64 {
        self.lost.0
    }

    /// Sightings the epoch took since this collector first heard of it that neither arrived
    /// nor were reported dropped: what a replaced epoch never delivered.
    pub fn undelivered(&self) -> u64 {
        let taken = self.taken.0 - self.taken.1;
        let dropped = self.lost.0 - self.lost.1;
        taken.saturating_sub(self.received.saturating_add(dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeSighting;

    fn batch(seq: u64, n: usize, taken: u64, lost: u64) -> Batch {
        Batch {
            node: "n".into(),
            seq,
            sightings: vec![NodeSighting::default(); n],
            lost,
            taken,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_is_taken_once() {
        let mut e = Epoch::new(7);
        assert_eq!(e.take(&batch(1, 2, 2, 0)), Some(vec![0, 1]));
        assert_eq!(e.take(&batch(1, 2, 2, 0)), None);
        assert_eq!(e.take(&batch(3, 1, 3, 0)), Some(vec![0]));
        assert_eq!(
            e.take(&batch(2, 1, 3, 0)),
            None,
            "behind the latest: a resend"
        );
        assert_eq!((e.duplicates, e.received), (2, 3));
    }

    #[test]
    fn closed_through_waits_for_every_sighting_of_a_batch() {
        let mut e = Epoch::new(7);
        for seq in 1..=3 {
            e.take(&batch(seq, 2, seq * 2, 0));
        }
        assert_eq!(e.closed_through(), 0);
        e.matched(1, 1);
        e.matched(2, 0);
        e.matched(2, 1);
        // Batch 1 still has a sighting in the window: nothing is let go, batch 2 is partly told.
        assert_eq!(e.closed_through(), 0);
        e.matched(1, 0);
        let ack = e.ack(3, 9);
        assert_eq!((ack.seq, ack.instance, ack.closed_through), (3, 9, 2));
        assert!(ack.partly.is_empty());
        e.matched(3, 1);
        let ack = e.ack(3, 9);
        assert_eq!(ack.closed_through, 2);
        assert_eq!(
            ack.partly,
            vec![Matched {
                seq: 3,
                index: vec![1]
            }]
        );
        e.matched(3, 0);
        assert_eq!(e.closed_through(), 3);
        // An empty batch (a heartbeat) is matched at once.
        e.take(&batch(4, 0, 6, 0));
        assert_eq!(e.closed_through(), 4);
    }

    #[test]
    fn sightings_an_earlier_collector_matched_are_not_matched_again() {
        let mut e = Epoch::new(7);
        let mut b = batch(5, 3, 3, 0);
        b.matched = vec![2, 0, 9];
        assert_eq!(e.take(&b), Some(vec![1]));
        assert_eq!(e.ack(5, 1).partly[0].index, vec![0, 2]);
        e.matched(5, 1);
        assert_eq!(e.closed_through(), 5);
        b.seq = 6;
        b.matched = vec![0, 1, 2];
        assert_eq!(e.take(&b), Some(vec![]));
        assert_eq!(e.closed_through(), 6);
    }

    #[test]
    fn an_epoch_counts_what_it_took_and_never_delivered() {
        // First heard of at batch 10 (a collector that started late): the 90 sightings before it
        // are none of its business; of the 60 after, 20 were dropped, 30 arrived, and batch 12's 10
        // never did.
        let mut e = Epoch::new(7);
        e.take(&batch(10, 10, 100, 5));
        e.take(&batch(11, 20, 140, 25));
        e.take(&batch(13, 0, 150, 25));
        assert_eq!(e.lost(), 25);
        assert_eq!(e.received, 30);
        assert_eq!(e.undelivered(), 10);
    }
}
