//! Matches the same moment across writers: the sightings of a signature within a bounded window
//! are ordered by time and consecutive writers become hops (write → write).

use crate::event::Phase1Event;
use agent::schema::{Dir, HopRecord, Sighting};

#[derive(Default)]
pub struct Matcher {
    /// Signatures refused as ambiguous: seen twice by one process within the window.
    pub refused: u64,
    /// Signatures seen by a single writer only.
    pub unmatched: u64,
}

impl agent::pipeline::Matching for Matcher {
    type Event = Phase1Event;
    type Seen = Phase1Event;

    fn admit(&mut self, e: Phase1Event) -> Option<(u64, u64, Phase1Event)> {
        Some((e.signature, e.t_ns, e))
    }

    fn close(&mut self, mut v: Vec<Phase1Event>, out: &mut Vec<HopRecord>) {
        if v.len() < 2 {
            self.unmatched += 1;
            return;
        }
        v.sort_by_key(|e| e.t_ns);
        let mut writers: Vec<u32> = v.iter().map(|e| e.tgid).collect();
        writers.sort_unstable();
        if writers.windows(2).any(|w| w[0] == w[1]) {
            // Repeated content (a loop, a tone) or fan-out by one writer: refuse, do not guess.
            self.refused += 1;
            return;
        }
        let sighting = |e: &Phase1Event| Sighting {
            pid: e.tgid,
            comm: e.comm(),
            fd: e.fd,
            dir: Dir::Write,
            t_ns: e.t_ns,
            // Phase 1's positions count from each write, not from the flow.
            pos: None,
            node: None,
            node_t_ns: None,
            pod: None,
        };
        out.extend(
            v.windows(2)
                .map(|w| HopRecord::new(w[0].signature, sighting(&w[0]), sighting(&w[1]))),
        );
    }

    fn health(&self) -> String {
        format!("refused={} unmatched={}", self.refused, self.unmatched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::pipeline::Matched;
    use std::time::Duration;

    fn ev(signature: u64, tgid: u32, t_ns: u64) -> Phase1Event {
        Phase1Event {
            signature,
            t_ns,
            end: 0,
            tgid,
            tid: tgid,
            fd: 1,
            dir: crate::event::DIR_WRITE,
            comm: [b'x'; 16],
        }
    }

    #[test]
    fn chains_writers_in_time_order() {
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000));
        for e in [ev(7, 2, 150), ev(7, 1, 100), ev(7, 3, 400), ev(8, 1, 120)] {
            m.push(e);
        }
        let mut out = Vec::new();
        // Due a window after the signature's first arrival (t = 150; arrivals are not in time
        // order across CPUs).
        m.close_due(Some(1_149), &mut out);
        assert!(
            out.is_empty(),
            "nothing is due before the window has passed"
        );
        m.close_due(Some(1_150), &mut out);
        let hops: Vec<(u32, u32, i64)> = out
            .iter()
            .map(|h| (h.from.pid, h.to.pid, h.latency_ns))
            .collect();
        assert_eq!(hops, vec![(1, 2, 50), (2, 3, 250)]);
        m.close_due(None, &mut out);
        assert_eq!(m.matcher.unmatched, 1);
    }

    #[test]
    fn refuses_a_signature_repeated_by_one_writer() {
        let mut m = Matched::<Matcher>::new(Duration::from_nanos(1_000));
        for e in [ev(7, 1, 100), ev(7, 2, 150), ev(7, 1, 600)] {
            m.push(e);
        }
        let mut out = Vec::new();
        m.close_due(None, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.matcher.refused, 1);
    }
}
