//! The oracle tracer: what a perfect tracer would report, derived from the ground truth and the
//! shared reference. It scores perfectly; it is what proves the scoring right.

use crate::schema::{HopRecord, Sighting};
use crate::score::{CallTruthIndex, Observes};
use crate::truth::GroundTruth;

pub fn records(gt: &GroundTruth, calls: &[CallTruthIndex], obs: Observes) -> Vec<HopRecord> {
    let mut out = Vec::new();
    for c in calls {
        let sighting = |point: usize, end: u64| {
            let carried = c.carried[point].get(&end)?;
            let p = &c.points[point];
            let comm = gt
                .component(&p.component)
                .map(|l| l.comm.clone())
                .unwrap_or_default();
            Some(Sighting {
                pid: carried.pid,
                comm,
                fd: carried.fd,
                dir: p.dir,
                t_ns: carried.t_ns,
                pos: Some(carried.pos),
                node: None,
            })
        };
        for (a, b) in c.hops(obs) {
            for m in &c.moments {
                if let (Some(from), Some(to)) = (sighting(a, m.end), sighting(b, m.end)) {
                    out.push(HopRecord::new(m.signature, from, to));
                }
            }
        }
    }
    out
}
