//! Collector replicas sharded by signature. Every sighting of a moment carries the same
//! signature, so sending each to the replica that owns its signature makes all of a moment's
//! sightings, from every node, meet in one replica, which matches them as a lone collector would.
//! Ownership is rendezvous hashing (highest random weight): each replica weighs a signature with
//! a hash seeded by the replica's name, the heaviest owns it. Every agent given the same names
//! agrees on the owners without talking to the others, and a replica added or removed moves only
//! the signatures it wins or owned: about 1/N of them.
//!
//! Each replica gets its own uplink (stream, queue, clock exchanges): a replica maps a node's
//! clock from that node's exchanges with it. A replica whose uplink has been down for
//! `reroute_after` is lost: ownership is hashed over the live replicas only, and the batches its
//! queue kept (not delivered, or delivered with matching windows still open) are handed to their
//! new owners, counted (`rerouted`). It is live again once its uplink reconnects.
//!
//! The node's opaque sockets go to every replica: an opaque stretch is matched by the replica
//! owning the moment, whichever that is, and must know every node's.

use crate::outbox::UplinkCounters;
use crate::proto::{NodeSighting, OpaqueSocket};
use crate::uplink::{Uplink, UplinkConfig};
use std::time::{Duration, Instant};
use xxhash_rust::xxh64::xxh64;

/// A batch goes out to every live replica at least this often, empty or not: the clock
/// exchanges ride with it, and a replica hears the node is alive.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Who owns a signature among replicas named once for all (their URLs).
#[derive(Clone, Debug)]
pub struct Rendezvous {
    seeds: Vec<u64>,
}

impl Rendezvous {
    pub fn new<S: AsRef<str>>(replicas: &[S]) -> Self {
        Self {
            seeds: replicas
                .iter()
                .map(|r| xxh64(r.as_ref().as_bytes(), 0))
                .collect(),
        }
    }

    /// The replica (index) owning `signature` among those `live` says are; among all of them
    /// when none is (queued for whichever comes back first).
    pub fn owner(&self, signature: u64, live: &[bool]) -> usize {
        let any_live = live.iter().any(|&l| l);
        let weight = |i: usize| xxh64(&signature.to_le_bytes(), self.seeds[i]);
        (0..self.seeds.len())
            .filter(|&i| !any_live || live[i])
            // Ties (a 2^-64 chance) go to the lower index, the same on every agent.
            .max_by_key(|&i| (weight(i), std::cmp::Reverse(i)))
            .unwrap_or(0)
    }
}

/// What sharding did, for the agent's health line and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Times a replica was declared lost (down for `reroute_after`).
    pub replicas_lost: u64,
    /// Sightings a lost replica's queue held, handed to the replicas that own them now.
    pub rerouted: u64,
}

struct Replica {
    url: String,
    uplink: Uplink,
    live: bool,
    last_push: Instant,
}

/// The uplinks to every replica, and which replica each sighting goes to.
pub struct Shards {
    replicas: Vec<Replica>,
    ring: Rendezvous,
    reroute_after: Duration,
    pub counters: ShardCounters,
}

impl Shards {
    /// An uplink per replica of `urls` (`config.collector` is replaced by each); needs a tokio
    /// runtime.
    pub fn start(config: &UplinkConfig, urls: &[String], reroute_after: Duration) -> Self {
        let now = Instant::now();
        let replicas = urls
            .iter()
            .map(|url| Replica {
                url: url.clone(),
                uplink: Uplink::start(UplinkConfig {
                    collector: url.clone(),
                    ..config.clone()
                }),
                live: true,
                // The first heartbeat goes out at once.
                last_push: now.checked_sub(HEARTBEAT).unwrap_or(now),
            })
            .collect();
        Self {
            replicas,
            ring: Rendezvous::new(urls),
            reroute_after,
            counters: ShardCounters::default(),
        }
    }

    fn live(&self) -> Vec<bool> {
        self.replicas.iter().map(|r| r.live).collect()
    }

    /// Sends each sighting (on the node's own clock) to its owner; each live replica gets a
    /// batch if it has sightings or its heartbeat is due. Never waits.
    pub fn push(&mut self, sightings: Vec<NodeSighting>) {
        self.rebalance();
        let live = self.live();
        let mut parts: Vec<Vec<NodeSighting>> = vec![Vec::new(); self.replicas.len()];
        for s in sightings {
            parts[self.ring.owner(s.signature, &live)].push(s);
        }
        let any_live = live.iter().any(|&l| l);
        for (r, part) in self.replicas.iter_mut().zip(parts) {
            let heartbeat = (r.live || !any_live) && r.last_push.elapsed() >= HEARTBEAT;
            if !part.is_empty() || heartbeat {
                r.uplink.push(part);
                r.last_push = Instant::now();
            }
        }
    }

    /// The node's opaque sockets now: each replica's next batch carries them.
    pub fn set_opaque(&mut self, sockets: Vec<OpaqueSocket>) {
        for r in &self.replicas {
            r.uplink.set_opaque(sockets.clone());
        }
    }

