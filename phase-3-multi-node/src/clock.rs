//! Cross-node clock alignment: an agent's `CLOCK_MONOTONIC` (the clock of its eBPF stamps)
//! mapped onto the collector's, from NTP-style four-timestamp exchanges, with an error bound
//! that holds for any path asymmetry as long as the drift is constant over the window.
//!
//! One exchange: the agent sends at t1 (its clock), the collector receives at t2 and replies
//! at t3 (its clock), the agent receives at t4. The offset (collector − agent) is
//! θ = ((t2 − t1) + (t3 − t4)) / 2 and the round trip δ = (t4 − t1) − (t3 − t2); since neither
//! one-way delay is negative, the true offset at the exchange lies within θ ± δ/2. The model
//! keeps the fastest exchange of each slice of a sliding window (min-RTT filtering: queueing
//! only ever adds delay), fits offset = a + drift·t through them, and bounds the error of the
//! line at any time from the two kept exchanges that bound it best over the next second: the
//! line's error is linear in time, so any two points bound it everywhere.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub t1: u64,
    pub t2: u64,
    pub t3: u64,
    pub t4: u64,
}

impl Exchange {
    /// Collector clock minus agent clock, in ns.
    pub fn offset(&self) -> f64 {
        ((self.t2 as f64 - self.t1 as f64) + (self.t3 as f64 - self.t4 as f64)) / 2.0
    }

    /// Round trip without the collector's own hold, in ns.
    pub fn delay(&self) -> f64 {
        (self.t4 as f64 - self.t1 as f64) - (self.t3 as f64 - self.t2 as f64)
    }

    /// The exchange's midpoint on the agent's clock.
    fn at(&self) -> f64 {
        (self.t1 as f64 + self.t4 as f64) / 2.0
    }
}

/// The line fitted to the kept exchanges, and two points where its error is known best.
#[derive(Clone, Copy, Debug)]
struct Fit {
    t0: f64,
    offset0: f64,
    /// d(offset)/d(agent time): the drift between the two clocks (1e-6 is 1 ppm).
    drift: f64,
    first: (f64, f64),
    last: (f64, f64),
}

/// How far past the latest exchange events are expected to be mapped.
const EXTRAPOLATION_NS: f64 = 1e9;

/// The bound at `t` on a linear error known to be within `ea` at time `a` and `eb` at `b`:
/// the larger of the two between them, growing by at most (ea + eb) / (b − a) per ns beyond.
fn bound_at(t: f64, (a, ea): (f64, f64), (b, eb): (f64, f64)) -> f64 {
    let outside = (a - t).max(t - b).max(0.0);
    ea.max(eb) + outside * (ea + eb) / (b - a).max(1.0)
}

/// An agent clock's mapping onto the collector's.
pub struct ClockModel {
    /// Exchanges within the window, oldest first.
    window: VecDeque<Exchange>,
    window_ns: u64,
    slices: usize,
    fit: Option<Fit>,
}

impl ClockModel {
    /// Fits over the last `window_ns` of exchanges, keeping the fastest of each of `slices`
    /// equal slices of it.
    pub fn new(window_ns: u64, slices: usize) -> Self {
        assert!(slices >= 2, "a line needs two points");
        Self {
            window: VecDeque::new(),
            window_ns,
            slices,
            fit: None,
        }
    }

    pub fn add(&mut self, e: Exchange) {
        if e.t4 < e.t1 || e.t3 < e.t2 {
            return; // not a real exchange: a clock went backwards
        }
        if [e.t1, e.t2, e.t3, e.t4]
            .iter()
            .any(|&t| t > i64::MAX as u64)
        {
            return; // not a monotonic clock: 292 years of uptime
        }
        self.window.push_back(e);
        while self
            .window
            .front()
            .is_some_and(|f| f.t1.saturating_add(self.window_ns) < e.t1)
        {
            self.window.pop_front();
        }
        self.fit = self.refit();
    }

