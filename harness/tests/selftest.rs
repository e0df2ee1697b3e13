//! The harness proves its own scoring: on real runs of S1 and S2, the oracle tracer scores
//! perfectly and deliberately broken tracers score as badly as they should.

use harness::scenario::Kind;
use harness::schema::{self, HopRecord};
use harness::score::{score_indexed, CallTruthIndex, Observes, Score, SAME_NODE_BAR};
use harness::truth::{Dir, GroundTruth};
use harness::{oracle, run, scenario};
use shared::FingerprintConfig;
use std::path::Path;
use std::sync::OnceLock;

struct Run {
    gt: GroundTruth,
    calls: Vec<CallTruthIndex>,
}

fn run_once(id: &str) -> Run {
    let sc = scenario::by_id(id).unwrap();
    let dir = run::workdir(&format!("selftest-{id}")).unwrap();
    let gt = run::run(&sc, Path::new(env!("CARGO_BIN_EXE_harness")), &dir, |t| {
        assert_eq!(t.pids.len(), sc.topology.processes());
        Ok(())
    })
    .unwrap();
    let calls = CallTruthIndex::build(&gt, FingerprintConfig::default()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    Run { gt, calls }
}

fn s1() -> &'static Run {
    static R: OnceLock<Run> = OnceLock::new();
    R.get_or_init(|| run_once("S1"))
}

fn s2() -> &'static Run {
    static R: OnceLock<Run> = OnceLock::new();
    R.get_or_init(|| run_once("S2"))
}

fn score(r: &Run, records: &[HopRecord], obs: Observes, name: &str) -> Score {
    let s = score_indexed(
        &r.gt,
        &r.calls,
        records,
        obs,
        FingerprintConfig::default(),
        name,
    );
    eprintln!("{s}");
    s
}

fn oracle_records(r: &Run) -> Vec<HopRecord> {
    oracle::records(&r.gt, &r.calls, Observes::ALL)
}

fn assert_perfect(s: &Score) {
    assert_eq!(s.hops_found, s.hops_exist);
    assert!(s.hops_exist > 0);
    assert_eq!((s.false_matches, s.duplicates, s.error_max_ns), (0, 0, 0));
    assert_eq!(s.correct, s.records);
    assert!(
        s.misses(&SAME_NODE_BAR).is_empty(),
        "{:?}",
        s.misses(&SAME_NODE_BAR)
    );
}

#[test]
fn ground_truth_is_what_the_components_did() {
    let r = s1();
    let sc = scenario::s1();
    for c in &r.gt.components {
        assert!(!c.ios.is_empty(), "{} recorded nothing", c.name);
        assert!(c.comm.starts_with("hx-"), "{}", c.comm);
        // Every syscall is contiguous with the one before it on its link.
        for dir in [Dir::Read, Dir::Write] {
            let ios: Vec<_> = c.ios.iter().filter(|io| io.dir == dir).collect();
            assert!(
                ios.windows(2).all(|w| w[0].link == w[1].link),
                "one link per direction in S1"
            );
            for w in ios.windows(2) {
                assert_eq!(w[0].flow_off + w[0].len, w[1].flow_off, "{}", c.name);
                assert!(w[0].t_ns <= w[1].t_ns);
            }
        }
        let written: u64 = c
            .ios
            .iter()
            .filter(|io| io.dir == Dir::Write)
            .flat_map(|io| &io.segments)
            .map(|s| s.len)
            .sum();
        let read: u64 = c
            .ios
            .iter()
            .filter(|io| io.dir == Dir::Read)
            .flat_map(|io| &io.segments)
            .map(|s| s.len)
            .sum();
        let audio_bytes = (sc.seconds * sc.rate as f64) as u64 * 2;
        if c.name.ends_with("src") {
            assert_eq!(written, audio_bytes);
        } else {
            assert_eq!(read, audio_bytes, "{} lost audio", c.name);
        }
    }
    // The relays hold every read for their hold time: residence is at least that.
    let oracle = oracle_records(r);
    let hold = |name: &str| match sc
        .topology
        .comps
        .iter()
        .find(|c| c.name == name)
        .map(|c| &c.kind)
    {
        Some(Kind::Relay { hold_us, .. }) => *hold_us,
        other => panic!("{name}: {other:?}"),
    };
    for (relay, hold_us) in [("r1", hold("c0-r1")), ("r2", hold("c0-r2"))] {
        let residences: Vec<i64> = oracle
            .iter()
            .filter(|h| {
                h.from.comm.ends_with(relay) && h.from.dir == Dir::Read && h.to.dir == Dir::Write
            })
            .map(|h| h.latency_ns)
            .collect();
        assert!(!residences.is_empty());
        let min = *residences.iter().min().unwrap();
        assert!(
            min >= hold_us as i64 * 1000,
            "{relay}: residence {min} ns < hold {hold_us} µs"
        );
        assert!(
            min < hold_us as i64 * 1000 + 5_000_000,
            "{relay}: residence {min} ns"
        );
    }
}

