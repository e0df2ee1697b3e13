//! The scale scenario (BENCHMARKS.md measures it at 1000 calls) at a size a test can afford: calls
//! multiplexed on several connections through a 3-hop chain in real time. Its ground truth holds
//! up, the oracle scores perfectly, and a relay forwarding an envelope's header bytes unchanged is
//! framing, not a false match.

use agent::schema::{Dir, HopRecord, Sighting};
use harness::score::{score_indexed, CallTruthIndex, Observes, SAME_NODE_BAR};
use harness::truth::{GroundTruth, Io};
use harness::{oracle, run, scenario};
use shared::FingerprintConfig;
use std::path::Path;

const CALLS: u32 = 24;

fn run_scale() -> (GroundTruth, Vec<CallTruthIndex>) {
    let sc = scenario::scale(CALLS, 4.0);
    assert_eq!(sc.topology.processes(), 4);
    let dir = run::workdir("selftest-scale").unwrap();
    let gt = run::run(&sc, Path::new(env!("CARGO_BIN_EXE_harness")), &dir, |_| {
        Ok(())
    })
    .unwrap();
    let calls = CallTruthIndex::build(&gt, FingerprintConfig::default()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    (gt, calls)
}

/// A sighting of process `comm` at flow position `pos` of the syscall `io`.
fn sighting(gt: &GroundTruth, comm: &str, io: &Io, pos: u64) -> Sighting {
    let log = gt.component(comm).unwrap();
    Sighting {
        pid: log.pid,
        comm: log.comm.clone(),
        fd: io.fd,
        dir: io.dir,
        t_ns: io.t_ns,
        pos: Some(pos),
        node: None,
        node_t_ns: None,
        pod: None,
    }
}

#[test]
fn scale_runs_every_call_through_three_hops_and_scores_forwarded_headers_as_framing() {
    let (gt, calls) = run_scale();
    let cfg = FingerprintConfig::default();
    assert_eq!(calls.len(), CALLS as usize);

    // Every point of every call carried the call's whole audio.
    for (c, truth) in calls.iter().zip(&gt.calls) {
        assert_eq!(truth.points.len(), 6, "call {}: 3 hops", c.call);
        let bytes = c.audio.to_bytes().len() as u64;
        for p in &truth.points {
            let carried: u64 = gt
                .component(&p.component)
                .unwrap()
                .ios
                .iter()
                .filter(|io| io.dir == p.dir && io.link == p.link)
                .flat_map(|io| &io.segments)
                .filter(|s| s.call == c.call)
                .map(|s| s.len)
                .sum();
            assert_eq!(carried, bytes, "call {} at {p:?}", c.call);
        }
    }

    let records = oracle::records(&gt, &calls, Observes::ALL);
    let s = score_indexed(&gt, &calls, &records, Observes::ALL, cfg, "oracle");
    eprintln!("{s}");
    assert_eq!(s.hops_exist, CALLS as usize * 5);
    assert_eq!(s.hops_found, s.hops_exist);
    assert_eq!((s.false_matches, s.duplicates, s.framing), (0, 0, 0));
    assert_eq!(s.correct, s.records);
    assert!(
        s.misses(&SAME_NODE_BAR).is_empty(),
        "{:?}",
        s.misses(&SAME_NODE_BAR)
    );

    // Relay r2 forwards each envelope on the same connection: its header bytes just before a
    // payload are read and written again. A window there is framing; a window one byte off on
    // one side is not the same bytes.
    let r2 = gt.component("r2").unwrap();
    let truth = &gt.calls[0];
    let link = |dir: Dir| {
        let i = truth
            .points
            .iter()
            .position(|p| p.component == "r2" && p.dir == dir)
            .unwrap();
        truth.points[i].link.clone()
    };
    let (in_link, out_link) = (link(Dir::Read), link(Dir::Write));
    // The call's 10th payload on each side, and the syscall that moved the header before it.
    let payload = |dir: Dir, link: &str| {
        let seg = r2
            .ios
            .iter()
            .filter(|io| io.dir == dir && io.link == link)
            .flat_map(|io| &io.segments)
            .filter(|s| s.call == truth.call)
            .nth(10)
            .copied()
            .unwrap();
        let pos = seg.flow_off - 5;
        let io = r2
            .ios
            .iter()
            .find(|io| {
                io.dir == dir
                    && io.link == link
                    && io.flow_off < pos
                    && pos - 1 < io.flow_off + io.len
            })
            .unwrap();
        (seg, pos, io)
    };
    let (seg_in, pos_in, io_in) = payload(Dir::Read, &in_link);
    let (seg_out, pos_out, io_out) = payload(Dir::Write, &out_link);
    assert_eq!(seg_in.audio_off, seg_out.audio_off);
    let forged = |to_pos: u64| {
        let mut all = records.clone();
        all.push(HopRecord::new(
            0x0123_4567_89ab_cdef,
            sighting(&gt, "r2", io_in, pos_in),
            sighting(&gt, "r2", io_out, to_pos),
        ));
        score_indexed(&gt, &calls, &all, Observes::ALL, cfg, "forged")
    };
    let s = forged(pos_out);
    assert_eq!((s.framing, s.false_matches), (1, 0));
    let s = forged(pos_out - 1);
    assert_eq!((s.framing, s.false_matches), (0, 1));
}
