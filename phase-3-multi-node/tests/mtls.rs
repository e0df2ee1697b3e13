//! Mutual TLS between agents and a real collector on loopback: an agent with a certificate the
//! collector's CA signed delivers everything once; an agent without a certificate, with one
//! another CA signed, or speaking plaintext delivers nothing and keeps retrying, its failure in
//! one line; unusable PEM files are refused at start, naming the file.

use agent::clock::Skew;
use harness::pki::{write_test_pki, TestPki, TEST_AGENT_NODE};
use phase_3_multi_node::collector::{serve, Service};
use phase_3_multi_node::mtls::{ClientTls, ServerTls};
use phase_3_multi_node::proto::NodeSighting;
use phase_3_multi_node::uplink::{Uplink, UplinkConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, ClientTlsConfig};

/// Its files live as long as the directory.
fn pki() -> (tempfile::TempDir, TestPki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = write_test_pki(dir.path()).unwrap();
    (dir, pki)
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A TLS collector on a free port, until the test ends.
fn start_collector(pki: &TestPki) -> (Service, SocketAddr) {
    let tls = ServerTls::from_files(&pki.collector_cert, &pki.collector_key, &pki.ca).unwrap();
    let (service, addr) = (Service::keeping_sightings(), free_addr());
    tokio::spawn(serve(
        service.clone(),
        addr,
        Some(tls),
        std::future::pending(),
    ));
    (service, addr)
}

fn agent(node: &str, collector: String, tls: Option<ClientTls>) -> Uplink {
    Uplink::start(UplinkConfig {
        node: node.into(),
        collector,
        capacity: 10_000,
        sync_every: Duration::from_millis(10),
        skew: Skew::default(),
        tls,
    })
}

/// Batch `b`: 10 sightings, signatures `b * 1000 ..`.
fn batch(b: u64) -> Vec<NodeSighting> {
    (0..10)
        .map(|i| NodeSighting {
            signature: b * 1000 + i,
            t_ns: 0,
            pid: 42,
            comm: "hx-relay".into(),
            fd: 3,
            write: true,
            pos: i,
            link: "tcp:10.0.0.1:4000-10.0.0.2:5000".into(),
            ..Default::default()
        })
        .collect()
}

fn received(collector: &Service, node: &str) -> HashMap<u64, usize> {
    let mut seen = HashMap::new();
    for r in collector.state.lock().unwrap().received.iter().flatten() {
        if r.node == node {
            *seen.entry(r.sighting.signature).or_default() += 1;
        }
    }
    seen
}

/// Batches spaced beyond `sync_every`, so that clock exchanges ride with them and the
/// collector can map their sightings.
async fn push_paced(uplink: &Uplink, n: u64) {
    for b in 0..n {
        uplink.push(batch(b));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

/// Until `uplink` has its batches acknowledged and the collector holds `n` of its sightings
/// (it holds them once it can map them onto its clock).
async fn delivered(uplink: &Uplink, collector: &Service, node: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while uplink.pending() > 0 || received(collector, node).len() < n {
        assert!(
            Instant::now() < deadline,
            "{} batches unacknowledged, {} sightings held; last error: {:?}",
            uplink.pending(),
            received(collector, node).len(),
            uplink.last_error()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn https(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn certified(pki: &TestPki) -> ClientTls {
    ClientTls::from_files(&pki.ca, &pki.agent_cert, &pki.agent_key, "localhost").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_agent_delivers_everything_once() {
    let (_dir, pki) = pki();
    let (collector, addr) = start_collector(&pki);
    let uplink = agent(TEST_AGENT_NODE, https(addr), Some(certified(&pki)));
    push_paced(&uplink, 50).await;
    delivered(&uplink, &collector, TEST_AGENT_NODE, 500).await;
    let seen = received(&collector, TEST_AGENT_NODE);
    assert_eq!(seen.len(), 500, "every sighting arrived");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    assert_eq!(uplink.counters().batches_sent, 50);
}

/// Pushes to `uplink` while a certified agent delivers alongside, then checks that `uplink`
/// delivered nothing, holds all of it, and keeps failing to connect; returns its last error.
async fn refused(pki: &TestPki, collector: &Service, addr: SocketAddr, uplink: Uplink) -> String {
    let good = agent(TEST_AGENT_NODE, https(addr), Some(certified(pki)));
    for b in 0..20 {
        uplink.push(batch(b));
    }
    push_paced(&good, 20).await;
    delivered(&good, collector, TEST_AGENT_NODE, 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = uplink.counters().connect_failures;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = uplink.counters();
    assert!(
        received(collector, "bad").is_empty(),
        "the collector holds none"
    );
    assert_eq!(received(collector, TEST_AGENT_NODE).len(), 200);
    assert_eq!((c.batches_sent, uplink.pending()), (0, 20), "{c:?}");
    assert!(c.connect_failures > early, "still retrying: {c:?}");
    // Refused in the handshake or at the first call, never counted connected, and backing off
    // (5 to 7 tries in these 1.8 s, the delays jittered) rather than reconnecting at once.
    assert_eq!(c.reconnects, 0, "{c:?}");
    assert!(c.connect_failures < 20, "{c:?}");
    let error = uplink.last_error().expect("the failure is reported");
    assert!(!error.contains('\n'), "{error}");
    eprintln!("{c:?}\n{error}");
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_client_certificate_delivers_nothing() {
    let (_dir, pki) = pki();
    let (collector, addr) = start_collector(&pki);
    let ca = Certificate::from_pem(std::fs::read(&pki.ca).unwrap());
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let uplink = agent("bad", https(addr), Some(tls.into()));
    refused(&pki, &collector, addr, uplink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_certified_by_another_ca_delivers_nothing() {
    let (_dir, pki) = pki();
    let (collector, addr) = start_collector(&pki);
    let tls = ClientTls::from_files(
        &pki.ca,
        &pki.other_agent_cert,
        &pki.other_agent_key,
        "localhost",
    )
    .unwrap();
    let uplink = agent("bad", https(addr), Some(tls));
    refused(&pki, &collector, addr, uplink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_agent_delivers_nothing() {
    let (_dir, pki) = pki();
    let (collector, addr) = start_collector(&pki);
    let uplink = agent("bad", format!("http://{addr}"), None);
    refused(&pki, &collector, addr, uplink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plaintext_address_is_refused_not_sent_in_the_clear() {
    let (_dir, pki) = pki();
    let (collector, addr) = start_collector(&pki);
    let uplink = agent("bad", format!("http://{addr}"), Some(certified(&pki)));
    let error = refused(&pki, &collector, addr, uplink).await;
    assert!(error.contains("must be https://"), "{error}");
}

#[test]
fn unusable_pem_files_are_refused_naming_the_file() {
    let (_dir, pki) = pki();
    let missing = pki.ca.with_file_name("missing.crt");
    let e = ClientTls::from_files(&missing, &pki.agent_cert, &pki.agent_key, "localhost");
    let e = format!("{:#}", e.unwrap_err());
    assert!(e.starts_with(&format!("{}: ", missing.display())), "{e}");
    // A key where a certificate belongs, and the other way round.
    let e = ServerTls::from_files(&pki.collector_key, &pki.collector_key, &pki.ca);
    let e = format!("{:#}", e.unwrap_err());
    let want = format!("{}: not a PEM certificate", pki.collector_key.display());
    assert_eq!(e, want);
    let e = ServerTls::from_files(&pki.collector_cert, &pki.collector_cert, &pki.ca);
    let e = format!("{:#}", e.unwrap_err());
    let want = format!(
        "{}: not an unencrypted PEM private key",
        pki.collector_cert.display()
    );
    assert_eq!(e, want);
    let e = ClientTls::from_files(&pki.ca, &pki.agent_cert, &pki.collector_key, "localhost");
    let e = format!("{:#}", e.unwrap_err());
    let want = format!(
        "{}: key does not match the certificate in {}",
        pki.collector_key.display(),
        pki.agent_cert.display()
    );
    assert_eq!(e, want);
    // Debug never shows a key.
    assert_eq!(format!("{:?}", certified(&pki)), "ClientTls { .. }");
}
