//! The plumbing of the fault tests: a host-only scenario, `agent` and `collector` processes of
//! this crate's binary started and stopped as a cluster would, and what their output says.

use agent::clock::monotonic_ns;
use agent::counters::in_health;
use agent::schema::Dir;
use agent::schema::HopRecord;
use harness::run::listening;
use harness::run::Targets;
use harness::scenario::Scenario;
use harness::score::{CallTruthIndex, Observes, Score};
use harness::supervised::{Exited, Supervised};
use harness::truth::GroundTruth;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const EXE: &str = env!("CARGO_BIN_EXE_phase-3-multi-node");

/// One test at a time: each runs a pipeline, agents and a collector on a small machine, and
/// asserts the pipeline's pace.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// S1 (two calls, each source → relay → relay → sink over pipes), paced to 10 s of wall time.
pub fn scenario() -> Scenario {
    let mut sc = harness::scenario::s1();
    sc.speed = 2.0;
    sc
}

/// How long the scenario's audio plays.
pub fn audio_wall(sc: &Scenario) -> Duration {
    Duration::from_secs_f64(sc.seconds / sc.speed)
}

/// Go → `run()` returned may take this much longer than the audio: the pipeline was not slowed.
pub fn on_time(sc: &Scenario) -> Duration {
    audio_wall(sc).mul_f64(1.5)
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], harness::run::free_port().unwrap()))
}

/// A collector process on `addr`, once it listens.
pub fn collector(addr: SocketAddr, json: &Path, ack_delay_ms: u64) -> Supervised {
    collector_with(addr, json, ack_delay_ms, &[])
}

/// As [`collector`], with more flags.
pub fn collector_with(
    addr: SocketAddr,
    json: &Path,
    ack_delay_ms: u64,
    more: &[&str],
) -> Supervised {
    let mut cmd = Command::new(EXE);
    cmd.args([
        "collector",
        "--listen",
        &addr.to_string(),
        "--report-every",
        "0",
    ])
    .args(["--ack-delay-ms", &ack_delay_ms.to_string()])
    .args(["--log-format", "json"])
    .args(more)
    .arg("--json")
    .arg(json);
    let mut p = Supervised::spawn(&format!("the collector on {addr}"), &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(addr.port()) {
        if !p.running() {
            let e = p.wait(Duration::ZERO);
            panic!("the collector exited ({}): {}", e.status, e.stderr.trim());
        }
        assert!(Instant::now() < deadline, "the collector never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    p
}

/// SIGTERM, then its final health line (it must exit 0 within a few seconds).
pub fn stop_collector(p: Supervised) -> String {
    p.terminate();
    let e = p.wait(Duration::from_secs(10));
    assert!(e.status.success(), "collector: {}\n{}", e.status, e.stderr);
    // Its report on stdout: the dated hop table in µs, then the health line.
    assert!(
        e.stdout.starts_with("hops at ") && e.stdout.contains(" p50 µs "),
        "{}",
        e.stdout
    );
    // Its stderr is log lines only, each a JSON object (--log-format json).
    let logs: Vec<serde_json::Value> = e
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["level"] == "INFO"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("collector listening on "))),
        "{}",
        e.stderr
    );
    e.last_line().to_string()
}

/// An agent process of `node` tracing `pids`, shipping to `addr`, touching `ready` once
/// attached.
pub fn agent_command(node: &str, addr: SocketAddr, ready: &Path, pids: &[u32]) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(["agent", "--node", node])
        .args(["--collector", &format!("http://{addr}")])
        .arg("--ready-file")
        .arg(ready);
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    cmd
}

/// `p` once it touched `ready` (within 30 s), or why not.
pub fn attached(mut p: Supervised, ready: &Path) -> anyhow::Result<Supervised> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if !p.running() {
            let what = p.what().to_string();
            let e = p.wait(Duration::ZERO);
            anyhow::bail!("{what} exited ({}): {}", e.status, e.stderr);
        }
        anyhow::ensure!(Instant::now() < deadline, "{} never attached", p.what());
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(p)
}

