use anyhow::{bail, Context, Result};
use clap::Parser;
use phase_1_poc::tracer::Tracer;
use phase_1_poc::{trace_scenario, Agent, DRAIN_EVERY};
use shared::FingerprintConfig;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Phase 1 of ebpf-audio-tracer: an eBPF program on write() recognises moments of audio in what
/// target processes write; this agent matches the same moment across processes and reports the
/// latency of each hop (writer → next writer): count, p50, p90, p99, max.
///
/// With neither --pid nor --comm it runs the demo: the harness starts a real pipeline
/// (source → relay → relay → sink over pipes, real speech), the tracer follows it, and the hop
/// table is printed next to the ground truth the pipeline recorded. Needs root.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Trace this process (repeatable).
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Trace every process whose command name starts with this, including ones started later.
    #[arg(long, value_name = "PREFIX")]
    comm: Option<String>,
    /// Stop after this many seconds (default: on Ctrl-C, or when every --pid has exited).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Also write every matched hop as JSON lines (docs/results-schema.md) to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// A moment's sightings must fall within this window.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    match_window_ms: u64,
    /// Print the live hop table this often (0: only at the end).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    report_every: f64,
    /// Demo only: the harness scenario to run (S1 or S2).
    #[arg(long, default_value = "S1")]
    scenario: String,
    /// Fingerprint window in bytes (cluster-wide: every node must use the same value).
    #[arg(long, default_value_t = FingerprintConfig::default().window)]
    window: usize,
    /// Fingerprint density: anchors kept per 256 (cluster-wide).
    #[arg(long, default_value_t = FingerprintConfig::default().keep_per_256)]
    keep_per_256: u16,
}

fn main() {
    harness::component::run_if_component();
    let cli = Cli::parse();
    let cfg = FingerprintConfig { window: cli.window, keep_per_256: cli.keep_per_256, ..Default::default() };
    let result = if cli.pid.is_empty() && cli.comm.is_none() { demo(&cli, &cfg) } else { live(&cli, &cfg) };
    if let Err(e) = result {
        eprintln!("phase-1-poc: {e:#}");
        std::process::exit(1);
    }
}

fn demo(cli: &Cli, cfg: &FingerprintConfig) -> Result<()> {
    let Some(sc) = harness::scenario::by_id(&cli.scenario) else {
        bail!("unknown scenario {:?}; phase 1's demo runs S1 or S2", cli.scenario)
    };
    println!("phase 1 demo: {} ({}), {} calls of {} s, traced on write()", sc.id, sc.title, sc.calls, sc.seconds);
    let run = trace_scenario(&sc, &std::env::current_exe()?, cfg)?;
    if let Some(path) = &cli.json {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        harness::schema::write_jsonl(&mut f, &run.records)?;
    }
    println!("\nmeasured by phase 1 (write → next write):\n{}", run.measured.table());
    println!("ground truth recorded by the pipeline:\n{}", run.truth.table());
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

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn any_comm_with_prefix(prefix: &str) -> Result<bool> {
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let comm = entry?.path().join("comm");
        if std::fs::read_to_string(comm).is_ok_and(|c| c.starts_with(prefix)) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn live(cli: &Cli, cfg: &FingerprintConfig) -> Result<()> {
    for &pid in &cli.pid {
        if !process_exists(pid) {
            bail!("no process with pid {pid}");
        }
    }
    if let Some(prefix) = &cli.comm {
        if !any_comm_with_prefix(prefix)? {
            bail!("no running process has a command name starting with {prefix:?}");
        }
    }
    let mut tracer = Tracer::start(cfg, cli.comm.as_deref())?;
    tracer.add_targets(&cli.pid)?;
    let json: Option<Box<dyn std::io::Write + Send>> = match &cli.json {
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        ))),
        None => None,
    };
    let mut agent = Agent::new(tracer, Duration::from_millis(cli.match_window_ms), json, false);
    eprintln!("tracing write() of {}; Ctrl-C to stop", describe_targets(cli));
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        let report_every = Duration::from_secs_f64(if cli.report_every > 0.0 { cli.report_every } else { 1e9 });
        let mut report = tokio::time::interval_at(tokio::time::Instant::now() + report_every, report_every);
        let mut liveness = tokio::time::interval(Duration::from_millis(200));
        let stop = tokio::time::sleep(Duration::from_secs_f64(cli.duration.unwrap_or(1e9)));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = drain.tick() => agent.tick()?,
                _ = report.tick() => eprintln!("{}{}", agent.stats.table(), agent.health()?),
                _ = liveness.tick(), if cli.comm.is_none() => {
                    if !cli.pid.iter().any(|&p| process_exists(p)) {
                        eprintln!("every target process has exited; stopping");
                        break;
                    }
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

fn describe_targets(cli: &Cli) -> String {
    let mut parts: Vec<String> = cli.pid.iter().map(|p| format!("pid {p}")).collect();
    if let Some(c) = &cli.comm {
        parts.push(format!("command names starting with {c:?}"));
    }
    parts.join(", ")
}
