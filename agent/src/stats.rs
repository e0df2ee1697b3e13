//! Per-hop latency statistics: count, p50, p90, p99, max, and across nodes the largest
//! clock-alignment bound of the hop's records.

use crate::schema::HopRecord;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Default)]
pub struct HopStats {
    hops: BTreeMap<(String, String), (Vec<i64>, Option<u64>)>,
}

/// The nearest-rank `q`-quantile of an ascending slice.
pub fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl HopStats {
    pub fn add(&mut self, r: &HopRecord) {
        let (latencies, bound) = self.hops.entry((r.from.who(), r.to.who())).or_default();
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

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted = [10, 20, 30, 40];
        assert_eq!(percentile(&sorted, 0.5), 20);
        assert_eq!(percentile(&sorted, 0.51), 30);
        assert_eq!(percentile(&sorted, 0.99), 40);
        assert_eq!(percentile(&sorted, 0.0), 10);
        assert_eq!(percentile::<u64>(&[], 0.99), 0);
    }
}
