//! The hops that exist: consecutive observable points of each call's tree, keyed as a record
//! names them (pids and directions).

use super::index::CallTruthIndex;
use super::Observes;
use crate::truth::GroundTruth;
use agent::schema::Dir;
use agent::schema::HopRecord;
use std::collections::HashMap;

/// A hop's key: (from pid, from dir, to pid, to dir), what a record names.
pub(super) type HopKey = (u32, Dir, u32, Dir);

pub(super) fn key_of(r: &HopRecord) -> HopKey {
    (r.from.pid, r.from.dir, r.to.pid, r.to.dir)
}

/// One hop that exists: consecutive observable points of a call's tree.
pub(super) struct Hop {
    pub(super) call_idx: usize,
    pub(super) from: usize,
    pub(super) to: usize,
}

/// Every hop of every call, and the hops by key.
pub(super) struct Hops {
    pub(super) list: Vec<Hop>,
    by_key: HashMap<HopKey, Vec<usize>>,
    /// The same by key and call: with many calls through the same processes, a key has a hop
    /// per call, and a record is tried only on the calls that can have carried it.
    by_key_and_call: HashMap<(HopKey, usize), Vec<usize>>,
}

impl Hops {
    pub(super) fn build(gt: &GroundTruth, calls: &[CallTruthIndex], obs: Observes) -> Self {
        let mut list: Vec<Hop> = Vec::new();
        let mut by_key: HashMap<HopKey, Vec<usize>> = HashMap::new();
        for (ci, c) in calls.iter().enumerate() {
            for (from, to) in c.hops(obs) {
                let pid = |i: usize| gt.component(&c.points[i].component).map_or(0, |l| l.pid);
                let key = (pid(from), c.points[from].dir, pid(to), c.points[to].dir);
                by_key.entry(key).or_default().push(list.len());
                list.push(Hop {
                    call_idx: ci,
                    from,
                    to,
                });
            }
        }
        let mut by_key_and_call: HashMap<(HopKey, usize), Vec<usize>> = HashMap::new();
        for (key, hs) in &by_key {
            for &h in hs {
                by_key_and_call
                    .entry((*key, list[h].call_idx))
                    .or_default()
                    .push(h);
            }
        }
        Self {
            list,
            by_key,
            by_key_and_call,
        }
    }

    pub(super) fn exist(&self, key: &HopKey) -> bool {
        self.by_key.contains_key(key)
    }

    pub(super) fn of_key(&self, key: &HopKey) -> impl Iterator<Item = usize> + '_ {
        self.by_key.get(key).into_iter().flatten().copied()
    }

    pub(super) fn of_key_and_call(
        &self,
        key: HopKey,
        call_idx: usize,
    ) -> impl Iterator<Item = usize> + '_ {
        self.by_key_and_call
            .get(&(key, call_idx))
            .into_iter()
            .flatten()
            .copied()
    }
}
