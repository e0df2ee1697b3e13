//! The agent's command line, the same for every phase: its flags, the target checks and the live
//! loop; each phase brings its own [`Tracing`].

use crate::pipeline::{Agent, Tracing, DRAIN_EVERY};
use crate::targets::{pids_with_comm_prefix, process_exists};
use anyhow::{bail, Context, Result};
use clap::Args;
use shared::FingerprintConfig;
use std::path::PathBuf;
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

    /// Neither --pid nor --comm: nothing to trace (a binary built with its demo runs that).
    pub fn has_no_targets(&self) -> bool {
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

fn any_comm_with_prefix(prefix: &str) -> Result<bool> {
    Ok(!pids_with_comm_prefix(prefix)?.is_empty())
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

/// What a phase's agent binary is: its name, what it hooks, the hops it reports, and how to
/// start its tracing.
pub struct Phase<T> {
    pub name: &'static str,
    /// The hooked calls, for the start line ("write()").
    pub hooks: &'static str,
    /// The hops it reports, for the demo's table title.
    pub hops: &'static str,
    pub start: fn(&FingerprintConfig, Option<&str>, Duration) -> Result<T>,
}

/// A phase binary's live job: trace the targets its flags name. Without any it fails with one
/// line (binaries built with their demo run that instead).
pub fn run_phase<T: Tracing>(args: &AgentArgs, phase: &Phase<T>) -> Result<()> {
    if args.has_no_targets() {
        bail!("nothing to trace: give --pid or --comm");
    }
    args.check_targets()?;
    run_live(
        args,
        (phase.start)(&args.fingerprint(), args.comm.as_deref(), args.match_window())?,
        phase.hooks,
    )
}
