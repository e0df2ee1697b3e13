//! A harness scenario traced as a cluster would be: one agent process per node (this binary's
//! `agent`, with the node's clock skew when a test asks for one), and a collector in this
//! process that matches across nodes while the pipeline runs. Scored against the ground truth.
//! Phase 4 runs its own agents with the same parts ([`InProcessCollector`],
//! [`AgentProcess`], [`run_agent_if`], [`ClusterRun::score`]).

use crate::collector::{serve, Service};
use crate::outputs::Outputs;
use agent::clock::{monotonic_ns, Skew};
use agent::schema::HopRecord;
use agent::stats::HopStats;
use anyhow::{bail, Context, Result};
use harness::scenario::Scenario;
use harness::score::{CallTruthIndex, Score};
use harness::truth::GroundTruth;
use phase_2_straddle::demo::OBSERVES;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scenario traced by agents and a collector, scored.
pub struct ClusterRun {
    pub gt: GroundTruth,
    pub records: Vec<HopRecord>,
    pub score: Score,
    pub measured: HopStats,
    pub truth: HopStats,
    /// The collector's health line, then each agent's (node, last line of its output).
    pub collector: String,
    pub agents: Vec<(String, String)>,
}

impl ClusterRun {
    /// What the collector measured next to the ground truth, the score, and every health line.
    pub fn report(&self) -> String {
        let mut out = format!(
            "measured (collector):\n{}\nground truth recorded by the pipeline:\n{}\n{}collector: {}\n",
            self.measured.table(),
            self.truth.table(),
            self.score,
            self.collector
        );
        for (node, line) in &self.agents {
            out += &format!("agent {node}: {line}\n");
        }
        out
    }

    /// Scores what the collector reported (`records`, `measured`, its health line) against
    /// the ground truth, for the tracer named `tracer`.
    pub fn score(
        gt: GroundTruth,
        collected: Collected,
        agents: Vec<(String, String)>,
        tracer: &str,
    ) -> Result<Self> {
        let cfg = shared::FingerprintConfig::default();
        let calls = CallTruthIndex::build(&gt, cfg)?;
        let score =
            harness::score::score_indexed(&gt, &calls, &collected.records, OBSERVES, cfg, tracer);
        let mut truth = HopStats::default();
        for r in harness::oracle::records(&gt, &calls, OBSERVES) {
            truth.add(&r);
        }
        Ok(ClusterRun {
            gt,
            records: collected.records,
            score,
            measured: collected.stats,
            truth,
            collector: collected.health,
            agents,
        })
    }
}

/// How long an agent may take to load its programs and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Set on the agents this module starts: the binary they run is whichever runs the scenario.
const AGENT_ENV: &str = "PHASE3_RUN_AS_AGENT";

/// Makes this binary an agent when a runner started it as one, with `env` set (as
/// `harness::component::run_if_component` makes it a component): parses the agent's flags
/// `A`, runs `agent` and exits. Call first in `main`.
pub fn run_agent_if<A: clap::Args>(env: &str, agent: impl FnOnce(&A) -> Result<()>) {
    if std::env::var_os(env).is_none() {
        return;
    }
    #[derive(clap::Parser)]
    struct Agent<A: clap::Args> {
        #[command(flatten)]
        args: A,
        #[command(flatten)]
        log: agent::log::LogArgs,
    }
    let parsed = <Agent<A> as clap::Parser>::parse();
    agent::cli::exit_on_error("agent", || {
        parsed.log.init()?;
        agent(&parsed.args)
    });
    std::process::exit(0);
}

/// Makes this binary a phase-3 agent when [`trace_scenario_phase3`] started it as one.
pub fn run_if_agent() {
    run_agent_if(AGENT_ENV, crate::cli::run_agent);
}

