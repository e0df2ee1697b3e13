//! The oracle tracer: what a perfect tracer would report, derived from the ground truth and the
//! shared reference. It scores perfectly; it is what proves the scoring right.
//!
//! External components record nothing: the oracle sees their points at times spread evenly
//! between the known points around them, on a made-up fd per link (negative), with no flow
//! position. Latencies along each chain through them still add up to the truth.

use crate::score::{CallTruthIndex, Observes};
use crate::truth::GroundTruth;
use agent::schema::{HopRecord, Sighting};
use std::collections::{BTreeSet, HashMap};

pub fn records(gt: &GroundTruth, calls: &[CallTruthIndex], obs: Observes) -> Vec<HopRecord> {
    let external_ends: BTreeSet<(&str, &str)> = calls
        .iter()
        .flat_map(|c| c.points.iter().zip(&c.external))
        .filter(|(_, &external)| external)
        .map(|(p, _)| (p.component.as_str(), p.link.as_str()))
        .collect();
    let made_up_fd: HashMap<(&str, &str), i32> = external_ends
        .into_iter()
        .zip((1..).map(|i: i32| -i))
        .collect();
    let mut out = Vec::new();
    for c in calls {
        let sighting = |point: usize, end: u64| {
            let p = &c.points[point];
            let log = gt.component(&p.component)?;
            let (t_ns, fd, pos) = if c.external[point] {
                let fd = made_up_fd[&(p.component.as_str(), p.link.as_str())];
                (external_time(c, point, end)?, fd, None)
            } else {
                let carried = c.carried[point].get(&end)?;
                (carried.t_ns, carried.fd, Some(carried.pos))
            };
            Some(Sighting {
                pid: log.pid,
                comm: log.comm.clone(),
                fd,
                dir: p.dir,
                t_ns,
                pos,
                node: log.node.clone(),
                node_t_ns: None,
                pod: None,
            })
        };
        for (a, b) in c.hops(obs) {
            for m in &c.moments {
                if let (Some(from), Some(to)) = (sighting(a, m.end), sighting(b, m.end)) {
                    let mut hop = HopRecord::new(m.signature, from, to);
                    // The truth is on one clock, the machine's, whatever node a side ran on.
                    if hop.from.node != hop.to.node {
                        hop.bound_ns = Some(0);
                    }
                    out.push(hop);
                }
            }
        }
    }
    out
}

/// When external point `point` is taken to carry moment `end`: the j-th of n external points
/// between known points K1 and K2 at t(K1) + j/(n+1)·(t(K2) − t(K1)), with the K2 that gives the
/// earliest time when it fans out to several. One time per point, so latencies telescope.
fn external_time(c: &CallTruthIndex, point: usize, end: u64) -> Option<u64> {
    let mut j = 1;
    let mut k1 = c.parent[point]?;
    while c.external[k1] {
        j += 1;
        k1 = c.parent[k1]?;
    }
    let t1 = c.carried[k1].get(&end)?.t_ns;
    let mut earliest: Option<u64> = None;
    let mut todo = vec![(point, j)];
    while let Some((p, n)) = todo.pop() {
        for child in (0..c.points.len()).filter(|&i| c.parent[i] == Some(p)) {
            if c.external[child] {
                todo.push((child, n + 1));
            } else if let Some(k2) = c.carried[child].get(&end) {
                let t = t1 + k2.t_ns.saturating_sub(t1) * j / (n + 1);
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
    }
    earliest
}
