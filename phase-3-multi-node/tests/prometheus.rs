//! The collector's metrics endpoint scraped by a real Prometheus server (Debian's package, run
//! on its own with a temporary config and storage): the hop series arrive with their labels
//! intact (escaped values included), counts match the observations, and a median computed by
//! Prometheus from the buckets lands in the bucket the observations were in. `promtool check
//! metrics` finds nothing to say about the page.

use phase_3_multi_node::endpoints::{serve, Health};
use phase_3_multi_node::metrics::{HopLabels, Metrics, Peer};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// Kills the server when the test ends, panics included.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// GET `path` with `query` parameters: (Content-Type, body), whatever the status (Prometheus
/// explains a refused query in its body).
fn get(
    addr: SocketAddr,
    path: &str,
    query: &[(&str, &str)],
) -> Result<(String, String), ureq::Error> {
    let mut response = ureq::get(format!("http://{addr}{path}"))
        .query_pairs(query.iter().copied())
        .config()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .call()?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((content_type, response.body_mut().read_to_string()?))
}

/// An instant query's result vector: (labels, value), or an error while Prometheus starts.
fn query(prometheus: SocketAddr, q: &str) -> Result<Vec<(Value, f64)>, String> {
    let (head, body) =
        get(prometheus, "/api/v1/query", &[("query", q)]).map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {head}\n{body}"))?;
    if json["status"] != "success" {
        return Err(body);
    }
    Ok(json["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (r["metric"].clone(), value)
        })
        .collect())
}

/// Processes on two nodes, with the node labels a collector has with --metrics-node-labels.
fn labels(source: &str, destination: &str, kind: &'static str) -> HopLabels {
    let peer = |name: &str, node: &str| Peer {
        name: name.into(),
        node: node.into(),
        ..Default::default()
    };
    HopLabels {
        src: peer(source, "node-a"),
        dst: peer(destination, "node-b"),
        kind,
    }
}

#[test]
fn prometheus_scrapes_hop_latencies() {
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: run `bash scripts/setup.sh`"
    );
    let metrics = Metrics::default();
    // A transit with one negative latency (clock alignment within its bound), median in
    // (1 ms, 2.5 ms]; and a residence in a process whose name needs escaping, in (10, 25] ms.
    let transit = labels("hx-source", "hx-relay", "transit");
    for ns in [1_100_000, 1_200_000, 1_300_000, -30_000] {
        metrics.observe_hop(&transit, ns, 150_000);
    }
    let odd = "hx \"odd\"\\name\n2";
    let residence = labels("hx-relay", odd, "residence");
    for ns in [20_000_000, 21_000_000, 22_000_000] {
        metrics.observe_hop(&residence, ns, 0);
    }
    metrics.set_node("node-b", 500, 3, 1, Some(-50_000_000), Some(120_000));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = Health::waiting_for("nothing");
    let endpoint = runtime.spawn(serve(listener, metrics.registry(), health, async {
        stopped.await.ok();
    }));

    let (content_type, page) = get(target, "/metrics", &[]).unwrap();
    assert!(
        content_type
            .to_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{content_type}"
    );
    // promtool's linter accepts the page too, escaped label values and all.
    let mut promtool = Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let linted = promtool.wait_with_output().unwrap();
    assert!(
        linted.status.success() && linted.stdout.is_empty() && linted.stderr.is_empty(),
        "{}{}\n{page}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: collector\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let prometheus: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = dir.path().join("prometheus.log");
    let _server = Server(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    // Both hops scraped, within a bound: startup plus a scrape interval take a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        match query(prometheus, "audio_hop_latency_seconds_count") {
            Ok(counts) if counts.len() == 2 => break counts,
            // The targets page says why a scrape failed (e.g. a parse error), the log why
            // Prometheus did not start.
            last => assert!(
                Instant::now() < deadline,
                "no scrape within 30 s: {last:?}\n{:?}\n{}",
                get(prometheus, "/api/v1/targets", &[]).map(|(_, body)| body),
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(250));
    };

    let find = |series: &[(Value, f64)], hop: &HopLabels| {
        let found: Vec<f64> = series
            .iter()
            .filter(|(m, _)| {
                m["src_node"] == hop.src.node.as_str()
                    && m["src_name"] == hop.src.name.as_str()
                    && m["dst_node"] == hop.dst.node.as_str()
                    && m["dst_name"] == hop.dst.name.as_str()
                    && m["kind"] == hop.kind
                    && m["job"] == "collector"
            })
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{hop:?} in {series:?}");
        found[0]
    };
    assert_eq!(find(&counts, &transit), 4.0);
    assert_eq!(find(&counts, &residence), 3.0);

    let medians = query(
        prometheus,
        "histogram_quantile(0.5, audio_hop_latency_seconds_bucket)",
    )
    .unwrap();
    let transit_median = find(&medians, &transit);
    assert!(
        0.001 < transit_median && transit_median <= 0.0025,
        "{transit_median}"
    );
    let residence_median = find(&medians, &residence);
    assert!(
        0.010 < residence_median && residence_median <= 0.025,
        "{residence_median}"
    );

    let bounds = query(prometheus, "audio_hop_error_bound_seconds_count").unwrap();
    assert_eq!(find(&bounds, &transit), 4.0);
    let offset = query(
        prometheus,
        r#"audio_node_clock_offset_seconds{node="node-b"}"#,
    )
    .unwrap();
    assert_eq!(offset.len(), 1);
    assert_eq!(offset[0].1, -0.05);
    let lost = query(prometheus, "audio_agent_lost_sightings_total").unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].1, 3.0);

    stop.send(()).unwrap();
    runtime.block_on(endpoint).unwrap().unwrap();
}