/// Phase 3's collector inside this process, matching while the pipeline runs as the collector
/// process does.
pub struct InProcessCollector {
    rt: tokio::runtime::Runtime,
    service: Service,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    grpc: tokio::task::JoinHandle<Result<()>>,
    closing: tokio::task::JoinHandle<Result<()>>,
    outputs: Arc<Mutex<Outputs>>,
}

/// What the collector reported once stopped.
pub struct Collected {
    pub records: Vec<HopRecord>,
    pub stats: HopStats,
    /// Its health line.
    pub health: String,
}

impl Collected {
    /// What several replicas reported, as one: their records in turn, their health lines
    /// joined by " | " (each replica's per-node parts start with the node's name).
    pub fn together(replicas: Vec<Collected>) -> Self {
        let mut all = Collected {
            records: Vec::new(),
            stats: HopStats::default(),
            health: String::new(),
        };
        let mut lines = Vec::new();
        for c in replicas {
            for r in &c.records {
                all.stats.add(r);
            }
            all.records.extend(c.records);
            lines.push(c.health);
        }
        all.health = lines.join(" | ");
        all
    }
}

impl InProcessCollector {
    /// Listens on a free loopback port.
    pub fn start() -> Result<Self> {
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
        let outputs = Arc::new(Mutex::new(Outputs {
            records: Some(Vec::new()),
            ..Default::default()
        }));
        let closing = rt.spawn({
            let (service, outputs) = (service.clone(), outputs.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    let due = tokio::select! {
                        _ = tick.tick() => service.close_due(Some(monotonic_ns())),
                        _ = service.told.notified() => service.released(),
                    };
                    outputs.lock().unwrap().take(due)?;
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            }
        });
        Ok(Self {
            rt,
            service,
            addr,
            stop,
            grpc,
            closing,
            outputs,
        })
    }

    /// Where agents connect.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it, closing every window still open.
    pub fn finish(self) -> Result<Collected> {
        self.closing.abort();
        // Dropped once awaited: its share of the outputs with it.
        let _ = self.rt.block_on(self.closing);
        self.stop.send(()).ok();
        self.rt.block_on(self.grpc)??;
        let mut outputs = Arc::into_inner(self.outputs)
            .context("outputs still shared")?
            .into_inner()
            .unwrap();
        outputs.take(self.service.close_due(None))?;
        Ok(Collected {
            records: outputs.records.take().unwrap_or_default(),
            stats: outputs.stats,
            health: self.service.health(),
        })
    }
}

/// An agent process of one node, killed if dropped while it runs.
pub struct AgentProcess {
    pub node: String,
    child: Child,
    ready: PathBuf,
}

