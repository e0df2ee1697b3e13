//! Per-hop latency statistics in bounded memory: per hop, the count of records since start,
//! and over a recent window (the last minute by default) the p50, p90, p99 and max latency and,
//! across nodes, the largest clock-alignment bound. A hop with no record for a while (ten
//! minutes by default) is forgotten: it leaves the table and its memory is freed.

mod latencies;
mod recent;

use crate::clock::monotonic_ns;
use crate::schema::HopRecord;
use comfy_table::{presets, CellAlignment, Table};
use recent::Recent;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Slots of the recent window: it spans between 5/6 of its length and its length.
const SLOTS: usize = 6;

/// How long the statistics look back, and when they forget a quiet hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// The window of the percentiles.
    pub window: Duration,
    /// A hop with no record for this long is forgotten.
    pub forget_after: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            forget_after: Duration::from_secs(600),
        }
    }
}

struct Hop {
    /// Records since the hop was first seen (or last forgotten).
    count: u64,
    recent: Recent,
    last_ns: u64,
}

pub struct HopStats {
    retention: Retention,
    hops: BTreeMap<(String, String), Hop>,
    /// When next to look for quiet hops.
    next_sweep_ns: u64,
}

impl Default for HopStats {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

/// The nearest-rank `q`-quantile of an ascending slice.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl HopStats {
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            hops: BTreeMap::new(),
            next_sweep_ns: 0,
        }
    }

    pub fn add(&mut self, r: &HopRecord) {
        self.add_at(r, monotonic_ns());
    }

    fn add_at(&mut self, r: &HopRecord, now_ns: u64) {
        let slot_ns = ns(self.retention.window) / SLOTS as u64;
        if now_ns >= self.next_sweep_ns {
            let forget_ns = ns(self.retention.forget_after);
            self.hops
                .retain(|_, hop| now_ns.saturating_sub(hop.last_ns) < forget_ns);
            // Often enough that a quiet hop is forgotten within a slot of its time.
            self.next_sweep_ns = now_ns.saturating_add(slot_ns.max(1));
        }
        let hop = self
            .hops
            .entry((r.from.who(), r.to.who()))
            .or_insert_with(|| Hop {
                count: 0,
                recent: Recent::new(slot_ns, SLOTS),
                last_ns: now_ns,
            });
        hop.count += 1;
        hop.last_ns = hop.last_ns.max(now_ns);
        hop.recent.record(now_ns, r.latency_ns, r.bound_ns);
    }

    /// The table, latencies in µs, dated on the wall clock.
    pub fn table(&self) -> String {
        self.table_at(monotonic_ns(), SystemTime::now())
    }

    fn table_at(&self, now_ns: u64, now: SystemTime) -> String {
        let mut table = Table::new();
        table.load_style(presets::NOTHING).set_header([
            "from", "", "to", "count", "n", "p50 µs", "p90 µs", "p99 µs", "max µs", "± µs",
        ]);
        let forget_ns = ns(self.retention.forget_after);
        for ((from, to), hop) in &self.hops {
            if now_ns.saturating_sub(hop.last_ns) >= forget_ns {
                continue;
            }
            let recent = hop.recent.summary(now_ns);
            let us = |q: f64| {
                recent
                    .latencies
                    .quantile(q)
                    .map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1e3))
            };
            table.add_row([
                from.clone(),
                "→".into(),
                to.clone(),
                hop.count.to_string(),
                recent.latencies.count().to_string(),
                us(0.5),
                us(0.9),
                us(0.99),
                us(1.0),
                // One clock on one node: no alignment error to add.
                recent
                    .bound_ns
                    .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e3)),
            ]);
        }
        for column in table.column_iter_mut().skip(3) {
            column.set_cell_alignment(CellAlignment::Right);
        }
        format!(
            "hops at {}: count since start; n, percentiles, max and ± over the last {} s\n{}\n",
            humantime::format_rfc3339_millis(now),
            self.retention.window.as_secs_f64(),
            table.trim_fmt()
        )
    }
}

#[cfg(test)]
mod tests;
