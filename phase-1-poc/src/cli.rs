//! The agent's command line, shared by the phases: the same flags, target checks, live loop and
//! demo printout; each phase brings its own `Tracing`.

use crate::{Agent, TracedRun, Tracing, DRAIN_EVERY};
use anyhow::{bail, Context, Result};
use clap::Args;
use shared::FingerprintConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// Trace this process (repeatable).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Trace every process whose command name starts with this, including ones started later.
    #[arg(long, value_name = "PREFIX")]
    pub comm: Option<String>,
    /// Stop after this many seconds (default: on Ctrl-C, or when every --pid has exited).
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Also write every matched hop as JSON lines (docs/results-schema.md) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A moment's sightings must fall within this window.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub match_window_ms: u64,
    /// Print the live hop table this often (0: only at the end).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub report_every: f64,
    /// Demo only: the harness scenario to run.
    #[arg(long, default_value = "S1")]
    pub scenario: String,
    /// Fingerprint window in bytes (cluster-wide: every node must use the same value).
    #[arg(long, default_value_t = FingerprintConfig::default().window)]
    pub window: usize,
    /// Fingerprint density: anchors kept per 256 (cluster-wide).
    #[arg(long, default_value_t = FingerprintConfig::default().keep_per_256)]
    pub keep_per_256: u16,
}

impl AgentArgs {
    pub fn fingerprint(&self) -> FingerprintConfig {
        FingerprintConfig {
            window: self.window,
            keep_per_256: self.keep_per_256,
            ..Default::default()
        }
    }

    pub fn match_window(&self) -> Duration {
        Duration::from_millis(self.match_window_ms)
    }

    /// Neither --pid nor --comm: run the demo.
    pub fn is_demo(&self) -> bool {
        self.pid.is_empty() && self.comm.is_none()
    }

    /// Fails with one line when a target does not exist.
    pub fn check_targets(&self) -> Result<()> {
        for &pid in &self.pid {
            if !process_exists(pid) {
                bail!("no process with pid {pid}");
            }
        }
        if let Some(prefix) = &self.comm {
            if !any_comm_with_prefix(prefix)? {
                bail!("no running process has a command name starting with {prefix:?}");
            }
        }
        Ok(())
    }

    fn describe_targets(&self) -> String {
        let mut parts: Vec<String> = self.pid.iter().map(|p| format!("pid {p}")).collect();
        if let Some(c) = &self.comm {
            parts.push(format!("command names starting with {c:?}"));
        }
        parts.join(", ")
    }
}

/// Runs the binary's main: `run`'s error becomes one line on stderr and exit status 1.
pub fn exit_on_error(program: &str, run: impl FnOnce() -> Result<()>) {
    if let Err(e) = run() {
        eprintln!("{program}: {e:#}");
        std::process::exit(1);
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn any_comm_with_prefix(prefix: &str) -> Result<bool> {
    Ok(!pids_with_comm_prefix(prefix)?.is_empty())
}

/// Processes whose command name starts with `prefix`.
pub fn pids_with_comm_prefix(prefix: &str) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Traces live until Ctrl-C, --duration, or every --pid has exited; prints the table live and
/// at the end. `what` names the hooked calls in the start line.
pub fn run_live<T: Tracing>(args: &AgentArgs, mut tracing: T, what: &str) -> Result<()> {
    tracing.add_targets(&args.pid)?;
    let json: Option<Box<dyn std::io::Write + Send>> = match &args.json {
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))),
        None => None,
    };
    let mut agent = Agent::new(tracing, json, false);
    eprintln!(
        "tracing {what} of {}; Ctrl-C to stop",
        args.describe_targets()
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut drain = tokio::time::interval(DRAIN_EVERY);
            let every = Duration::from_secs_f64(if args.report_every > 0.0 {
                args.report_every
            } else {
                1e9
            });
            let mut report = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut liveness = tokio::time::interval(Duration::from_millis(200));
            let stop = tokio::time::sleep(Duration::from_secs_f64(args.duration.unwrap_or(1e9)));
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = drain.tick() => agent.tick()?,
                    _ = report.tick() => eprintln!("{}{}", agent.stats.table(), agent.health()?),
                    _ = liveness.tick() => {
                        if args.comm.is_none() && !args.pid.iter().any(|&p| process_exists(p)) {
                            eprintln!("every target process has exited; stopping");
                            break;
                        }
                        agent.tracing.refresh()?;
                    }
                    _ = tokio::signal::ctrl_c() => break,
                    _ = &mut stop => break,
                }
            }
            anyhow::Ok(())
        })?;
    agent.finish()?;
    println!("{}{}", agent.stats.table(), agent.health()?);
    Ok(())
}

