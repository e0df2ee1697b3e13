//! The harness proves its own scoring: on real runs of S1 and S2, the oracle tracer scores
//! perfectly and deliberately broken tracers score as badly as they should; on S5, S6 and
//! S12–S16 (a real nats-server, stunnel4, relays on Go's, the JDK's and rustls's TLS in the
//! path, a rustls broker) the ground truth holds up and chains through those black boxes are
//! scored.

use agent::schema::{self, Dir, HopRecord, Sighting};
use harness::scenario::{External, Kind};
use harness::score::{score_indexed, CallTruthIndex, Observes, Score, SAME_NODE_BAR};
use harness::truth::{GroundTruth, Segment};
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
    for c in &sc.topology.comps {
        if let Kind::External(kind) = c.kind {
            for program in kind.programs() {
                let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .any(|d| d.join(program).is_file());
                assert!(
                    found,
                    "{id} needs {program}, not found in PATH: run `bash scripts/setup.sh`"
                );
            }
        }
    }
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

fn s5() -> &'static Run {
    static R: OnceLock<Run> = OnceLock::new();
    R.get_or_init(|| run_once("S5"))
}

fn s6() -> &'static Run {
    static R: OnceLock<Run> = OnceLock::new();
    R.get_or_init(|| run_once("S6"))
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
    assert_eq!(
        (s.false_matches, s.duplicates, s.error_max_all_ns),
        (0, 0, 0)
    );
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
    // Written, each is dated; nothing else changes.
    let undated: Vec<HopRecord> = schema::read_jsonl(&buf[..])
        .unwrap()
        .into_iter()
        .map(|r| {
            assert!(r.timestamp.is_some() && r.timestamp_error_ns.is_some());
            HopRecord {
                timestamp: None,
                timestamp_error_ns: None,
                ..r
            }
        })
        .collect();
    assert_eq!(undated, records);
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

/// A component's audio segments on one link and direction, contiguous runs merged.
fn flow(r: &Run, component: &str, dir: Dir, link: &str) -> Vec<Segment> {
    let mut runs: Vec<Segment> = Vec::new();
    let log = r.gt.component(component).unwrap();
    for s in log
        .ios
        .iter()
        .filter(|io| io.dir == dir && io.link == link)
        .flat_map(|io| &io.segments)
    {
        match runs.last_mut() {
            Some(l)
                if l.call == s.call
                    && l.flow_off + l.len == s.flow_off
                    && l.audio_off + l.len == s.audio_off =>
            {
                l.len += s.len
            }
            _ => runs.push(*s),
        }
    }
    runs
}

/// Every point of every call carried the call's whole audio, in order.
fn assert_every_byte_arrives(r: &Run) {
    for c in &r.calls {
        let bytes = c.audio.to_bytes().len() as u64;
        for p in
            r.gt.calls
                .iter()
                .find(|t| t.call == c.call)
                .unwrap()
                .points
                .iter()
        {
            let log = r.gt.component(&p.component).unwrap();
            if log.external {
                assert!(log.ios.is_empty());
                continue;
            }
            let mut next = 0;
            for s in flow(r, &p.component, p.dir, &p.link)
                .iter()
                .filter(|s| s.call == c.call)
            {
                assert_eq!(s.audio_off, next, "call {} at {p:?}", c.call);
                next += s.len;
            }
            assert_eq!(next, bytes, "call {} at {p:?}", c.call);
        }
    }
}

fn assert_externals(r: &Run, comm: &str) {
    let ext: Vec<_> = r.gt.components.iter().filter(|c| c.external).collect();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].comm, comm);
    assert!(ext[0].ios.is_empty() && ext[0].pid > 0);
}

#[test]
fn s5_broker_delivers_every_call_to_both_consumers() {
    let r = s5();
    assert_externals(r, "nats-server");
    assert_every_byte_arrives(r);
    // Both consumers got every call: three points after the broker's read per call.
    for c in &r.gt.calls {
        let readers: Vec<&str> = c
            .points
            .iter()
            .filter(|p| p.dir == Dir::Read)
            .map(|p| p.component.as_str())
            .collect();
        assert_eq!(readers, ["nats", "consumer-b", "consumer-a"], "{readers:?}");
    }
}

