//! Only real agents get in, with real processes: a collector process of this crate's binary
//! and agent processes tracing a sleeping process (loading eBPF: needs root), plus raw gRPC
//! calls for what no honest agent sends. Over mutual TLS an agent claiming another node than
//! its certificate's is refused, counted, and gets no series, while an honest one delivers;
//! without TLS, node names beyond `--max-nodes` are refused, counted, and get no series.

use harness::pki::{write_test_pki, TestPki, TEST_AGENT_NODE};
use phase_3_multi_node::mtls::ClientTls;
use phase_3_multi_node::proto::collector_client::CollectorClient;
use phase_3_multi_node::proto::{Batch, SyncRequest};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;
use tonic::Code;

const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");

/// Killed when the test ends, panics included.
struct Process(Option<Child>);

impl Process {
    fn spawn(args: &[&str]) -> Self {
        let child = Command::new(EXE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self(Some(child))
    }

    /// Waits for it to exit by itself, at most `limit`.
    fn exit(mut self, limit: Duration) -> Output {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().ok();
                panic!("{EXE} still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }

    /// SIGTERM (a collector prints its health line then), and its output.
    fn stop(self) -> Output {
        let pid = self.0.as_ref().unwrap().id();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        self.exit(Duration::from_secs(10))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A collector process on free ports, once it accepts connections: (it, gRPC, metrics).
fn collector(extra: &[&str]) -> (Process, SocketAddr, SocketAddr) {
    let (grpc, metrics) = (free_addr(), free_addr());
    let (g, m) = (grpc.to_string(), metrics.to_string());
    let mut args = vec!["collector", "--listen", &g, "--metrics", &m];
    args.extend(["--report-every", "0"]);
    args.extend(extra);
    let process = Process::spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(grpc).is_err() || TcpStream::connect(metrics).is_err() {
        assert!(Instant::now() < deadline, "the collector did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (process, grpc, metrics)
}

fn tls_flags(pki: &TestPki) -> Vec<String> {
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    vec![
        "--tls-cert".into(),
        path(&pki.collector_cert),
        "--tls-key".into(),
        path(&pki.collector_key),
        "--tls-client-ca".into(),
        path(&pki.ca),
    ]
}

/// The collector's metrics page.
fn scrape(metrics: SocketAddr) -> String {
    ureq::get(format!("http://{metrics}/metrics"))
        .config()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

/// Scrapes until `ready` holds for the page (the collector updates its metrics every 200 ms).
fn scrape_until(metrics: SocketAddr, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(metrics);
        if ready(&page) || Instant::now() > deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(page: &str, reason: &str) -> u64 {
    let series = format!("audio_collector_refused_requests_total{{reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// Node names that have a per-node series.
fn nodes_with_series(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("audio_agent_sightings_total{node=\""))
        .map(|l| l.split('"').next().unwrap().to_string())
        .collect()
}

/// A batch claiming to be `node`'s, sent straight over gRPC.
/// A batch claiming `node`, addressed to the collector `instance` (0 where the refusal comes
/// first).
async fn send_as(
    client: &mut CollectorClient<tonic::transport::Channel>,
    node: &str,
    instance: u64,
) -> Code {
    let batch = Batch {
        node: node.into(),
        seq: 1,
        collector: instance,
        ..Default::default()
    };
    match client.send(batch).await {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(!status.message().contains('\n'), "{status:?}");
            status.code()
        }
    }
}

/// An agent process for `node` presenting the test PKI's agent certificate (node-a's),
/// tracing a sleeping process for 2 s.
fn agent(node: &str, grpc: SocketAddr, pki: &TestPki, target: u32) -> Process {
    let (url, pid) = (format!("https://{grpc}"), target.to_string());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.agent_cert), path(&pki.agent_key));
    Process::spawn(&[
        "agent",
        "--node",
        node,
        "--collector",
        &url,
        "--pid",
        &pid,
        "--duration",
        "2",
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_claiming_another_node_is_refused_counted_and_gets_no_series() {
    let dir = tempfile::tempdir().unwrap();
    let pki = write_test_pki(dir.path()).unwrap();
    let flags = tls_flags(&pki);
    let (collector, grpc, metrics) = collector(&flags.iter().map(|s| &**s).collect::<Vec<_>>());
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let honest = agent(TEST_AGENT_NODE, grpc, &pki, sleeper.id());
    let impostor = agent("node-b", grpc, &pki, sleeper.id());

    // What no honest agent sends: a batch and a clock exchange for node-b on node-a's
    // certificate, and an empty node name.
    let tls = ClientTls::from_files(&pki.ca, &pki.agent_cert, &pki.agent_key, "localhost");
    let endpoint = Endpoint::from_shared(format!("https://{grpc}")).unwrap();
    let channel = endpoint.tls_config(tls.unwrap().into()).unwrap();
    let mut client = CollectorClient::new(channel.connect().await.unwrap());
    assert_eq!(
        send_as(&mut client, "node-b", 0).await,
        Code::PermissionDenied
    );
    assert_eq!(send_as(&mut client, "", 0).await, Code::PermissionDenied);
    let sync = SyncRequest {
        node: "node-b".into(),
        t1: 0,
    };
    let status = client.sync(sync).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.message(),
        r#"node "node-b" is not this agent's: the client certificate is node "node-a"'s"#
    );

    let honest = honest.exit(Duration::from_secs(30));
    let impostor = impostor.exit(Duration::from_secs(30));
    sleeper.kill().ok();
    sleeper.wait().ok();
    let (honest_out, impostor_out) = (text(&honest.stdout), text(&impostor.stdout));
    eprintln!("honest: {honest_out}{}", text(&honest.stderr));
    eprintln!("impostor: {impostor_out}{}", text(&impostor.stderr));
    assert!(honest.status.success(), "the honest agent delivered");
    assert!(!honest_out.contains("last_error"), "{honest_out}");
    // The impostor delivered nothing, and says why in its health line's last part.
    assert!(!impostor.status.success());
    let health = impostor_out.lines().last().unwrap();
    assert!(health.contains(" batches_sent=0 "), "{health}");
    let last_error = health.split(" | last_error: ").nth(1).expect(health);
    assert!(
        last_error.ends_with(
            r#": refused: node "node-b" is not this agent's: the client certificate is node "node-a"'s"#
        ),
        "{last_error}"
    );

    let page = scrape_until(metrics, |page| {
        nodes_with_series(page) == [TEST_AGENT_NODE] && refused(page, "node_mismatch") >= 4
    });
    assert_eq!(nodes_with_series(&page), [TEST_AGENT_NODE], "{page}");
    assert!(
        !page.contains("node-b"),
        "no series names the claimed node:\n{page}"
    );
    // The three calls above, and each connect of the impostor agent.
    assert!(refused(&page, "node_mismatch") >= 4, "{page}");
    assert_eq!(refused(&page, "node_limit"), 0, "{page}");
    let out = collector.stop();
    let health = text(&out.stdout);
    assert!(
        health.contains(&format!("{TEST_AGENT_NODE}: sightings=")),
        "{health}"
    );
    assert!(!health.contains("node-b"), "{health}");
    assert!(health.contains(" | refused: node_mismatch="), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_beyond_max_nodes_are_refused_counted_and_get_no_series() {
    let (collector, grpc, metrics) = collector(&["--max-nodes", "3"]);
    let endpoint = Endpoint::from_shared(format!("http://{grpc}")).unwrap();
    let mut client = CollectorClient::new(endpoint.connect().await.unwrap());
    let sync = |node: &str| SyncRequest {
        node: node.into(),
        t1: 0,
    };
    // The collector instance batches are addressed to, as an agent learns it.
    let instance = client
        .sync(sync("invented-0"))
        .await
        .unwrap()
        .into_inner()
        .instance;
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(send_as(&mut client, &format!("invented-{i}"), instance).await);
    }
    assert_eq!(codes[..3], [Code::Ok; 3]);
    assert_eq!(codes[3..], [Code::ResourceExhausted; 17]);
    // The nodes admitted still are, clock exchanges included.
    assert_eq!(send_as(&mut client, "invented-1", instance).await, Code::Ok);
    assert!(client.sync(sync("invented-2")).await.is_ok());
    let status = client.sync(sync("invented-3")).await.unwrap_err();
    assert_eq!(
        status.message(),
        r#"node "invented-3" is one too many: the collector admits 3 nodes (--max-nodes)"#
    );

    let page = scrape_until(metrics, |page| refused(page, "node_limit") == 18);
    let mut nodes = nodes_with_series(&page);
    nodes.sort();
    assert_eq!(nodes, ["invented-0", "invented-1", "invented-2"], "{page}");
    assert_eq!(refused(&page, "node_limit"), 18, "{page}");
    assert_eq!(refused(&page, "node_mismatch"), 0, "{page}");
    let health = text(&collector.stop().stdout);
    assert!(
        health.contains("refused: node_mismatch=0 node_limit=18"),
        "{health}"
    );
}