#[test]
fn oracle_scores_perfectly_on_s1_and_s2() {
    for r in [s1(), s2()] {
        assert_perfect(&score(r, &oracle_records(r), Observes::ALL, "oracle"));
    }
}

#[test]
fn write_only_oracle_scores_perfectly_on_its_own_hops() {
    let r = s1();
    let records = oracle::records(&r.gt, &r.calls, Observes::WRITES);
    assert!(records
        .iter()
        .all(|h| h.from.dir == Dir::Write && h.to.dir == Dir::Write));
    let s = score(r, &records, Observes::WRITES, "oracle, writes only");
    assert_perfect(&s);
    // Source → relay 1 → relay 2 for each of the two calls; the sink writes nothing.
    assert_eq!(s.hops_exist, 4);
}

#[test]
fn records_survive_the_json_lines_schema() {
    let records = oracle_records(s2());
    let mut buf = Vec::new();
    schema::write_jsonl(&mut buf, &records).unwrap();
    assert_eq!(schema::read_jsonl(&buf[..]).unwrap(), records);
}

#[test]
fn shifted_timestamps_show_as_latency_error() {
    let r = s1();
    let shifted: Vec<HopRecord> = oracle_records(r)
        .into_iter()
        .map(|mut h| {
            h.to.t_ns += 50_000;
            h.latency_ns += 50_000;
            h
        })
        .collect();
    let s = score(r, &shifted, Observes::ALL, "shifted by 50 µs");
    assert_eq!((s.error_p50_ns, s.error_p99_ns), (50_000, 50_000));
    assert_eq!(s.false_matches, 0);
    assert!(s
        .misses(&SAME_NODE_BAR)
        .iter()
        .any(|m| m.contains("latency error")));
}

#[test]
fn swapped_processes_are_false_matches() {
    let r = s2();
    let swapped: Vec<HopRecord> = oracle_records(r)
        .into_iter()
        .map(|h| HopRecord::new(h.signature, h.to, h.from))
        .collect();
    let s = score(r, &swapped, Observes::ALL, "from/to swapped");
    assert_eq!(s.false_matches, swapped.len());
    assert_eq!(s.hops_found, 0);
}

#[test]
fn moments_paired_across_calls_are_false_matches() {
    let r = s1();
    let records = oracle_records(r);
    // Pair call 0's sender with call 1's receiver of the same hop, keeping call 0's signature.
    let call1_to: Vec<_> = records
        .iter()
        .filter(|h| h.to.comm.starts_with("hx-c1"))
        .map(|h| h.to.clone())
        .collect();
    let crossed: Vec<HopRecord> = records
        .iter()
        .filter(|h| h.from.comm.starts_with("hx-c0"))
        .zip(call1_to)
        .map(|(h, to)| HopRecord::new(h.signature, h.from.clone(), to))
        .collect();
    assert!(!crossed.is_empty());
    let s = score(r, &crossed, Observes::ALL, "crossed calls");
    assert_eq!(s.false_matches, crossed.len());
}

#[test]
fn dropped_moments_lower_coverage_and_density() {
    let r = s1();
    let all = oracle_records(r);
    let full = score(r, &all, Observes::ALL, "oracle");
    let half: Vec<HopRecord> = all
        .iter()
        .filter(|h| h.signature % 2 == 0)
        .cloned()
        .collect();
    let s = score(r, &half, Observes::ALL, "odd signatures dropped");
    let ratio = s.moments_per_nonsilent_second / full.moments_per_nonsilent_second;
    assert!((0.4..0.6).contains(&ratio), "density ratio {ratio}");
    // Keep one moment in 64: coverage must fall below the bar.
    let sparse: Vec<HopRecord> = all
        .iter()
        .filter(|h| h.signature % 64 == 0)
        .cloned()
        .collect();
    let s = score(r, &sparse, Observes::ALL, "63 of 64 moments dropped");
    assert!(
        s.coverage_min < SAME_NODE_BAR.coverage,
        "coverage {}",
        s.coverage_min
    );
    // Drop a whole hop: it is not found.
    let no_sink: Vec<HopRecord> = all
        .iter()
        .filter(|h| !h.to.comm.ends_with("sink"))
        .cloned()
        .collect();
    let s = score(r, &no_sink, Observes::ALL, "sink hop dropped");
    assert_eq!(s.hops_found, s.hops_exist - 2);
}

#[test]
fn duplicated_reports_are_counted() {
    let r = s1();
    let mut records = oracle_records(r);
    let extra = records[..10].to_vec();
    records.extend(extra);
    let s = score(r, &records, Observes::ALL, "ten reported twice");
    assert_eq!((s.duplicates, s.false_matches), (10, 0));
}
