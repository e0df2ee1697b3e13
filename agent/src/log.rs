//! Log lines, for every binary: leveled and timestamped, as text or as JSON lines, on stderr.
//! Reports — the hop table and the health line — are not log lines: they are printed as they
//! are, for people and for the scripts that parse them.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-01-02T03:04:05.678901Z  INFO message`
    Text,
    /// One JSON object a line: `timestamp`, `level`, `message` and the event's fields.
    Json,
}

/// The log flags of every binary.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// How log lines (on stderr) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Which log lines: `error`, `warn`, `info`, `debug`, `trace`, or directives per module as
    /// in RUST_LOG (`info,phase_3_multi_node=debug`). Default: RUST_LOG, else `info` (without
    /// kube's per-request errors).
    #[arg(long, value_name = "FILTER", global = true, value_parser = parse_filter)]
    pub log_level: Option<String>,
}

/// Without --log-level or RUST_LOG: `info`, except kube's HTTP layer, which logs every failed
/// request to the API server at ERROR (a line a second while it is unreachable); phase 4's pod
/// watch says such failures itself, once and then at most once a minute.
const DEFAULT_FILTER: &str = "info,kube_client::client::builder=off";

/// The format logging was set up with: the exit line of a failed run follows it.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

fn parse_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("not a log filter: {e}"))
}

impl LogArgs {
    /// Sends this process's log lines (and those of its libraries) to stderr. Once per
    /// process; a RUST_LOG that is not a filter fails with one line.
    pub fn init(&self) -> Result<()> {
        let filter = match &self.log_level {
            Some(level) => EnvFilter::new(level),
            None => match std::env::var("RUST_LOG") {
                Ok(text) if !text.trim().is_empty() => EnvFilter::try_new(&text)
                    .with_context(|| format!("RUST_LOG={text:?} is not a log filter"))?,
                _ => EnvFilter::new(DEFAULT_FILTER),
            },
        };
        let fmt = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false);
        let installed = match self.log_format {
            LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).try_init(),
            LogFormat::Json => fmt
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .try_init(),
        };
        installed.map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
        FORMAT.get_or_init(|| self.log_format);
        Ok(())
    }
}

/// How a failed run says why: one line on stderr, a JSON log line when logs are JSON.
pub(crate) fn fatal(program: &str, e: &anyhow::Error) {
    if FORMAT.get() == Some(&LogFormat::Json) {
        tracing::error!("{program}: {e:#}");
    } else {
        eprintln!("{program}: {e:#}");
    }
}
