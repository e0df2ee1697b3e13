//! The agent's command line, the same for every phase: its flags, the target checks and the live
//! loop; each phase brings its own [`Tracing`].

use crate::pipeline::{Agent, Tracing, DRAIN_EVERY};
use crate::targets::{pids_with_comm_prefix, process_exists, COMM_LEN};
use anyhow::{bail, Context, Result};
use clap::Args;
use shared::FingerprintConfig;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// What to trace and how to fingerprint it: the flags of every phase's agent.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Trace this process (repeatable).
    #[arg(short, long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Trace every process whose command name starts with this, including ones started later.
    #[arg(short, long, value_name = "PREFIX", value_parser = comm_prefix)]
    pub comm: Option<String>,
    /// Stop after this long: `30` (seconds), `500ms`, `2m` (default: on Ctrl-C, or when every
    /// --pid has exited).
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// Fingerprint window in bytes (cluster-wide: every node must use the same value).
    #[arg(long, default_value_t = FingerprintConfig::default().window)]
    pub window: usize,
    /// Fingerprint density: anchors kept per 256 (cluster-wide).
    #[arg(long, default_value_t = FingerprintConfig::default().keep_per_256)]
    pub keep_per_256: u16,
}

/// What an agent that matches on its own node prints on stdout.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    // The hop table (live on stderr, at the end on stdout).
    Table,
    // Every matched hop as a JSON line (docs/results-schema.md) as it is matched; the tables
    // go to stderr.
    Json,
}

/// How an agent that matches on its own node reports (phases 1 and 2; from phase 3 on, the
/// collector matches and reports, and the agents have none of these flags).
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// What stdout gets: the hop table, or every matched hop as a JSON line as it is matched
    /// (the tables then go to stderr).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Also write every matched hop as JSON lines (docs/results-schema.md) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// A moment's sightings must fall within this window.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub match_window_ms: u64,
    /// Print the live hop table this often: `2` (seconds), `500ms` (0: only at the end).
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = parse_interval, allow_hyphen_values = true)]
    pub report_every: Duration,
}

impl ReportArgs {
    pub fn match_window(&self) -> Duration {
        Duration::from_millis(self.match_window_ms)
    }

    /// Where the JSON lines go: the --json file, created now (before anything is loaded, so
    /// that a bad path costs nothing), and stdout with `--output json`.
    pub fn open_json(&self) -> Result<Option<Box<dyn std::io::Write + Send>>> {
        let stdout = (self.output == Output::Json)
            .then(|| -> Box<dyn std::io::Write + Send> { Box::new(std::io::stdout()) });
        let Some(p) = &self.json else {
            return Ok(stdout);
        };
        let file = std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?;
        let file: Box<dyn std::io::Write + Send> = Box::new(std::io::BufWriter::new(file));
        Ok(Some(match stdout {
            Some(stdout) => Box::new(Both(file, stdout)),
            None => file,
        }))
    }
}

/// Writes to two writers: the --json file and stdout.
struct Both(
    Box<dyn std::io::Write + Send>,
    Box<dyn std::io::Write + Send>,
);

impl std::io::Write for Both {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// The flags of a phase's agent that matches on its own node (phases 1 and 2).
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

impl TargetArgs {
    pub fn fingerprint(&self) -> FingerprintConfig {
        FingerprintConfig {
            window: self.window,
            keep_per_256: self.keep_per_256,
            ..Default::default()
        }
    }

    /// Neither --pid nor --comm: nothing to trace (a binary built with its demo runs that).
    pub fn has_no_targets(&self) -> bool {
        self.pid.is_empty() && self.comm.is_none()
    }