    /// Declares lost the replicas down for `reroute_after`, live again those reconnected, and
    /// hands what lost replicas' queues hold to the live owners.
    pub fn rebalance(&mut self) {
        for r in &mut self.replicas {
            let down_for = r.uplink.down_for();
            if r.live && down_for.is_some_and(|d| d >= self.reroute_after) {
                r.live = false;
                self.counters.replicas_lost += 1;
                tracing::warn!(
                    "collector replica {} down for {:?}: its share goes to the others",
                    r.url,
                    down_for.unwrap_or_default()
                );
            } else if !r.live && down_for.is_none() {
                r.live = true;
                tracing::info!(
                    "collector replica {} is back: it owns its share again",
                    r.url
                );
            }
        }
        let live = self.live();
        if !live.iter().any(|&l| l) {
            return;
        }
        for i in 0..self.replicas.len() {
            if live[i] {
                continue;
            }
            let held = self.replicas[i].uplink.take_unmatched();
            if held.is_empty() {
                continue;
            }
            self.counters.rerouted += held.len() as u64;
            let mut parts: Vec<Vec<NodeSighting>> = vec![Vec::new(); self.replicas.len()];
            for s in held {
                parts[self.ring.owner(s.signature, &live)].push(s);
            }
            for (r, part) in self.replicas.iter_mut().zip(parts) {
                if !part.is_empty() {
                    r.uplink.hand_over(part);
                }
            }
        }
    }

    /// Every uplink's counters, summed.
    pub fn uplink_counters(&self) -> UplinkCounters {
        self.replicas
            .iter()
            .map(|r| r.uplink.counters())
            .fold(UplinkCounters::default(), |a, b| a + b)
    }

    /// Batches no replica holds yet.
    pub fn pending(&self) -> usize {
        self.replicas.iter().map(|r| r.uplink.pending()).sum()
    }

    /// Batches kept by all uplinks.
    pub fn kept(&self) -> usize {
        self.replicas.iter().map(|r| r.uplink.kept()).sum()
    }

    /// (live, all) replicas.
    pub fn members(&self) -> (usize, usize) {
        let live = self.replicas.iter().filter(|r| r.live).count();
        (live, self.replicas.len())
    }

    /// Why each unreachable replica's latest connect failed, one line.
    pub fn last_error(&self) -> Option<String> {
        let errors: Vec<String> = self
            .replicas
            .iter()
            .filter_map(|r| r.uplink.last_error())
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("http://collector-{i}.collector-headless:50051"))
            .collect()
    }

    fn signatures(n: u64) -> impl Iterator<Item = u64> {
        (0..n).map(|i| xxh64(&i.to_le_bytes(), 42))
    }

    /// Owners depend on the replicas' names, not on the order they are listed in, nor on which
    /// agent asks.
    #[test]
    fn owners_are_the_same_whatever_the_order_of_the_list() {
        let names = urls(3);
        let reversed: Vec<String> = names.iter().rev().cloned().collect();
        let (a, b) = (Rendezvous::new(&names), Rendezvous::new(&reversed));
        for s in signatures(10_000) {
            let (i, j) = (a.owner(s, &[true; 3]), b.owner(s, &[true; 3]));
            assert_eq!(names[i], reversed[j]);
            assert_eq!(i, a.owner(s, &[true; 3]), "stable");
        }
    }

    /// Each of N replicas owns about 1/N of the signatures.
    #[test]
    fn signatures_are_spread_evenly() {
        for n in 1..=5 {
            let ring = Rendezvous::new(&urls(n));
            let mut owned = vec![0u64; n];
            let total = 60_000;
            for s in signatures(total) {
                owned[ring.owner(s, &vec![true; n])] += 1;
            }
            let fair = total as f64 / n as f64;
            for &c in &owned {
                assert!(
                    (c as f64 - fair).abs() < 0.05 * fair,
                    "{n} replicas: {owned:?}"
                );
            }
        }
    }

    /// A replica added takes about 1/(N+1) of the signatures, all from the others, none moving
    /// between the others; a replica lost gives only its own share away, spread evenly.
    #[test]
    fn a_change_of_membership_moves_only_the_changed_replicas_share() {
        let total = 60_000u64;
        for n in 2..=5 {
            let (before, after) = (Rendezvous::new(&urls(n)), Rendezvous::new(&urls(n + 1)));
            let moved = signatures(total)
                .filter(|&s| {
                    let (was, is) = (
                        before.owner(s, &vec![true; n]),
                        after.owner(s, &vec![true; n + 1]),
                    );
                    assert!(was == is || is == n, "moved between old replicas");
                    was != is
                })
                .count() as f64;
            let want = total as f64 / (n + 1) as f64;
            assert!(
                (moved - want).abs() < 0.05 * want,
                "{n} → {}: {moved}",
                n + 1
            );

            // Replica 0 lost: its share spreads over the others, theirs stays.
            let mut live = vec![true; n];
            live[0] = false;
            let mut gained = vec![0u64; n];
            for s in signatures(total) {
                let (was, is) = (before.owner(s, &vec![true; n]), before.owner(s, &live));
                assert_ne!(is, 0);
                if was != 0 {
                    assert_eq!(was, is, "a survivor's signature moved");
                } else {
                    gained[is] += 1;
                }
            }
            let fair = total as f64 / n as f64 / (n - 1) as f64;
            for &g in &gained[1..] {
                assert!((g as f64 - fair).abs() < 0.1 * fair, "{n}: {gained:?}");
            }
        }
    }

    #[test]
    fn with_no_replica_live_every_replica_may_own() {
        let ring = Rendezvous::new(&urls(3));
        for s in signatures(100) {
            assert_eq!(ring.owner(s, &[false; 3]), ring.owner(s, &[true; 3]));
        }
        assert_eq!(Rendezvous::new(&urls(1)).owner(7, &[false]), 0);
    }
}
