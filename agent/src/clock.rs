//! The clocks every stamp is on: `CLOCK_MONOTONIC`, which the kernel side stamps with, and the
//! wall clock records are also dated by so that they can be joined with logs and traces.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns()` reads on the same node.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC) as u64
}

/// `clock` in nanoseconds since its epoch.
fn read(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; both clocks read here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// A node clock skewed on purpose (demos and tests of unsynchronised nodes): the node's times
/// as if its clock were `offset_ns` ahead of the real one at `origin_ns` and ran `ppm` fast
/// since. Production agents use the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Skew {
    pub offset_ns: i64,
    pub ppm: f64,
    pub origin_ns: u64,
}

impl Skew {
    /// The node's time at real time `t_ns`.
    pub fn apply(&self, t_ns: u64) -> u64 {
        let drift = (t_ns as f64 - self.origin_ns as f64) * self.ppm * 1e-6;
        (t_ns as f64 + drift + self.offset_ns as f64) as u64
    }

    /// The real time at the node's time `node_ns`: what audits a mapping of node clocks.
    pub fn real(&self, node_ns: u64) -> u64 {
        let rate = 1.0 + self.ppm * 1e-6;
        let since_origin = (node_ns as f64 - self.offset_ns as f64 - self.origin_ns as f64) / rate;
        (self.origin_ns as f64 + since_origin).round().max(0.0) as u64
    }
}

/// How `CLOCK_MONOTONIC` maps onto the wall clock (`CLOCK_REALTIME`, UTC) now, and how well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// `CLOCK_REALTIME − CLOCK_MONOTONIC`, ns.
    offset_ns: i128,
    /// How far a mapped time can be from UTC: half the bracket the wall clock was read in,
    /// plus the kernel's estimate of the wall clock's own error.
    pub error_ns: u64,
}

/// Brackets tried: a preemption between the reads widens one, rarely all.
const BRACKETS: usize = 5;

impl WallClock {
    /// Reads the wall clock between two reads of `CLOCK_MONOTONIC`, keeping the tightest of a
    /// few brackets. The mapping holds until the wall clock is stepped: sample it again for
    /// each batch of stamps.
    pub fn sample() -> Self {
        let (before, wall, after) = (0..BRACKETS)
            .map(|_| {
                let before = read(libc::CLOCK_MONOTONIC);
                let wall = read(libc::CLOCK_REALTIME);
                (before, wall, read(libc::CLOCK_MONOTONIC))
            })
            .min_by_key(|(before, _, after)| after - before)
            .expect("at least one bracket");
        let width = u64::try_from(after - before).unwrap_or(u64::MAX);
        Self {
            offset_ns: wall - (before + after) / 2,
            error_ns: width.div_ceil(2).saturating_add(estimated_error_ns()),
        }
    }

    /// `t_ns` (`CLOCK_MONOTONIC`) on the wall clock.
    pub fn wall(&self, t_ns: u64) -> SystemTime {
        let ns = (i128::from(t_ns) + self.offset_ns).max(0);
        UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The kernel's estimate of the wall clock's error (`adjtimex`'s `esterror`), which whatever
/// synchronises the clock (NTP, PTP) keeps; 16 s, its initial value, when nothing does.
fn estimated_error_ns() -> u64 {
    // SAFETY: an all-zero timex is valid; modes 0 only reads, which needs no privilege.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    if unsafe { libc::adjtimex(&mut tx) } < 0 {
        // Unknown: as unsynchronised.
        return 16_000_000_000;
    }
    u64::try_from(tx.esterror).unwrap_or(0).saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skewed_time_is_undone_to_the_nanosecond() {
        let skew = Skew {
            offset_ns: -48_000_000,
            ppm: 35.0,
            origin_ns: 7_200_000_000_000,
        };
        // Two days of uptime on either side of the origin.
        for real in [
            5_000_000_000_000_u64,
            7_200_000_000_000,
            180_000_000_000_000,
        ] {
            let node = skew.apply(real);
            assert_ne!(node, real);
            assert!(skew.real(node).abs_diff(real) <= 1, "{real} → {node}");
        }
    }

    #[test]
    fn monotonic_stamps_map_onto_the_wall_clock_within_the_bracket() {
        let clock = WallClock::sample();
        let (before, t, after) = (SystemTime::now(), monotonic_ns(), SystemTime::now());
        let wall = clock.wall(t);
        // Read in between, up to the mapping's bracket (the kernel's estimate aside).
        let slack = Duration::from_millis(1);
        assert!(wall + slack >= before && wall <= after + slack, "{wall:?}");
        assert!(clock.error_ns >= estimated_error_ns(), "{clock:?}");
    }
}