impl AgentProcess {
    /// Starts `cmd`, an agent told (`--ready-file`) to touch `ready` once attached.
    pub fn spawn(node: &str, cmd: &mut Command, ready: PathBuf) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the agent of node {node}"))?;
        Ok(Self {
            node: node.to_string(),
            child,
            ready,
        })
    }

    /// Waits until every agent has attached, failing with its error output if one exits.
    pub fn wait_attached(agents: &mut [AgentProcess]) -> Result<()> {
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        for a in agents {
            while !a.ready.exists() {
                if let Some(status) = a.child.try_wait()? {
                    let mut err = String::new();
                    a.child
                        .stderr
                        .take()
                        .map(|mut e| e.read_to_string(&mut err));
                    bail!(
                        "the agent of node {} exited ({status}): {}",
                        a.node,
                        err.trim()
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "the agent of node {} did not attach within {ATTACH_TIMEOUT:?}",
                        a.node
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Asks it to stop (SIGTERM), as an agent that runs until stopped must be.
    pub fn terminate(&self) {
        // SAFETY: kill() on a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// Waits for it to exit, after delivering everything: its (node, last output line).
    pub fn finish(mut self) -> Result<(String, String)> {
        // Detaching the uprobes of every traced process takes the kernel ~1 s each here.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait()?.is_none() {
            self.child.kill().ok();
        }
        let node = std::mem::take(&mut self.node);
        let (mut out, mut err) = (String::new(), String::new());
        self.child
            .stdout
            .take()
            .map(|mut o| o.read_to_string(&mut out));
        self.child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
        let status = self.child.wait()?;
        if !status.success() {
            bail!("the agent of node {node} failed ({status}): {}", err.trim());
        }
        Ok((node, out.trim().to_string()))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent_command(
    exe: &Path,
    node: &str,
    pids: &[u32],
    collectors: &[String],
    skew: Skew,
) -> Command {
    let mut c = Command::new(exe);
    c.env(AGENT_ENV, "1");
    c.args(["--node", node]);
    for url in collectors {
        c.args(["--collector", url]);
    }
    c.args(skew_args(skew));
    for p in pids {
        c.args(["--pid", &p.to_string()]);
    }
    c
}

/// The agent flags that skew its node's clock.
pub fn skew_args(skew: Skew) -> [String; 6] {
    [
        "--skew-offset-ms".into(),
        (skew.offset_ns as f64 / 1e6).to_string(),
        "--skew-ppm".into(),
        skew.ppm.to_string(),
        "--skew-origin-ns".into(),
        skew.origin_ns.to_string(),
    ]
}

/// Each node's skew from now: its offset as given at this instant, the run's start. Known to
/// the nanosecond, the skews go into the ground truth, which then audits the collector's
/// clock alignment apart from the stamps' own delays.
pub fn skews_from_now(skew: impl Fn(&str) -> Skew) -> impl Fn(&str) -> Skew {
    let origin_ns = monotonic_ns();
    move |node| Skew {
        origin_ns,
        ..skew(node)
    }
}

/// Runs `sc` from `exe` with an agent per node; `skew` gives each node's clock skew.
pub fn trace_scenario_phase3(
    sc: &Scenario,
    exe: &Path,
    skew: impl Fn(&str) -> Skew,
) -> Result<ClusterRun> {
    trace_scenario_sharded(sc, exe, skew, 1)
}

/// As [`trace_scenario_phase3`], the collector being `replicas` replicas the agents shard
/// sightings over; scored on what they reported together.
pub fn trace_scenario_sharded(
    sc: &Scenario,
    exe: &Path,
    skew: impl Fn(&str) -> Skew,
    replicas: usize,
) -> Result<ClusterRun> {
    let collectors: Vec<InProcessCollector> = (0..replicas)
        .map(|_| InProcessCollector::start())
        .collect::<Result<_>>()?;
    let urls: Vec<String> = collectors.iter().map(InProcessCollector::url).collect();
    let dir = harness::run::workdir(&format!("phase-3-{}", sc.id))?;
    let skew = skews_from_now(skew);
    let mut agents: Vec<AgentProcess> = Vec::new();
    let gt = harness::run::run(sc, exe, &dir, |t| {
        for (node, pids) in &t.nodes {
            let ready = dir.join(format!("agent-{node}.ready"));
            let mut cmd = agent_command(exe, node, pids, &urls, skew(node));
            cmd.arg("--ready-file").arg(&ready);
            agents.push(AgentProcess::spawn(node, &mut cmd, ready)?);
        }
        AgentProcess::wait_attached(&mut agents)
    });
    // Agents stop by themselves once their processes are gone, after delivering everything.
    let finished: Result<Vec<_>> = agents.into_iter().map(AgentProcess::finish).collect();
    let mut gt = gt?;
    let agent_lines = finished?;
    gt.node_clocks = agent_lines
        .iter()
        .map(|(node, _)| (node.clone(), skew(node)))
        .collect();
    let collected = Collected::together(
        collectors
            .into_iter()
            .map(InProcessCollector::finish)
            .collect::<Result<_>>()?,
    );
    // Scoring reads the calls' audio from the run's directory.
    let run = ClusterRun::score(gt, collected, agent_lines, "phase-3-multi-node");
    std::fs::remove_dir_all(&dir).ok();
    run
}
