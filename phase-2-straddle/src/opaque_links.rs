//! Which processes hold which opaque links: sockets that carry TLS whose plaintext no probe sees
//! (the kernel marks them, `PHASE2_TLS_OPAQUE`). An opaque stretch (`matcher`) runs through
//! them, so its two ends must be joined by them: plaintext that disappeared at one end can come
//! out at the other only through processes that hold such links, each reached from the one
//! before over one of them. A stretch that no chain of them joins is not a stretch, however
//! well its timing fits: a consumer's last read does not feed a broker's other subscriber, and
//! a source whose own TLS is probed does not decrypt another call's audio.

use agent::schema::Dir;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Processes a stretch may cross, its two ends' included: a TLS client, a mesh proxy on each
/// side, a broker in between.
const MAX_PROCESSES: usize = 4;

/// The opaque links of every process, from snapshots of where they were learned (a node).
pub struct OpaqueLinks<P, L> {
    by_origin: HashMap<u32, Vec<(P, L)>>,
    held: HashMap<P, Vec<L>>,
    holders: HashMap<L, Vec<P>>,
}

impl<P, L> Default for OpaqueLinks<P, L> {
    fn default() -> Self {
        Self {
            by_origin: HashMap::new(),
            held: HashMap::new(),
            holders: HashMap::new(),
        }
    }
}

/// One end of a stretch: a sighting's process, link and direction.
pub struct End<'a, P, L> {
    pub process: P,
    pub link: &'a L,
    pub dir: Dir,
}

impl<P: Copy + Eq + Hash, L: Clone + Eq + Hash> OpaqueLinks<P, L> {
    /// Replaces what `origin` (a node) holds with `holdings`.
    pub fn set(&mut self, origin: u32, holdings: Vec<(P, L)>) {
        self.by_origin.insert(origin, holdings);
        self.held.clear();
        self.holders.clear();
        for (p, l) in self.by_origin.values().flatten() {
            self.held.entry(*p).or_default().push(l.clone());
            self.holders.entry(l.clone()).or_default().push(*p);
        }
    }

    /// Whether a moment last seen at `entry` can come out at `root` through processes that hold
    /// opaque links. The stretch begins in the unseen reader of the entry's write, or in the
    /// entry's own process when it read the moment (it encrypted it); it ends in the unseen
    /// writer of the root's read, or in the root's own process when it wrote the moment (it
    /// decrypted it). Each must hold an opaque link, and the first reach the last.
    pub fn join(&self, entry: End<P, L>, root: End<P, L>) -> bool {
        let opaque = |p: &P| self.held.contains_key(p);
        let mut frontier: Vec<P> = match entry.dir {
            Dir::Write => self.holders_of(entry.link).to_vec(),
            Dir::Read => vec![entry.process],
        };
        frontier.retain(opaque);
        let last: HashSet<P> = match root.dir {
            Dir::Write => [root.process].into_iter().filter(opaque).collect(),
            Dir::Read => self.holders_of(root.link).iter().copied().collect(),
        };
        let mut visited: HashSet<P> = frontier.iter().copied().collect();
        for _ in 0..MAX_PROCESSES {
            if frontier.iter().any(|p| last.contains(p)) {
                return true;
            }
            frontier = frontier
                .iter()
                .flat_map(|p| &self.held[p])
                .flat_map(|l| self.holders_of(l))
                .copied()
                .filter(|p| visited.insert(*p))
                .collect();
        }
        false
    }

    fn holders_of(&self, link: &L) -> &[P] {
        self.holders.get(link).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "process:link ..." → every holding of an origin.
    fn holdings(text: &'static str) -> Vec<(u32, &'static str)> {
        text.split_whitespace()
            .map(|h| h.split_once(':').unwrap())
            .map(|(p, l)| (p.parse().unwrap(), l))
            .collect()
    }

    /// "process link r|w" → one end of a stretch.
    fn end(text: &'static str) -> End<'static, u32, &'static str> {
        let [p, link, dir] = text.split(' ').collect::<Vec<_>>()[..] else {
            panic!("{text}")
        };
        End {
            process: p.parse().unwrap(),
            link: Box::leak(Box::new(link)),
            dir: if dir == "w" { Dir::Write } else { Dir::Read },
        }
    }

    /// Each row: who holds which opaque link, a stretch's two ends, whether they are joined.
    #[test]
    fn a_stretch_joins_its_ends_only_through_opaque_links() {
        // Broker 2 decrypts publisher 1's TLS unseen and fans it out to subscribers 3 and 4.
        const BROKER: &str = "2:pub 2:sub3 2:sub4 3:sub3 4:sub4";
        const CHAIN: &str = "2:a 2:b 3:b 3:c 4:c 4:d 5:d";
        let rows = [
            // Source 1 writes TLS (probed) to relay 2, which decrypts unseen and writes on.
            ("into a relay", "2:tls", "1 tls w", "2 tcp w", true),
            // Relay 2 reads plaintext and encrypts it unseen to sink 3, which reads it (probed).
            ("out of a relay", "2:tls", "2 tcp r", "3 tls r", true),
            // Sidecars: proxy 2 reads plain and encrypts, proxy 3 decrypts and writes plain.
            (
                "between sidecars",
                "2:mesh 3:mesh",
                "2 in r",
                "3 out w",
                true,
            ),
            ("through a broker", BROKER, "1 pub w", "4 x w", true),
            // Subscriber 3's consumer 5 read the moment last: it holds no opaque link.
            ("from a consumer", BROKER, "5 c3 r", "4 x w", false),
            // Two sources into one relay: source 1's TLS is probed, so source 1 decrypts
            // nothing of source 0's.
            (
                "into another source",
                "2:tls0 2:tls1",
                "0 tls0 w",
                "1 tls1 w",
                false,
            ),
            // A plain link: nobody holds it.
            ("over a plain link", "2:tls", "1 pipe w", "2 tcp w", false),
            ("between strangers", "2:a 3:b", "1 a w", "3 c w", false),
            // Through as many processes as a stretch may cross, and through one more.
            ("far", CHAIN, "1 a w", "5 y w", true),
            (
                "too far",
                "2:a 2:b 3:b 3:c 4:c 4:d 5:d 5:e 6:e",
                "1 a w",
                "6 y w",
                false,
            ),
        ];
        for (what, held, entry, root, joined) in rows {
            let mut links = OpaqueLinks::default();
            links.set(0, holdings(held));
            assert_eq!(links.join(end(entry), end(root)), joined, "{what}");
        }
    }

    #[test]
    fn a_snapshot_replaces_only_its_origins_links() {
        let mut links = OpaqueLinks::default();
        links.set(0, holdings("2:a"));
        links.set(1, holdings("7:b"));
        assert!(links.join(end("1 a w"), end("2 x w")));
        links.set(0, Vec::new());
        assert!(!links.join(end("1 a w"), end("2 x w")));
        assert!(links.join(end("6 b w"), end("7 x w")));
    }
}
