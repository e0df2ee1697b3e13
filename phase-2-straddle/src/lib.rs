//! Phase 2: every read and write path (write/writev/sendto/sendmsg, read/readv/recvfrom/recvmsg
//! on pipes, unix and TCP sockets), scan state carried per flow so that moments straddling calls
//! are found (on TLS links: the plaintext, at OpenSSL's SSL_read/SSL_write), and a matcher that builds each moment's tree of transit and residence hops.
//! Loading, the agent, the CLI and the statistics are phase 1's (used as a library).

pub mod event;
pub mod links;
pub mod matcher;
pub mod tls;
pub mod tracer;

use anyhow::Result;
use harness::scenario::Scenario;
use harness::score::Observes;
use matcher::Matcher;
use phase_1_poc::tracer::ScanMode;
use phase_1_poc::{trace_scenario, PhaseTracing, TracedRun, MATCH_WINDOW};
use shared::FingerprintConfig;
use std::path::Path;
use tracer::Tracer;

/// Phase 2 sees reads and writes: its hops are transit and residence.
pub const OBSERVES: Observes = Observes::ALL;

/// Phase 2: every read and write path, and the link-aware matcher.
pub type Phase2 = PhaseTracing<Tracer, Matcher>;

/// Runs a scenario under phase 2 with the default matching window.
pub fn trace_scenario_phase2(
    sc: &Scenario,
    exe: &Path,
    cfg: &FingerprintConfig,
) -> Result<TracedRun> {
    trace_scenario_phase2_with(sc, exe, cfg, true)
}

/// The same, with the OpenSSL probes on or off.
pub fn trace_scenario_phase2_with(
    sc: &Scenario,
    exe: &Path,
    cfg: &FingerprintConfig,
    tls: bool,
) -> Result<TracedRun> {
    let tracing = Phase2::new(
        Tracer::start_with(cfg, None, ScanMode::Scan, tls)?,
        MATCH_WINDOW,
    );
    let name = if tls {
        "phase-2-straddle"
    } else {
        "phase-2-straddle --no-tls"
    };
    trace_scenario(sc, exe, cfg, OBSERVES, tracing, name)
}

/// Phase 2 as the CLI starts it with --no-tls.
pub fn start_without_tls(
    cfg: &FingerprintConfig,
    comm_prefix: Option<&str>,
    window: std::time::Duration,
) -> Result<Phase2> {
    Ok(Phase2::new(
        Tracer::start_with(cfg, comm_prefix, ScanMode::Scan, false)?,
        window,
    ))
}
