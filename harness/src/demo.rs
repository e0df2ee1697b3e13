//! A phase's agent on a harness scenario: the demo each phase's binary runs without targets,
//! and the runs the phases' tests score. The pipeline's components start from the phase's own
//! binary (`crate::component::run_if_component`), the agent traces them live, and what it
//! reported is scored against the ground truth they recorded.

use crate::scenario::Scenario;
use crate::score::{CallTruthIndex, Observes, Score};
use crate::truth::GroundTruth;
use agent::cli::{Phase, TraceArgs};
use agent::pipeline::{Agent, Tracing, DRAIN_EVERY};
use agent::schema::HopRecord;
use agent::stats::HopStats;
use anyhow::{bail, Context, Result};
use clap::Args;
use shared::FingerprintConfig;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The demo's flags, beside the agent's.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Without --pid or --comm: the harness scenario to run and trace (`harness list`).
    #[arg(long, default_value = "S1")]
    pub scenario: String,
}

/// A phase binary's whole job: without targets the demo on a harness scenario, with them the
/// live agent.
pub fn run_phase<T: Tracing + 'static>(
    args: &TraceArgs,
    demo: &DemoArgs,
    phase: &Phase<T>,
    observes: Observes,
) -> Result<()> {
    if !args.targets.has_no_targets() {
        return agent::cli::run_phase(args, phase);
    }
    let cfg = args.targets.fingerprint();
    let Some(sc) = crate::scenario::by_id(&demo.scenario) else {
        bail!(
            "unknown scenario {:?}; `harness list` shows the catalogue",
            demo.scenario
        )
    };
    println!(
        "{} demo: {} ({}), {} calls of {} s, traced on {}",
        phase.name, sc.id, sc.title, sc.calls, sc.seconds, phase.hooks
    );
    let tracing = (phase.start)(&cfg, None, args.report.match_window())?;
    let run = trace_scenario(
        &sc,
        &std::env::current_exe()?,
        &cfg,
        observes,
        tracing,
        phase.name,
    )?;
    print_demo(&run, args.report.json.as_deref(), phase.hops)
}

/// Prints a demo run: the measured table, the ground truth's, and the score.
pub fn print_demo(run: &TracedRun, json: Option<&Path>, hops: &str) -> Result<()> {
    if let Some(path) = json {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        agent::schema::write_jsonl(&mut f, &run.records)?;
    }
    println!("\nmeasured ({hops}):\n{}", run.measured.table());
    println!(
        "ground truth recorded by the pipeline:\n{}",
        run.truth.table()
    );
    print!("{}", run.score);
    let misses = run.score.misses(&crate::score::SAME_NODE_BAR);
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
    /// Its JSON lines, read back.
    pub records: Vec<HopRecord>,
    pub score: crate::score::Score,
}

/// Runs scenario `sc` from `exe` and traces it with `exe` as a live agent (`--pid` for every
/// component, `--json`); returns once the agent has stopped by itself. For tests and demos of
/// the CLI as a user runs it.
pub fn follow_scenario_live(
    sc: &crate::scenario::Scenario,
    exe: &Path,
    observes: crate::score::Observes,
) -> Result<LiveRun> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = crate::run::workdir("live")?;
    let json = dir.join("hops.jsonl");
    let mut child = None;
    let gt = crate::run::run(sc, exe, &dir, |targets| {
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
        // Attached once it logs so; it fails with a line and exits otherwise.
        let mut err = BufReader::new(c.stderr.as_mut().context("agent stderr")?);
        let mut logged = String::new();
        while !logged.contains("; Ctrl-C to stop") {
            if err.read_line(&mut logged)? == 0 {
                bail!("agent did not start: {logged}");
            }
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
    let records = agent::schema::read_jsonl(BufReader::new(std::fs::File::open(&json)?))?;
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let score = crate::score::score(
        &gt,
        &records,
        observes,
        FingerprintConfig::default(),
        &format!("{name} --pid"),
    )?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(LiveRun {
        output,
        records,
        score,
    })
}

/// A scenario traced by a phase and scored against its ground truth.
pub struct TracedRun {
    pub gt: GroundTruth,
    pub records: Vec<HopRecord>,
    pub score: Score,
    /// The hops as the phase measured them.
    pub measured: HopStats,
    /// The same hops as the ground truth has them (the oracle's write → write records).
    pub truth: HopStats,
    pub health: String,
}

/// Runs `sc` (components launched from `exe`) under a phase's tracing, draining live, and
/// scores what it reported against the ground truth, seen as `observes` sees it.
pub fn trace_scenario<T: Tracing + 'static>(
    sc: &Scenario,
    exe: &Path,
    cfg: &FingerprintConfig,
    observes: Observes,
    tracing: T,
    name: &str,
) -> Result<TracedRun> {
    let agent = Arc::new(Mutex::new(Agent::new(tracing, None, true)));
    let done = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (agent, done) = (agent.clone(), done.clone());
        std::thread::spawn(move || -> Result<()> {
            while !done.load(Ordering::Relaxed) {
                agent.lock().unwrap().tick()?;
                std::thread::sleep(DRAIN_EVERY);
            }
            Ok(())
        })
    };
    let dir = crate::run::workdir(&format!("{name}-{}", sc.id))?;
    let gt = crate::run::run(sc, exe, &dir, |t| {
        agent.lock().unwrap().tracing.add_targets(&t.pids)
    });
    done.store(true, Ordering::Relaxed);
    drainer.join().expect("drain thread panicked")?;
    let gt = gt?;
    let mut agent = agent.lock().unwrap();
    agent.finish()?;
    let records = agent.records.take().unwrap_or_default();
    let calls = CallTruthIndex::build(&gt, *cfg)?;
    std::fs::remove_dir_all(&dir).ok();
    let score = crate::score::score_indexed(&gt, &calls, &records, observes, *cfg, name);
    let mut truth = HopStats::default();
    for r in crate::oracle::records(&gt, &calls, observes) {
        truth.add(&r);
    }
    let measured = std::mem::take(&mut agent.stats);
    Ok(TracedRun {
        gt,
        records,
        score,
        measured,
        truth,
        health: agent.health()?,
    })
}