    fn refit(&self) -> Option<Fit> {
        let (start, end) = (self.window.front()?.at(), self.window.back()?.at());
        let span = (end - start).max(1.0);
        let mut best: Vec<Option<Exchange>> = vec![None; self.slices];
        for e in &self.window {
            let slice = (((e.at() - start) / span) * self.slices as f64) as usize;
            let slot = &mut best[slice.min(self.slices - 1)];
            if slot.is_none_or(|b| e.delay() < b.delay()) {
                *slot = Some(*e);
            }
        }
        let kept: Vec<Exchange> = best.into_iter().flatten().collect();
        if kept.len() < 2 {
            return None;
        }
        let t0 = kept[0].at();
        let n = kept.len() as f64;
        let (mx, my) = (
            kept.iter().map(|e| e.at() - t0).sum::<f64>() / n,
            kept.iter().map(Exchange::offset).sum::<f64>() / n,
        );
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for e in &kept {
            let (x, y) = (e.at() - t0 - mx, e.offset() - my);
            sxy += x * y;
            sxx += x * x;
        }
        let drift = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        let offset0 = my - drift * mx;
        // The true offset at a kept exchange is within θ ± δ/2; the line is |residual| from θ.
        let error_at = |e: &Exchange| {
            let line = offset0 + drift * (e.at() - t0);
            (e.at(), e.delay() / 2.0 + (e.offset() - line).abs())
        };
        // Any two kept exchanges bound the (linear) error of the line; keep the pair that bounds
        // it best over the next second, where events are mapped.
        let errors: Vec<(f64, f64)> = kept.iter().map(error_at).collect();
        let horizon = errors[errors.len() - 1].0 + EXTRAPOLATION_NS;
        let mut pair = (errors[0], errors[errors.len() - 1]);
        for (i, &a) in errors.iter().enumerate() {
            for &b in &errors[i + 1..] {
                if bound_at(horizon, a, b) < bound_at(horizon, pair.0, pair.1) {
                    pair = (a, b);
                }
            }
        }
        Some(Fit {
            t0,
            offset0,
            drift,
            first: pair.0,
            last: pair.1,
        })
    }

    /// The collector's time for agent time `t_agent`, and the error bound in ns; `None` until
    /// two exchanges are in.
    pub fn map(&self, t_agent: u64) -> Option<(u64, u64)> {
        let f = self.fit?;
        let t = t_agent as f64;
        let offset = f.offset0 + f.drift * (t - f.t0);
        let bound = bound_at(t, f.first, f.last);
        Some(((t + offset).round() as u64, bound.ceil() as u64))
    }

    /// Collector clock minus agent clock at the latest exchange, and its bound.
    pub fn latest_offset(&self) -> Option<(i64, u64)> {
        let t = self.window.back()?.t4;
        let (mapped, bound) = self.map(t)?;
        Some((agent::schema::signed_difference(mapped, t), bound))
    }