    /// Fails with one line when a --pid does not exist; says so, once, when no process of
    /// --comm runs yet (the kernel side picks them up when they start).
    pub fn check_targets(&self) -> Result<()> {
        for &pid in &self.pid {
            if !process_exists(pid) {
                bail!("no process with pid {pid}");
            }
        }
        if let Some(prefix) = &self.comm {
            if pids_with_comm_prefix(prefix)?.is_empty() {
                tracing::warn!(
                    "no process with a command name starting with {prefix:?} runs yet: tracing those that start"
                );
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

/// A stop that never comes, for a run without --duration (and a report period of 0).
pub const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// The shortest report period: a table a millisecond is already more than a terminal shows.
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// A `--duration`-style flag: a number of seconds, or a duration as humantime reads it (`500ms`,
/// `2m`, `1h30m`, `1500us`); more than zero and at most [`FOREVER`]. NaN, infinities, negative values and
/// garbage are refused with a line that says which.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_interval(text)?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// As [`parse_duration`], with 0 allowed (it means "never": see [`report_period`]); a period
/// other than 0 is at least 1 ms.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let d = match t.parse::<f64>() {
        // A bare number is seconds (NaN and infinities spelled out included, and refused).
        Ok(seconds) => {
            if !seconds.is_finite() || seconds < 0.0 {
                return Err(format!(
                    "{text:?} is not a duration: it must be finite and not negative"
                ));
            }
            if seconds > FOREVER.as_secs_f64() {
                return Err(format!("{text:?} is longer than 100 years"));
            }
            // Checked before rounding to whole ns: 1e-12 is too short, not 0.
            if seconds > 0.0 && seconds < MIN_PERIOD.as_secs_f64() {
                return Err(format!("{text:?} is shorter than 1 ms"));
            }
            Duration::from_secs_f64(seconds)
        }
        Err(_) => humantime::parse_duration(t).map_err(|e| {
            // humantime lists every unit it knows after an unknown one: too long for one line.
            let why = match e {
                humantime::DurationError::UnknownUnit { unit, .. } => {
                    format!("unknown unit {unit:?}")
                }
                other => other.to_string(),
            };
            format!("{text:?} is not a duration ({why}); examples: 30, 500ms, 2m, 1h30m")
        })?,
    };
    if d > FOREVER {
        return Err(format!("{text:?} is longer than 100 years"));
    }
    if !d.is_zero() && d < MIN_PERIOD {
        return Err(format!("{text:?} is shorter than 1 ms"));
    }
    Ok(d)
}

/// A `--comm` prefix: no longer than the kernel keeps of a command name.
pub fn comm_prefix(text: &str) -> Result<String, String> {
    if text.len() >= COMM_LEN {
        return Err(format!(
            "{text:?} is longer than a command name ({} bytes)",
            COMM_LEN - 1
        ));
    }
    Ok(text.to_string())
}

/// An address to listen on: `IP:PORT`, `HOST:PORT` (resolved now, an IPv4 address
/// preferred) or `:PORT` (every interface).
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let example = "examples: 127.0.0.1:9090, localhost:9090, :9090";
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port; {example}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not an address to listen on ({e}); {example}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Binds a server's socket, failing with one line that names the address.
pub fn listen(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The period of a report flag: 0 means only at the end.
pub fn report_period(every: Duration) -> Duration {
    if every.is_zero() {
        FOREVER
    } else {
        every
    }
}

/// Runs the binary's main: `run`'s error becomes one line on stderr (see [`crate::log`]) and
/// exit status 1.
pub fn exit_on_error(program: &str, run: impl FnOnce() -> Result<()>) {
    if let Err(e) = run() {
        crate::log::fatal(program, &e);
        std::process::exit(1);
    }
}

/// Traces live until Ctrl-C, --duration, or every --pid has exited; prints the table live and
/// at the end, and writes the hops to `json`. `what` names the hooked calls in the start line.
fn run_live<T: Tracing>(
    args: &TraceArgs,
    mut tracing: T,
    json: Option<Box<dyn std::io::Write + Send>>,
    what: &str,
) -> Result<()> {
    let (targets, report) = (&args.targets, &args.report);
    tracing.add_targets(&targets.pid)?;
    let mut agent = Agent::new(tracing, json, false);
    tracing::info!(
        "tracing {what} of {}; Ctrl-C to stop",
        targets.describe_targets()
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut drain = tokio::time::interval(DRAIN_EVERY);
            let every = report_period(report.report_every);
            let mut report = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut liveness = tokio::time::interval(Duration::from_millis(200));
            let stop = tokio::time::sleep(targets.duration.unwrap_or(FOREVER));
            // Made once: a Ctrl-C future made anew each turn misses a signal that came between.
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(stop, ctrl_c);
            loop {
                tokio::select! {
                    _ = drain.tick() => agent.tick()?,
                    _ = report.tick() => eprintln!("{}{}", agent.stats.table(), agent.health()?),
                    _ = liveness.tick() => {
                        if targets.comm.is_none() && !targets.pid.iter().any(|&p| process_exists(p)) {
                            tracing::info!("every target process has exited; stopping");
                            break;
                        }
                        agent.tracing.refresh()?;
                    }
                    _ = &mut ctrl_c => break,
                    _ = &mut stop => break,
                }
            }
            anyhow::Ok(())
        })?;
    agent.finish()?;
    let summary = format!("{}{}", agent.stats.table(), agent.health()?);
    match report.output {
        Output::Table => println!("{summary}"),
        // stdout holds only JSON lines.
        Output::Json => eprintln!("{summary}"),
    }
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
pub fn run_phase<T: Tracing>(args: &TraceArgs, phase: &Phase<T>) -> Result<()> {
    let targets = &args.targets;
    if targets.has_no_targets() {
        bail!("nothing to trace: give --pid or --comm");
    }
    targets.check_targets()?;
    let json = args.report.open_json()?;
    let tracing = (phase.start)(
        &targets.fingerprint(),
        targets.comm.as_deref(),
        args.report.match_window(),
    )?;
    run_live(args, tracing, json, phase.hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_what_is_not_one() {
        let ok = [
            ("30", Duration::from_secs(30)),
            ("2.5", Duration::from_millis(2500)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1500us", Duration::from_micros(1500)),
            ("1h30m", Duration::from_secs(5400)),
            ("1e3", Duration::from_secs(1000)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for text in [
            "nan",
            "inf",
            "-inf",
            "-1",
            "1e300",
            "abc",
            "5 parsecs",
            "",
            "1e-12",
            "ms",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert_eq!(e.lines().count(), 1, "{text}: {e}");
        }
        assert_eq!(parse_duration("0").unwrap_err(), "must be more than 0");
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(report_period(Duration::ZERO), FOREVER);
        assert!(parse_interval("1e-12")
            .unwrap_err()
            .contains("shorter than 1 ms"));
    }

    #[test]
    fn listen_addresses_take_host_names_and_bare_ports() {
        assert_eq!(
            listen_address(":9090"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9090)))
        );
        assert_eq!(
            listen_address("localhost:50051"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 50051)))
        );
        assert_eq!(listen_address("[::1]:1"), Ok("[::1]:1".parse().unwrap()));
        for bad in [
            ":",
            ":http",
            "localhost",
            "no-such-host.invalid:1",
            "1.2.3.4:99999",
        ] {
            let e = listen_address(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?}")) && e.lines().count() == 1,
                "{e}"
            );
        }
    }
}
