//! A distribution of signed latencies in ns, to 3 significant digits, in a fixed amount of
//! memory (HdrHistogram).
//!
//! A cross-node hop can measure below 0: its two ends were mapped onto one clock with errors
//! of opposite sign. The table shows such a latency as it was measured, sign and all, so that
//! the error it carries stays visible next to the ± column. Negative latencies are kept as
//! magnitudes in a second histogram: an offset would put every small latency far from 0, where
//! 3 significant digits are much coarser than 1 µs, and clamping to 0 (what the Prometheus
//! histograms do, as their `_sum` must not fall) would hide the error.

use hdrhistogram::Histogram;

/// Significant digits kept: a latency is reported within 0.1 % of itself, exactly below 2 µs.
const SIGNIFICANT_DIGITS: u8 = 3;
/// A latency beyond this many ns counts as this much. No hop can be that long: its two ends
/// lie within one matching window.
pub const HIGHEST_NS: u64 = 60_000_000_000;

/// u32 counts: one distribution covers one slot of a recent window, far below 4 × 10⁹ records.
type Counts = Histogram<u32>;

fn histogram() -> Counts {
    Counts::new_with_bounds(1, HIGHEST_NS, SIGNIFICANT_DIGITS).expect("constant bounds are valid")
}

pub struct Latencies {
    /// Latencies ≥ 0.
    at_or_above_zero: Counts,
    /// Magnitudes of latencies < 0; allocated at the first (a hop within one node has none).
    below_zero: Option<Counts>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            at_or_above_zero: histogram(),
            below_zero: None,
        }
    }
}

impl Latencies {
    pub fn record(&mut self, ns: i64) {
        if ns >= 0 {
            self.at_or_above_zero.saturating_record(ns as u64);
        } else {
            self.below_zero
                .get_or_insert_with(histogram)
                .saturating_record(ns.unsigned_abs());
        }
    }

    pub fn count(&self) -> u64 {
        self.at_or_above_zero.len() + self.below_zero.as_ref().map_or(0, |h| h.len())
    }

    /// Forgets every latency, keeping the memory.
    pub fn clear(&mut self) {
        self.at_or_above_zero.reset();
        if let Some(h) = &mut self.below_zero {
            h.reset();
        }
    }

    /// Adds `other`'s latencies to these.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: nothing can be out of range.
        let _ = self.at_or_above_zero.add(&other.at_or_above_zero);
        if let Some(theirs) = &other.below_zero {
            let _ = self.below_zero.get_or_insert_with(histogram).add(theirs);
        }
    }

    /// The nearest-rank `q`-quantile (as [`super::percentile`] on the sorted latencies), within
    /// the histogram's precision; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let below = self.below_zero.as_ref().map_or(0, |h| h.len());
        match &self.below_zero {
            // The rank-th lowest latency is the (below − rank + 1)-th lowest magnitude.
            Some(h) if rank <= below => {
                let magnitude = value_at_rank(h, below - rank + 1);
                Some(-(h.lowest_equivalent(magnitude) as i64))
            }
            _ => Some(value_at_rank(&self.at_or_above_zero, rank - below) as i64),
        }
    }
}

/// The `rank`-th lowest value (from 1), as the highest value of its bucket.
fn value_at_rank(h: &Counts, rank: u64) -> u64 {
    let mut seen = 0;
    for v in h.iter_recorded() {
        seen += v.count_since_last_iteration();
        if seen >= rank {
            return v.value_iterated_to();
        }
    }
    h.max()
}