/// One agent: `node` traces `pids`, with `extra` flags.
pub struct AgentPlan {
    pub node: String,
    pub pids: Vec<u32>,
    pub extra: Vec<String>,
}

/// A scenario run: its ground truth (if it ran through), how long from go to `run()`
/// returning, the agents (still running or not), what the fault thread returned, and the
/// monotonic time of go.
pub struct Traced<T> {
    /// The run's directory (the calls' audio the ground truth points to), removed at the end.
    #[allow(dead_code)]
    pub dir: RunDir,
    pub gt: anyhow::Result<GroundTruth>,
    pub ran: Duration,
    /// When `run()` returned: the pipeline's processes are all gone.
    pub ended: Instant,
    pub agents: Vec<(String, Supervised)>,
    pub fault: JoinHandle<T>,
    pub go_ns: u64,
}

pub struct RunDir(pub std::path::PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Runs `sc` with the agents `plan` gives for its targets, all shipping to `addr`; `fault`
/// runs in a thread from go, given go's monotonic ns and each agent's node and pid.
pub fn trace<T: Send + 'static>(
    sc: &Scenario,
    label: &str,
    addr: SocketAddr,
    plan: impl FnOnce(&Targets) -> Vec<AgentPlan>,
    fault: impl FnOnce(u64, Vec<(String, u32)>) -> T + Send + 'static,
) -> Traced<T> {
    let dir = harness::run::workdir(label).unwrap();
    let mut agents: Vec<(String, Supervised)> = Vec::new();
    let mut started: Option<(Instant, u64, JoinHandle<T>)> = None;
    let gt = harness::run::run(sc, Path::new(EXE), &dir, |t| {
        for (i, a) in plan(t).into_iter().enumerate() {
            let ready = dir.join(format!("agent-{i}.ready"));
            let mut cmd = agent_command(&a.node, addr, &ready, &a.pids);
            cmd.args(&a.extra);
            let p = Supervised::spawn(&format!("the agent of {}", a.node), &mut cmd);
            agents.push((a.node.clone(), attached(p, &ready)?));
        }
        // `run` writes the go file as soon as this returns.
        let pids = agents.iter().map(|(n, p)| (n.clone(), p.pid())).collect();
        let go_ns = monotonic_ns();
        started = Some((
            Instant::now(),
            go_ns,
            std::thread::spawn(move || fault(go_ns, pids)),
        ));
        Ok(())
    });
    let (go, go_ns, fault) = started.expect("the agents attached");
    let ended = Instant::now();
    Traced {
        ran: ended - go,
        ended,
        dir: RunDir(dir),
        gt,
        agents,
        fault,
        go_ns,
    }
}

/// Sleeps until monotonic time `t_ns`.
pub fn sleep_until(t_ns: u64) {
    let now = monotonic_ns();
    if t_ns > now {
        std::thread::sleep(Duration::from_nanos(t_ns - now));
    }
}

/// The collector's JSON lines: version 2, each dated on the collector's wall clock by one
/// mapping of the collector's monotonic clock, which their `t_ns` are on.
pub fn read_records(path: &Path) -> Vec<HopRecord> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let records = agent::schema::read_jsonl(std::io::BufReader::new(f)).unwrap();
    let now = std::time::SystemTime::now();
    let offsets: Vec<i128> = records
        .iter()
        .map(|r| {
            assert_eq!(r.schema, agent::schema::SCHEMA);
            let at = r.timestamp.expect("a wall-clock timestamp");
            assert!(r.timestamp_error_ns.is_some(), "{r:?}");
            assert!(at <= now && now.duration_since(at).unwrap() < Duration::from_secs(600));
            let wall_ns = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            wall_ns as i128 - i128::from(r.to.t_ns)
        })
        .collect();
    if let (Some(lo), Some(hi)) = (offsets.iter().min(), offsets.iter().max()) {
        assert!(hi - lo < 1_000_000, "monotonic → wall offsets {lo}..{hi}");
    }
    records
}

