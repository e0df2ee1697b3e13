//! The operator's endpoints of the real processes: a collector and agent processes of this
//! crate's binary (loading eBPF: needs root) tracing a sleeping process. /healthz answers while
//! an agent loads and runs; /readyz waits for the eBPF programs and a first batch taken by the
//! collector, saying so; both /metrics pages pass `promtool check metrics` and carry the
//! process's own series (build, process, kernel and uplink counters, verifier instruction
//! counts, the matcher's data-quality counts). A busy --metrics address is one line naming it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");
const PROMTOOL: &str = "/usr/bin/promtool";

/// Killed when the test ends, panics included.
struct Process(Child);

impl Process {
    fn spawn(program: &str, args: &[&str]) -> Self {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// GET over HTTP/1.0: (status code, headers, body); `None` while nothing listens.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}

/// GETs `path` until `done` holds for (status, body), at most `limit`; the last answer.
fn poll(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> Option<(u16, String)> {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, _, body)) = get(addr, path) {
            if done(status, &body) {
                return Some((status, body));
            }
            last = Some((status, body));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last
}

/// `promtool check metrics` on a page: its complaints, empty when it has none.
fn promtool(page: &str) -> String {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e}: run `bash scripts/setup.sh`"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.success() {
        true => complaints,
        false => format!("exit {}: {complaints}", out.status),
    }
}

/// The value of the sample line `series` (name and labels, as rendered).
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} in\n{page}"))
}

fn agent(node: &str, collector: SocketAddr, metrics: SocketAddr, pid: u32) -> Process {
    let (url, metrics, pid) = (
        format!("http://{collector}"),
        metrics.to_string(),
        pid.to_string(),
    );
    Process::spawn(
        EXE,
        &[
            "agent",
            "--node",
            node,
            "--collector",
            &url,
            "--pid",
            &pid,
            "--metrics",
            &metrics,
        ],
    )
}

/// What both processes say about themselves.
fn assert_own_series(page: &str) {
    let build = format!(
        r#"audio_tracer_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(page, &build), 1.0);
    assert!(value(page, "process_resident_memory_bytes") > 1e6);
    assert!(value(page, "process_open_fds") > 3.0);
    assert!(value(page, "process_cpu_seconds_total") > 0.0);
    assert!(value(page, "process_start_time_seconds") > 1.6e9);
}

#[test]
fn agent_and_collector_serve_health_readiness_and_metrics_promtool_accepts() {
    let (grpc, collector_metrics) = (free_addr(), free_addr());
    let (g, m) = (grpc.to_string(), collector_metrics.to_string());
    let _collector = Process::spawn(
        EXE,
        &[
            "collector",
            "--listen",
            &g,
            "--metrics",
            &m,
            "--report-every",
            "0",
        ],
    );
    let ready = poll(
        collector_metrics,
        "/readyz",
        Duration::from_secs(10),
        |s, _| s == 200,
    );
    assert_eq!(ready, Some((200, "ready\n".into())));
    let sleeper = Process::spawn("sleep", &["60"]);
    let target = sleeper.0.id();

    // An agent whose collector is not there: alive, attached, and not ready, saying why.
    let (nowhere, lonely_metrics) = (free_addr(), free_addr());
    let _lonely = agent("node-lonely", nowhere, lonely_metrics, target);
    let waiting = poll(
        lonely_metrics,
        "/readyz",
        Duration::from_secs(30),
        |_, body| body.contains("first batch"),
    );
    assert_eq!(
        waiting,
        Some((
            503,
            format!("a first batch taken by the collector at http://{nowhere}\n")
        ))
    );
    assert_eq!(
        get(lonely_metrics, "/healthz").map(|(s, _, b)| (s, b)),
        Some((200, "ok\n".into()))
    );

    // An agent with its collector: ready.
    let agent_metrics = free_addr();
    let _agent = agent("node-a", grpc, agent_metrics, target);
    let ready = poll(agent_metrics, "/readyz", Duration::from_secs(30), |s, _| {
        s == 200
    });
    assert_eq!(ready, Some((200, "ready\n".into())));
    assert_eq!(
        get(agent_metrics, "/healthz").map(|(s, _, b)| (s, b)),
        Some((200, "ok\n".into()))
    );

    // The agent's page once its snapshot (every second) shows the first batch.
    let (_, page) = poll(
        agent_metrics,
        "/metrics",
        Duration::from_secs(10),
        |_, body| {
            body.contains("audio_agent_uplink_batches_sent_total{")
                && !body.contains(r#"audio_agent_uplink_batches_sent_total{node="node-a"} 0"#)
        },
    )
    .unwrap();
    let (_, head, _) = get(agent_metrics, "/metrics").unwrap();
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(promtool(&page), "", "{page}");
    assert_eq!(value(&page, r#"audio_agent_targets{node="node-a"}"#), 1.0);
    assert_eq!(
        value(
            &page,
            r#"audio_agent_kernel_events_total{node="node-a",event="drops"}"#
        ),
        0.0
    );
    assert!(
        value(
            &page,
            r#"audio_agent_uplink_batches_sent_total{node="node-a"}"#
        ) >= 1.0
    );
    assert_eq!(
        value(
            &page,
            r#"audio_agent_uplink_lost_sightings_total{node="node-a"}"#
        ),
        0.0
    );
    for probe in [
        "audio_agent_tls_probe_failures",
        "audio_agent_go_tls_unplaced_processes",
        "audio_agent_go_tls_probe_failures",
    ] {
        assert_eq!(value(&page, &format!(r#"{probe}{{node="node-a"}}"#)), 0.0);
    }
    assert_eq!(
        value(&page, r#"audio_agent_uplink_replicas_live{node="node-a"}"#),
        1.0
    );
    assert_eq!(
        value(
            &page,
            r#"audio_agent_uplink_rerouted_sightings_total{node="node-a"}"#
        ),
        0.0
    );
    assert!(
        value(
            &page,
            r#"audio_agent_program_verified_instructions{node="node-a",program="sys_exit"}"#
        ) > 100.0
    );
    assert_own_series(&page);

    // The collector's page, with node-a's series.
    let (_, page) = poll(
        collector_metrics,
        "/metrics",
        Duration::from_secs(10),
        |_, body| body.contains(r#"audio_agent_sightings_total{node="node-a"}"#),
    )
    .unwrap();
    assert_eq!(promtool(&page), "", "{page}");
    assert_eq!(value(&page, "audio_collector_unmatched_moments_total"), 0.0);
    assert_eq!(
        value(
            &page,
            r#"audio_collector_refused_sightings_total{reason="ambiguous"}"#
        ),
        0.0
    );
    assert_own_series(&page);
}

#[test]
fn a_busy_metrics_address_is_one_line_naming_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let agent = [
        "agent",
        "--node",
        "n1",
        "--collector",
        "http://127.0.0.1:9",
        "--pid",
        "1",
        "--metrics",
        &addr,
    ];
    let collector = [
        "collector",
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        &addr,
        "--duration",
        "5",
    ];
    for args in [&agent[..], &collector[..]] {
        let out = Command::new(EXE).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on {addr}: Address already in use")),
            "{args:?}: {stderr}"
        );
    }
}
