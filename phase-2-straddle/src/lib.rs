//! Phase 2: every read and write path (write/writev/sendto/sendmsg, read/readv/recvfrom/recvmsg
//! on pipes, unix and TCP sockets), scan state carried per flow so that moments straddling calls
//! are found, and a matcher that builds each moment's tree of transit and residence hops.
//! Loading, the agent, the CLI and the statistics are phase 1's (used as a library).

pub mod event;
pub mod links;
pub mod matcher;
pub mod tracer;

use anyhow::Result;
use harness::scenario::Scenario;
use harness::score::Observes;
use matcher::Matcher;
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
    trace_scenario(
        sc,
        exe,
        cfg,
        OBSERVES,
        Phase2::start(cfg, None, MATCH_WINDOW)?,
        "phase-2-straddle",
    )
}