pub fn score(gt: &GroundTruth, records: &[HopRecord]) -> Score {
    harness::score::score(
        gt,
        records,
        Observes::ALL,
        shared::FingerprintConfig::default(),
        "phase-3",
    )
    .unwrap()
}

/// A counter of a health line, which must be there.
pub fn counter(line: &str, name: &str) -> u64 {
    in_health(line, name).unwrap_or_else(|| panic!("no {name}= in {line}"))
}

/// One node's part of the collector's health line (`NODE: sightings=.. lost=.. ...`).
pub fn node_part<'a>(health: &'a str, node: &str) -> &'a str {
    health
        .split(" | ")
        .find(|p| p.starts_with(&format!("{node}: ")))
        .unwrap_or_else(|| panic!("node {node} in {health}"))
}

/// Waits for an agent to stop by itself (its processes are gone), within `limit` of `ended`
/// (when the pipeline ended), and says how long it took to print its health line and exit.
pub fn agent_exit(p: Supervised, limit: Duration, ended: Instant) -> Exited {
    let what = p.what().to_string();
    let e = p.wait(limit.saturating_sub(ended.elapsed()));
    eprintln!(
        "{what}: health line {:?} and exit {:?} after the pipeline ended",
        e.printed_at.map(|t| t.saturating_duration_since(ended)),
        ended.elapsed()
    );
    e
}

/// A hop of a moment the ground truth says a tracer could measure: when its first side
/// carried it, its two processes, and whether a record measured it.
pub struct Measurable {
    pub t_ns: u64,
    pub from: u32,
    pub to: u32,
    pub measured: bool,
}

pub fn measurable(gt: &GroundTruth, records: &[HopRecord]) -> Vec<Measurable> {
    let calls = CallTruthIndex::build(gt, shared::FingerprintConfig::default()).unwrap();
    let mut seen: HashMap<(u32, Dir, u32, Dir, u64), Vec<u64>> = HashMap::new();
    for r in records {
        seen.entry((r.from.pid, r.from.dir, r.to.pid, r.to.dir, r.signature))
            .or_default()
            .push(r.from.t_ns);
    }
    let pid = |name: &str| gt.component(name).map_or(0, |c| c.pid);
    let mut out = Vec::new();
    for c in &calls {
        for (f, t) in c.hops(Observes::ALL) {
            let (pf, pt) = (pid(&c.points[f].component), pid(&c.points[t].component));
            for m in &c.moments {
                let (Some(a), Some(_)) = (c.carried[f].get(&m.end), c.carried[t].get(&m.end))
                else {
                    continue;
                };
                let key = (pf, c.points[f].dir, pt, c.points[t].dir, m.signature);
                // The same moment on the same hop: its signature, near the truth's time (one
                // host, one clock; but the collector's mapping of it has been seen 20 ms off
                // with a slow collector, whose clock exchanges stall).
                let measured = seen
                    .get(&key)
                    .is_some_and(|ts| ts.iter().any(|&x| x.abs_diff(a.t_ns) < 200_000_000));
                out.push(Measurable {
                    t_ns: a.t_ns,
                    from: pf,
                    to: pt,
                    measured,
                });
            }
        }
    }
    out
}

/// Share measured of `ms`, and how many they are.
pub fn share(ms: &[&Measurable]) -> (f64, usize) {
    let n = ms.iter().filter(|m| m.measured).count();
    (n as f64 / ms.len().max(1) as f64, ms.len())
}

pub fn secs(ns: u64, origin: u64) -> f64 {
    (ns as f64 - origin as f64) / 1e9
}

/// The whole run on one agent, node "host".
pub fn one_agent(extra: &[&str]) -> impl FnOnce(&Targets) -> Vec<AgentPlan> {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    move |t| {
        vec![AgentPlan {
            node: "host".into(),
            pids: t.pids.clone(),
            extra,
        }]
    }
}

/// Checks an agent's health line after a run: attached the whole time and its kernel side
/// never dropped an event (the tracing loop kept up).
pub fn assert_kernel_kept_up(line: &str) {
    assert!(line.contains("uplink:"), "not a health line: {line}");
    assert_eq!(counter(line, "drops"), 0, "{line}");
}
