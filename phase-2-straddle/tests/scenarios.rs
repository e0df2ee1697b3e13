//! Phase 2 against the harness's scenarios, scored against the ground truth the pipelines
//! record: every hop found, coverage ≥ 95 % of measurable seconds at every hop, no false match.

use agent::counters::in_health;
use harness::demo::TracedRun;
use harness::scenario;
use harness::score::TEST_BAR;
use phase_2_straddle::demo::{trace_scenario_phase2, trace_scenario_phase2_with};
use shared::FingerprintConfig;
use std::path::Path;

const EXE: &str = env!("CARGO_BIN_EXE_phase-2-straddle");

fn run(sc: scenario::Scenario) -> TracedRun {
    let run = trace_scenario_phase2(&sc, Path::new(EXE), &FingerprintConfig::default()).unwrap();
    eprintln!("{}\n{}", run.score, run.health);
    let misses = run.score.misses(&TEST_BAR);
    assert!(misses.is_empty(), "{}: {misses:?}", sc.id);
    assert!(run.health.contains(" drops=0 "), "{}", run.health);
    // Our components move nothing before the tracer is attached. An external one may, on any
    // of its connections: stunnel reads its TLS peer's session tickets whenever they come, the
    // Java and rustls relays block in a read of each connection, at attach time too.
    let t = &sc.topology;
    let external = |c: usize| matches!(t.comps[c].kind, scenario::Kind::External(_));
    let external_links = t
        .links
        .iter()
        .filter(|l| external(l.from) || external(l.to))
        .count() as u64;
    let unseen = counter(&run.health, "unseen_calls");
    assert!(unseen <= 2 * external_links, "{}", run.health);
    run
}

/// A counter's value in the health line.
fn counter(health: &str, name: &str) -> u64 {
    in_health(health, name).unwrap_or_else(|| panic!("{name} in {health}"))
}

#[test]
fn s1_pipe_chain() {
    let r = run(scenario::s1());
    assert_eq!(
        r.score.hops_exist, 10,
        "transit and residence at every point of two chains"
    );
}

#[test]
fn s2_rechunked_moments_straddling_calls_are_found() {
    let r = run(scenario::s2());
    // Every relay, the 160-byte one included, sees every moment the source sent.
    let per_hop: Vec<usize> = r
        .score
        .hops
        .iter()
        .filter(|h| h.call == 0)
        .map(|h| h.matched)
        .collect();
    let (lo, hi) = (per_hop.iter().min().unwrap(), per_hop.iter().max().unwrap());
    assert!(*lo as f64 >= 0.98 * *hi as f64, "{per_hop:?}");
}

#[test]
fn s3_envelopes_batched_and_multiplexed() {
    let r = run(scenario::s3());
    assert_eq!(r.score.hops_exist, 15);
}

#[test]
fn s4_unix_tcp4_tcp6_with_vectors_and_messages() {
    run(scenario::s4());
}

#[test]
fn s7_quiet_tones_shared_hold_music_and_fan_out() {
    let r = run(scenario::s7());
    // Both consumers of the broker's fan-out are hops of every call.
    for consumer in ["consumer-a:read", "consumer-b:read"] {
        assert_eq!(
            r.score.hops.iter().filter(|h| h.to == consumer).count(),
            6,
            "{consumer}"
        );
    }
    assert!(r.health.contains("refused_repeats="), "{}", r.health);
}

#[test]
fn s8_many_calls_multiplexed_and_on_many_connections() {
    let r = run(scenario::s8());
    assert_eq!(r.score.hops_exist, 32 * 3);
}

#[test]
fn s5_a_real_broker_is_a_measured_component() {
    let r = run(scenario::s5());
    // Per call: producer → broker, broker residence to each consumer, broker → each consumer.
    assert_eq!(r.score.hops_exist, 15);
    let broker =
        |h: &&harness::score::HopScore| h.from.starts_with("nats") || h.to.starts_with("nats");
    assert_eq!(
        r.score.hops.iter().filter(broker).count(),
        15,
        "{:?}",
        r.score.hops
    );
    assert!(
        r.measured.table().contains("nats-server"),
        "{}",
        r.measured.table()
    );
}

#[test]
fn s6_tls_hops_are_measured_on_their_plaintext() {
    let r = run(scenario::s6());
    let counter = |name: &str| counter(&r.health, name);
    // Both variants: our ends call SSL_write_ex/SSL_read_ex, stunnel SSL_write/SSL_read; more
    // SSL calls were scanned than ours alone made.
    let sc = scenario::s6();
    let tls_links: Vec<&str> = sc
        .topology
        .links
        .iter()
        .filter(|l| l.spec.kind == scenario::LinkKind::Tls)
        .map(|l| l.name.as_str())
        .collect();
    let ours =
        r.gt.components
            .iter()
            .flat_map(|c| &c.ios)
            .filter(|io| tls_links.contains(&io.link.as_str()))
            .count() as u64;
    assert!(counter("tls_calls") > ours, "ours {ours}: {}", r.health);
    assert_eq!(
        counter("tls_sockets"),
        8,
        "4 TLS connections, both ends: {}",
        r.health
    );
    assert!(counter("ciphertext_skipped") > 0, "{}", r.health);
    // Outside SSL_read/SSL_write, TLS 1.3 moves only the session tickets OpenSSL's servers send
    // right after the handshake (two) and the close_notify alert at shutdown (type 23 on the
    // wire, like every TLS 1.3 record): at most three per socket end, where an unprobed link
    // shows one per record (about 1000 here).
    assert!(
        counter("tls_unprobed") <= 3 * counter("tls_sockets"),
        "{}",
        r.health
    );
    assert_eq!(counter("tls_unattributed"), 0, "{}", r.health);
}