/// Prints a demo run: the measured table, the ground truth's, and the score.
pub fn print_demo(run: &TracedRun, json: Option<&Path>, hops: &str) -> Result<()> {
    if let Some(path) = json {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        harness::schema::write_jsonl(&mut f, &run.records)?;
    }
    println!("\nmeasured ({hops}):\n{}", run.measured.table());
    println!(
        "ground truth recorded by the pipeline:\n{}",
        run.truth.table()
    );
    print!("{}", run.score);
    let misses = run.score.misses(&harness::score::SAME_NODE_BAR);
    if misses.is_empty() {
        println!("meets the same-node bar (every hop, coverage ≥ 95 %, error p99 ≤ 20 µs, no false match)");
    } else {
        println!("misses the same-node bar: {}", misses.join("; "));
    }
    println!("{}", run.health);
    Ok(())
}

/// What a live agent did when it followed a scenario's processes by pid until they exited,
/// and how its JSON lines score.
pub struct LiveRun {
    pub output: std::process::Output,
    pub score: harness::score::Score,
}

/// Runs scenario `sc` from `exe` and traces it with `exe` as a live agent (`--pid` for every
/// component, `--json`); returns once the agent has stopped by itself. For tests and demos of
/// the CLI as a user runs it.
pub fn follow_scenario_live(
    sc: &harness::scenario::Scenario,
    exe: &Path,
    observes: harness::score::Observes,
) -> Result<LiveRun> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = harness::run::workdir("live")?;
    let json = dir.join("hops.jsonl");
    let mut child = None;
    let gt = harness::run::run(sc, exe, &dir, |targets| {
        let mut args = vec![
            "--json".to_string(),
            json.display().to_string(),
            "--report-every".into(),
            "0".into(),
        ];
        for p in &targets.pids {
            args.extend(["--pid".into(), p.to_string()]);
        }
        let mut c = Command::new(exe)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Attached once it says so.
        let mut line = String::new();
        BufReader::new(c.stderr.as_mut().context("agent stderr")?).read_line(&mut line)?;
        if !line.starts_with("tracing ") {
            bail!("agent did not start: {line}");
        }
        child = Some(c);
        Ok(())
    })?;
    let mut child = child.context("agent never started")?;
    // An agent that probed OpenSSL in its targets takes ~1 s per process to close the uprobes
    // on exit (the kernel waits for a grace period per probe).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            bail!("agent did not stop after its targets exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let records = harness::schema::read_jsonl(BufReader::new(std::fs::File::open(&json)?))?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let score = harness::score::score(
        &gt,
        &records,
        observes,
        FingerprintConfig::default(),
        &format!("{name} --pid"),
    )?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(LiveRun { output, score })
}

/// What a phase's agent binary is: its name, what it hooks, the hops it reports, and how to
/// start its tracing.
pub struct Phase<T> {
    pub name: &'static str,
    /// The hooked calls, for the start line ("write()").
    pub hooks: &'static str,
    /// The hops it reports, for the demo's table title.
    pub hops: &'static str,
    pub observes: harness::score::Observes,
    pub start: fn(&FingerprintConfig, Option<&str>, Duration) -> Result<T>,
}

/// A phase binary's whole job: the demo on a harness scenario without targets, the live agent
/// with them.
pub fn run_phase<T: Tracing + 'static>(args: &AgentArgs, phase: &Phase<T>) -> Result<()> {
    let cfg = args.fingerprint();
    if !args.is_demo() {
        args.check_targets()?;
        return run_live(
            args,
            (phase.start)(&cfg, args.comm.as_deref(), args.match_window())?,
            phase.hooks,
        );
    }
    let Some(sc) = harness::scenario::by_id(&args.scenario) else {
        bail!(
            "unknown scenario {:?}; `harness list` shows the catalogue",
            args.scenario
        )
    };
    println!(
        "{} demo: {} ({}), {} calls of {} s, traced on {}",
        phase.name, sc.id, sc.title, sc.calls, sc.seconds, phase.hooks
    );
    let tracing = (phase.start)(&cfg, None, args.match_window())?;
    let run = crate::trace_scenario(
        &sc,
        &std::env::current_exe()?,
        &cfg,
        phase.observes,
        tracing,
        phase.name,
    )?;
    print_demo(&run, args.json.as_deref(), phase.hops)
}
