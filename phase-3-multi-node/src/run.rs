//! A harness scenario traced as a cluster would be: one agent process per node (this binary's
//! `agent`, with the node's clock skew when a test asks for one), and a collector in this
//! process that matches across nodes while the pipeline runs. Scored against the ground truth.

use crate::collector::{serve, Service};
use crate::outputs::Outputs;
use crate::uplink::Skew;
use anyhow::{bail, Context, Result};
use harness::scenario::Scenario;
use harness::schema::HopRecord;
use harness::score::{CallTruthIndex, Observes, Score};
use harness::truth::{monotonic_ns, GroundTruth};
use phase_1_poc::report::HopStats;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Phase3Run {
    pub gt: GroundTruth,
    pub records: Vec<HopRecord>,
    pub score: Score,
    pub measured: HopStats,
    pub truth: HopStats,
    /// The collector's health line, then each agent's (node, last line of its output).
    pub collector: String,
    pub agents: Vec<(String, String)>,
}

/// How long an agent may take to load its programs and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Set on the agents this module starts: the binary they run is whichever runs the scenario.
const AGENT_ENV: &str = "PHASE3_RUN_AS_AGENT";

/// Makes this binary an agent when [`trace_scenario_phase3`] started it as one (as
/// `harness::component::run_if_component` makes it a component); call first in `main`.
pub fn run_if_agent() {
    if std::env::var_os(AGENT_ENV).is_none() {
        return;
    }
    #[derive(clap::Parser)]
    struct Agent {
        #[command(flatten)]
        args: crate::cli::AgentArgs,
    }
    let agent = <Agent as clap::Parser>::parse();
    phase_1_poc::cli::exit_on_error("agent", || crate::cli::run_agent(&agent.args));
    std::process::exit(0);
}

fn start_agent(
    exe: &Path,
    node: &str,
    pids: &[u32],
    collector: &str,
    skew: Skew,
    ready: &Path,
) -> Result<Child> {
    let mut c = Command::new(exe);
    c.env(AGENT_ENV, "1");
    c.args(["--node", node, "--collector", collector]);
    c.arg("--ready-file").arg(ready);
    c.args([
        "--skew-offset-ms",
        &(skew.offset_ns as f64 / 1e6).to_string(),
        "--skew-ppm",
        &skew.ppm.to_string(),
    ]);
    for p in pids {
        c.args(["--pid", &p.to_string()]);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn()
        .with_context(|| format!("starting the agent of node {node}"))
}

/// Runs `sc` from `exe` with an agent per node; `skew` gives each node's clock skew.
pub fn trace_scenario_phase3(
    sc: &Scenario,
    exe: &Path,
    skew: impl Fn(&str) -> Skew,
) -> Result<Phase3Run> {
    let cfg = shared::FingerprintConfig::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let service = Service::default();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], harness::run::free_port()?));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = rt.spawn(serve(service.clone(), addr, None, async {
        stopped.await.ok();
    }));
    // Matching while the pipeline runs, as the collector process does.
    let outputs = Arc::new(Mutex::new(Outputs {
        records: Some(Vec::new()),
        ..Default::default()
    }));
    let closing = rt.spawn({
        let (service, outputs) = (service.clone(), outputs.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let due = service.close_due(Some(monotonic_ns()));
                outputs.lock().unwrap().take(due)?;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }
    });

    let dir = harness::run::workdir(&format!("phase-3-{}", sc.id))?;
    let mut agents: Vec<(String, Child)> = Vec::new();
    let gt = harness::run::run(sc, exe, &dir, |t| {
        let url = format!("http://{addr}");
        for (node, pids) in &t.nodes {
            let ready = dir.join(format!("agent-{node}.ready"));
            agents.push((
                node.clone(),
                start_agent(exe, node, pids, &url, skew(node), &ready)?,
            ));
        }
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        for (node, child) in &mut agents {
            while !dir.join(format!("agent-{node}.ready")).exists() {
                if let Some(status) = child.try_wait()? {
                    let mut err = String::new();
                    use std::io::Read;
                    child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                    bail!("the agent of node {node} exited ({status}): {}", err.trim());
                }
                if Instant::now() > deadline {
                    bail!("the agent of node {node} did not attach within {ATTACH_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    });
    // Agents stop by themselves once their processes are gone, after delivering everything.
    let mut agent_lines = Vec::new();
    for (node, mut child) in agents {
        // Detaching the uprobes of every traced process takes the kernel ~1 s each here.
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait()?.is_none() {
            child.kill().ok();
        }
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        })
        .trim()
        .to_string();
        if !out.status.success() {
            bail!("the agent of node {node} failed: {text}");
        }
        agent_lines.push((node, text));
    }
    let gt = gt?;
    closing.abort();
    // Dropped once awaited: its share of the outputs with it.
    let _ = rt.block_on(closing);
    stop.send(()).ok();
    rt.block_on(grpc)??;
    let mut outputs = Arc::into_inner(outputs)
        .context("outputs still shared")?
        .into_inner()
        .unwrap();
    outputs.take(service.close_due(None))?;
    let records = outputs.records.take().unwrap_or_default();
    let calls = CallTruthIndex::build(&gt, cfg)?;
    std::fs::remove_dir_all(&dir).ok();
    let score = harness::score::score_indexed(
        &gt,
        &calls,
        &records,
        Observes::ALL,
        cfg,
        "phase-3-multi-node",
    );
    let mut truth = HopStats::default();
    for r in harness::oracle::records(&gt, &calls, Observes::ALL) {
        truth.add(&r);
    }
    Ok(Phase3Run {
        gt,
        records,
        score,
        measured: outputs.stats,
        truth,
        collector: service.health(),
        agents: agent_lines,
    })
}