#[test]
fn s6_tls_hops_carry_the_plaintext_unchanged() {
    let r = s6();
    assert_externals(r, "stunnel4");
    assert_every_byte_arrives(r);
    // stunnel passes plaintext through: what goes in on one side of a service comes out on the
    // other at the same flow offsets, stream header included.
    let sc = scenario::s6();
    let t = &sc.topology;
    let stunnel = t
        .comps
        .iter()
        .find(|c| c.kind == Kind::External(External::Stunnel))
        .unwrap();
    for (&i, &o) in stunnel.inputs.iter().zip(&stunnel.outputs) {
        let (li, lo) = (&t.links[i], &t.links[o]);
        let (writer, reader) = (&t.comps[li.from].name, &t.comps[lo.to].name);
        let sent = flow(r, writer, Dir::Write, &li.name);
        let got = flow(r, reader, Dir::Read, &lo.name);
        assert!(!sent.is_empty());
        assert_eq!(sent, got, "{writer} → stunnel → {reader}");
        let total = |name: &str, dir, link: &str| -> u64 {
            let log = r.gt.component(name).unwrap();
            log.ios
                .iter()
                .filter(|io| io.dir == dir && io.link == link)
                .map(|io| io.len)
                .sum()
        };
        assert_eq!(
            total(writer, Dir::Write, &li.name),
            total(reader, Dir::Read, &lo.name)
        );
    }
}

#[test]
fn oracle_scores_perfectly_through_a_broker_and_tls_proxies() {
    for r in [s5(), s6()] {
        assert_perfect(&score(r, &oracle_records(r), Observes::ALL, "oracle"));
        let writes = oracle::records(&r.gt, &r.calls, Observes::WRITES);
        assert_perfect(&score(r, &writes, Observes::WRITES, "oracle, writes only"));
    }
    // Per call: producer → nats, nats residence and transit to each consumer.
    assert_eq!(
        score(s5(), &oracle_records(s5()), Observes::ALL, "oracle").hops_exist,
        3 * 5
    );
}

#[test]
fn a_shifted_external_sighting_shows_on_its_chain() {
    for (r, into, untouched) in [
        (s5(), "consumer-a", "consumer-b"),
        (s6(), "c0-relay", "c0-sink"),
    ] {
        let external = |pid: u32| r.gt.components.iter().any(|c| c.external && c.pid == pid);
        let into_pid = r.gt.component(into).unwrap().pid;
        let is_target = |h: &HopRecord| external(h.from.pid) && h.to.pid == into_pid;
        // One record: one chain of one moment is off by 50 µs.
        let mut one = oracle_records(r);
        let at = one.iter().position(is_target).unwrap();
        one[at].from.t_ns -= 50_000;
        one[at].latency_ns += 50_000;
        let s = score(r, &one, Observes::ALL, "one external sighting 50 µs early");
        // Its chain's truth may have been preempted: then the error is set aside.
        assert_eq!(
            (s.false_matches, s.error_p50_ns, s.error_max_all_ns),
            (0, 0, 50_000)
        );
        assert!(s.error_max_ns == 50_000 || s.preempted_truth > 0);
        assert_eq!(s.correct, s.records);
        // Every record of that hop: its chains are off, the others are not.
        let shifted: Vec<HopRecord> = oracle_records(r)
            .into_iter()
            .map(|mut h| {
                if is_target(&h) {
                    h.from.t_ns -= 50_000;
                    h.latency_ns += 50_000;
                }
                h
            })
            .collect();
        let s = score(r, &shifted, Observes::ALL, "external sightings 50 µs early");
        assert_eq!((s.false_matches, s.error_max_all_ns), (0, 50_000));
        for h in &s.hops {
            if h.to == format!("{into}:read") {
                assert_eq!(h.error_p50_ns, 50_000, "{h:?}");
            }
            if h.to == format!("{untouched}:read") {
                assert_eq!(h.error_p99_ns, 0, "{h:?}");
            }
        }
        assert!(s
            .misses(&SAME_NODE_BAR)
            .iter()
            .any(|m| m.contains("latency error")));
    }
}

