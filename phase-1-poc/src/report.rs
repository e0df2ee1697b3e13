//! Per-hop latency statistics: count, p50, p90, p99, max, and across nodes the largest
//! clock-alignment bound of the hop's records.

use harness::schema::{HopRecord, Sighting};
use harness::score::percentile;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Default)]
pub struct HopStats {
    hops: BTreeMap<(String, String), (Vec<i64>, Option<u64>)>,
}

/// A pod where it is known (phase 4), else a process; prefixed by its node when there are several.
fn label(s: &Sighting) -> String {
    let who = match &s.pod {
        Some(p) => format!("{}/{}", p.namespace, p.pod),
        None => format!("{}[{}]", s.comm, s.pid),
    };
    match &s.node {
        Some(node) => format!("{node}/{who}"),
        None => who,
    }
}

impl HopStats {
    pub fn add(&mut self, r: &HopRecord) {
        let (latencies, bound) = self.hops.entry((label(&r.from), label(&r.to))).or_default();
        latencies.push(r.latency_ns);
        if let Some(b) = r.bound_ns {
            *bound = Some(bound.unwrap_or(0).max(b));
        }
    }

    /// The table, latencies in µs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>24} → {:<24} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "from", "to", "count", "p50 µs", "p90 µs", "p99 µs", "max µs", "± µs"
        );
        for ((from, to), (lat, bound)) in &self.hops {
            let mut v = lat.clone();
            v.sort_unstable();
            let us = |x: i64| x as f64 / 1e3;
            let _ = writeln!(
                out,
                "{from:>24} → {to:<24} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
                v.len(),
                us(percentile(&v, 0.5)),
                us(percentile(&v, 0.9)),
                us(percentile(&v, 0.99)),
                us(*v.last().unwrap_or(&0)),
                // One clock on one node: no alignment error to add.
                bound.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1e3))
            );
        }
        out
    }
}
