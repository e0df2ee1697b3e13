//! Per-hop latency statistics: count, p50, p90, p99, max.

use harness::schema::{HopRecord, Sighting};
use harness::score::percentile;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Default)]
pub struct HopStats {
    hops: BTreeMap<(String, String), Vec<i64>>,
}

fn label(s: &Sighting) -> String {
    format!("{}[{}]", s.comm, s.pid)
}

impl HopStats {
    pub fn add(&mut self, r: &HopRecord) {
        self.hops
            .entry((label(&r.from), label(&r.to)))
            .or_default()
            .push(r.latency_ns);
    }

    /// The table, latencies in µs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>24} → {:<24} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "from", "to", "count", "p50 µs", "p90 µs", "p99 µs", "max µs"
        );
        for ((from, to), lat) in &self.hops {
            let mut v = lat.clone();
            v.sort_unstable();
            let us = |x: i64| x as f64 / 1e3;
            let _ = writeln!(
                out,
                "{from:>24} → {to:<24} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                v.len(),
                us(percentile(&v, 0.5)),
                us(percentile(&v, 0.9)),
                us(percentile(&v, 0.99)),
                us(*v.last().unwrap_or(&0))
            );
        }
        out
    }
}