#[test]
fn errors_on_preempted_truth_are_set_aside() {
    let r = s1();
    // Flag one syscall in seven as preempted (on top of any the run flagged itself), and
    // rebuild the truth index from the call audio (the run's WAV files are gone).
    let dir = run::workdir("selftest-preempted").unwrap();
    let mut gt = r.gt.clone();
    for (ct, c) in gt.calls.iter_mut().zip(&r.calls) {
        assert_eq!(ct.call, c.call);
        ct.wav = dir.join(format!("call-{}.wav", c.call));
        c.audio.write_wav(&ct.wav).unwrap();
    }
    for log in &mut gt.components {
        for (i, io) in log.ios.iter_mut().enumerate() {
            io.preempted |= i % 7 == 3;
        }
    }
    let calls = CallTruthIndex::build(&gt, FingerprintConfig::default()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let marked = Run { gt, calls };
    // The syscall a sighting's window ended in (S1: one link per component and direction).
    let preempted = |s: &Sighting| {
        let at = s.pos.unwrap() - 1;
        let log = marked
            .gt
            .components
            .iter()
            .find(|c| c.pid == s.pid)
            .unwrap();
        log.ios
            .iter()
            .find(|io| {
                io.dir == s.dir && io.fd == s.fd && io.flow_off <= at && at < io.flow_off + io.len
            })
            .unwrap()
            .preempted
    };
    let mut affected = 0;
    let records: Vec<HopRecord> = oracle_records(&marked)
        .into_iter()
        .map(|mut h| {
            if preempted(&h.from) || preempted(&h.to) {
                affected += 1;
                h.to.t_ns += 100_000;
                h.latency_ns += 100_000;
            }
            h
        })
        .collect();
    assert!(affected > 0 && affected < records.len());
    let s = score(
        &marked,
        &records,
        Observes::ALL,
        "preempted truth 100 µs off",
    );
    assert_eq!((s.correct, s.false_matches), (records.len(), 0));
    assert_eq!(s.hops_found, s.hops_exist);
    assert_eq!(s.preempted_truth, affected);
    assert_eq!((s.error_p50_ns, s.error_p99_ns, s.error_max_ns), (0, 0, 0));
    assert_eq!(s.error_max_all_ns, 100_000);
    assert!(s.hops.iter().all(|h| h.error_p99_ns == 0), "{:?}", s.hops);
    assert!(s.misses(&SAME_NODE_BAR).is_empty());
    // Correct records on preempted truth still count for coverage.
    let full = score(&marked, &oracle_records(&marked), Observes::ALL, "oracle");
    assert_eq!(s.coverage_min, full.coverage_min);
    assert_eq!(full.error_max_all_ns, 0);
}

/// The relays on other TLS stacks (S12 Go, S13 Java, S14 rustls, S15 two rustls sidecars, S16
/// a rustls broker fanning out to two sinks) pass every byte through, and the oracle scores
/// perfectly both as the truth has it (every point) and as a tracer that does not see those
/// stacks does (one hop across each).
#[test]
fn tls_stack_relays_deliver_every_byte_and_the_oracle_scores_perfectly() {
    for (id, comm, hops_all, hops_unseen) in [
        ("S12", "go-tls-relay", 6, 4),
        ("S13", "java", 6, 4),
        ("S14", "rustls-relay", 14, 10),
        ("S15", "rustls-relay", 10, 6),
        ("S16", "rustls-relay", 10, 4),
    ] {
        let r = &run_once(id);
        for ext in r.gt.components.iter().filter(|c| c.external) {
            assert_eq!(ext.comm, comm, "{id}");
        }
        assert_every_byte_arrives(r);
        let all = score(r, &oracle_records(r), Observes::ALL, "oracle");
        assert_perfect(&all);
        assert_eq!(all.hops_exist, hops_all, "{id}");
        let unseen = oracle::records(&r.gt, &r.calls, Observes::READS_AND_WRITES);
        let s = score(
            r,
            &unseen,
            Observes::READS_AND_WRITES,
            "oracle, no other TLS stack",
        );
        assert_perfect(&s);
        assert_eq!(s.hops_exist, hops_unseen, "{id}");
    }
}
