//! A hop's latencies over a recent window, as rotating slots: each slot holds the records that
//! arrived during one slot's length of time, and the window is the current slot and the ones
//! before it, so it spans between (slots − 1) and slots slot lengths.

use super::latencies::Latencies;

struct Slot {
    /// Which slot length of time (now / slot length) the slot holds.
    epoch: u64,
    latencies: Latencies,
    /// Largest alignment bound of the slot's records (none within one node).
    bound_ns: Option<u64>,
}

pub struct Recent {
    slot_ns: u64,
    /// Allocated as they are first used; then reused.
    slots: Vec<Slot>,
    count: usize,
}

/// What the window holds.
#[derive(Default)]
pub struct Summary {
    pub latencies: Latencies,
    pub bound_ns: Option<u64>,
}

impl Recent {
    pub fn new(slot_ns: u64, count: usize) -> Self {
        Self {
            slot_ns: slot_ns.max(1),
            slots: Vec::new(),
            count: count.max(1),
        }
    }

    pub fn record(&mut self, now_ns: u64, latency_ns: i64, bound_ns: Option<u64>) {
        let epoch = now_ns / self.slot_ns;
        let index = (epoch % self.count as u64) as usize;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || Slot {
                epoch,
                latencies: Latencies::default(),
                bound_ns: None,
            });
        }
        let slot = &mut self.slots[index];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.latencies.clear();
            slot.bound_ns = None;
        }
        slot.latencies.record(latency_ns);
        if let Some(b) = bound_ns {
            slot.bound_ns = Some(slot.bound_ns.unwrap_or(0).max(b));
        }
    }

    /// The slots of the window ending now, merged.
    pub fn summary(&self, now_ns: u64) -> Summary {
        let epoch = now_ns / self.slot_ns;
        let mut out = Summary::default();
        for slot in &self.slots {
            // A record stamped after `now_ns` (another thread's clock read) still counts.
            if slot.epoch + (self.count as u64) > epoch {
                out.latencies.merge(&slot.latencies);
                out.bound_ns = out.bound_ns.max(slot.bound_ns);
            }
        }
        out
    }
}