    /// The current drift estimate (collector ns per agent ns, minus 1).
    pub fn drift(&self) -> Option<f64> {
        self.fit.map(|f| f.drift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// An agent whose clock runs `drift` fast and `offset_ns` ahead of the collector's, and a
    /// network with a fixed and a random part in each direction, not symmetric.
    struct Node {
        offset_ns: f64,
        drift: f64,
    }

    impl Node {
        fn agent_time(&self, collector: f64) -> f64 {
            collector * (1.0 + self.drift) + self.offset_ns
        }
    }

    fn exchange(node: &Node, at: f64, rng: &mut StdRng) -> Exchange {
        let up = 30_000.0 + rng.gen::<f64>().powi(3) * 400_000.0;
        let down = 55_000.0 + rng.gen::<f64>().powi(3) * 400_000.0;
        let hold = 5_000.0 + rng.gen::<f64>() * 20_000.0;
        let t2 = at + up;
        let t3 = t2 + hold;
        Exchange {
            t1: node.agent_time(at) as u64,
            t2: t2 as u64,
            t3: t3 as u64,
            t4: node.agent_time(t3 + down) as u64,
        }
    }

    /// Exchanges (one per 100 ms) before the bound is held to 200 µs, the cross-node accuracy the collector promises.
    const WARM_UP: usize = 50;

    #[test]
    fn offsets_and_drift_are_recovered_within_the_reported_bound() {
        let mut rng = StdRng::seed_from_u64(7);
        for (offset_ms, ppm) in [(50.0, 30.0), (-50.0, -30.0), (12.5, 5.0), (-0.3, 0.0)] {
            let node = Node {
                offset_ns: offset_ms * 1e6,
                drift: ppm * 1e-6,
            };
            let mut model = ClockModel::new(30_000_000_000, 16);
            let start = 1_000_000_000_000.0;
            let mut worst: (f64, u64) = (0.0, 0);
            for k in 0..600 {
                // An exchange every 100 ms; events mapped in between and up to 1 s ahead.
                model.add(exchange(&node, start + k as f64 * 1e8, &mut rng));
                if k < 20 {
                    continue;
                }
                for ahead in [0.0, 3e7, 5e8, 1e9] {
                    let truth = start + k as f64 * 1e8 + ahead;
                    let (mapped, bound) = model.map(node.agent_time(truth) as u64).expect("fitted");
                    let err = (mapped as f64 - truth).abs();
                    assert!(
                        err <= bound as f64 + 1.0,
                        "{offset_ms} ms {ppm} ppm: error {err:.0} ns > bound {bound} ns"
                    );
                    // The bound is tight once a few seconds of exchanges are in.
                    if k >= WARM_UP {
                        worst = (worst.0.max(err), worst.1.max(bound));
                    }
                }
            }
            // The cross-node promise: error p99 ≤ 200 µs, inside the bound.
            assert!(
                worst.1 < 200_000,
                "{offset_ms} ms {ppm} ppm: bound {} ns",
                worst.1
            );
            let drift = model.drift().unwrap();
            // offset grows with the agent's own drift: collector − agent ≈ −drift per ns.
            assert!(
                (drift + node.drift).abs() < 2e-6,
                "drift {drift} for {ppm} ppm"
            );
            eprintln!(
                "{offset_ms} ms, {ppm} ppm: worst error {:.1} µs, worst bound {:.1} µs",
                worst.0 / 1e3,
                worst.1 as f64 / 1e3
            );
        }
    }

    #[test]
    fn the_fastest_exchanges_decide() {
        let node = Node {
            offset_ns: 0.0,
            drift: 0.0,
        };
        // Slow exchanges with a lopsided delay would pull a plain average 5 ms off.
        let mut model = ClockModel::new(10_000_000_000, 4);
        for k in 0..40u64 {
            let at = 1e12 + k as f64 * 2.5e8;
            let (up, down) = if k % 4 == 0 {
                (20_000.0, 20_000.0)
            } else {
                (10_000_000.0, 0.0)
            };
            model.add(Exchange {
                t1: at as u64,
                t2: (at + up) as u64,
                t3: (at + up) as u64,
                t4: node.agent_time(at + up + down) as u64,
            });
        }
        let (mapped, bound) = model.map(1e12 as u64 + 5_000_000_000).unwrap();
        let err = mapped.abs_diff(1e12 as u64 + 5_000_000_000);
        assert!(
            err <= 1_000 && bound <= 21_000,
            "error {err}, bound {bound}"
        );
    }

    #[test]
    fn nothing_is_mapped_before_two_exchanges() {
        let mut model = ClockModel::new(1_000_000_000, 4);
        assert!(model.map(5).is_none());
        model.add(Exchange {
            t1: 100,
            t2: 150,
            t3: 160,
            t4: 220,
        });
        assert!(model.map(5).is_none());
    }
}