#[test]
fn s6_without_the_uprobes_the_encrypted_hops_are_not_matched() {
    let sc = scenario::s6();
    let r = trace_scenario_phase2_with(&sc, Path::new(EXE), &FingerprintConfig::default(), false)
        .unwrap();
    eprintln!("{}\n{}", r.score, r.health);
    // Ciphertext looks random: once in a few MiB a window passes the audio test, and the
    // tracer rightly matches those bytes across the link (about one per run of S6 in four).
    // It must never pair audio wrongly.
    assert_eq!(
        r.score.false_matches, r.score.false_not_audio,
        "{:?}",
        r.score.false_examples
    );
    assert!(r.score.false_not_audio <= 4, "{:?}", r.score.false_examples);
    // Only the plaintext hops remain: stunnel → relay, relay residence, relay → stunnel.
    let found: Vec<(&str, &str)> = r
        .score
        .hops
        .iter()
        .filter(|h| h.matched > 0)
        .map(|h| (h.from.as_str(), h.to.as_str()))
        .collect();
    assert!(
        found
            .iter()
            .all(|(from, to)| from.contains("relay") || to.contains("relay")),
        "{found:?}"
    );
    assert!(r.score.hops_found < r.score.hops_exist);
    assert!(
        r.health.contains("tls_probed_processes=off"),
        "{}",
        r.health
    );
    // The encrypted flows show in the counters: application-data records outside SSL calls.
    let unprobed = counter(&r.health, "tls_unprobed");
    assert!(unprobed > 500, "{}", r.health);
}

/// The hops across a TLS stack phase 2 does not see from inside: each from the last sighting
/// of a moment's plaintext before the encrypted stretch (a component's write or read) to the
/// first after it, with `components[i].0`'s sighting on one side and `components[i].1`'s on
/// the other. Every one must be reported, and as opaque.
fn assert_opaque(r: &TracedRun, components: &[(&str, &str)]) {
    let pid = |name: &str| {
        r.gt.component(name)
            .unwrap_or_else(|| panic!("no component {name}"))
            .pid
    };
    for &(from, to) in components {
        let across: Vec<&str> = r
            .records
            .iter()
            .filter(|h| h.from.pid == pid(from) && h.to.pid == pid(to))
            .map(|h| h.kind.as_str())
            .collect();
        assert!(!across.is_empty(), "no hop {from} → {to}");
        assert!(
            across.iter().all(|&k| k == "opaque"),
            "{from} → {to}: {across:?}"
        );
    }
}

#[test]
fn s12_go_tls_is_seen_from_inside_the_go_relay() {
    let r = run(scenario::s12());
    // Per call: source → relay's read (its crypto/tls plaintext), relay residence, relay → sink.
    assert_eq!(r.score.hops_exist, 6, "{:?}", r.score.hops);
    assert!(
        r.records.iter().all(|h| h.kind.as_str() != "opaque"),
        "an opaque hop where Go is seen from inside"
    );
    assert!(counter(&r.health, "go_tls_calls") > 0, "{}", r.health);
}

#[test]
fn s13_jdk_tls_a_relay_encrypting_inside_the_jdk_is_one_opaque_hop() {
    let r = run(scenario::s13());
    // Per call: source → relay, relay's read → sink (opaque).
    assert_eq!(r.score.hops_exist, 4, "{:?}", r.score.hops);
    assert_opaque(&r, &[("java-relay", "c0-sink"), ("java-relay", "c1-sink")]);
}

#[test]
fn s14_rustls_around_our_relay_is_an_opaque_hop_each_way() {
    let r = run(scenario::s14());
    // Per call: source → rustls's write (opaque), → relay, relay residence, → rustls's read,
    // rustls's read → sink (opaque).
    assert_eq!(r.score.hops_exist, 10, "{:?}", r.score.hops);
    assert_opaque(
        &r,
        &[
            ("c0-src", "rustls-relay"),
            ("c1-src", "rustls-relay"),
            ("rustls-relay", "c0-sink"),
            ("rustls-relay", "c1-sink"),
        ],
    );
}

#[test]
fn s15_sidecars_tls_between_two_proxies_is_one_opaque_hop() {
    let r = run(scenario::s15());
    // Per call: source → proxy A, A's read → B's write (opaque), B → sink.
    assert_eq!(r.score.hops_exist, 6, "{:?}", r.score.hops);
    assert_opaque(&r, &[("proxy-a", "proxy-b")]);
}

#[test]
fn s16_a_tls_broker_fanning_out_is_one_opaque_hop_to_each_subscriber() {
    let r = run(scenario::s16());
    // Per call: the source's SSL_write_ex → each sink's SSL_read_ex, across the broker (opaque).
    assert_eq!(r.score.hops_exist, 4, "{:?}", r.score.hops);
    assert_opaque(
        &r,
        &[
            ("c0-src", "c0-sink-a"),
            ("c0-src", "c0-sink-b"),
            ("c1-src", "c1-sink-a"),
            ("c1-src", "c1-sink-b"),
        ],
    );
    // A subscriber's read is no other's entry: a hop between two sinks would pair a far end
    // with its sibling.
    let sinks: Vec<u32> = scenario::s16()
        .topology
        .comps
        .iter()
        .filter(|c| c.kind == scenario::Kind::Sink)
        .map(|c| r.gt.component(&c.name).unwrap().pid)
        .collect();
    let between: Vec<_> = r
        .records
        .iter()
        .filter(|h| sinks.contains(&h.from.pid) && sinks.contains(&h.to.pid))
        .collect();
    assert!(between.is_empty(), "hops between sinks: {between:?}");
}
