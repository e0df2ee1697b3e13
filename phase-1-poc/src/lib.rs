//! Phase 1: a C eBPF `write()` tracer (bpf/phase1.bpf.c, bpf/phase1.h) that recognises audio
//! moments in the buffers target processes write (`tracer`, `event`), and a matcher that pairs
//! the same moment across writers (`matcher`). The agent around them — loading, targets, the
//! matching window, statistics, the command line — is the `agent` crate's, as for every phase.

pub mod event;
pub mod matcher;
pub mod tracer;

use agent::pipeline::PhaseTracing;

/// Phase 1: the write() tracer and the writer-to-writer matcher.
pub type Phase1 = PhaseTracing<tracer::Tracer, matcher::Matcher>;

/// Phase 1 on harness scenarios: its demo and its tests.
#[cfg(feature = "demo")]
pub mod demo {
    use super::Phase1;
    use agent::pipeline::MATCH_WINDOW;
    use anyhow::Result;
    use harness::demo::{trace_scenario, TracedRun};
    use harness::scenario::Scenario;
    use harness::score::Observes;
    use shared::FingerprintConfig;
    use std::path::Path;

    /// Phase 1 sees writes only: its hops are write → write.
    pub const OBSERVES: Observes = Observes::WRITES;

    /// Runs a scenario under phase 1 with the default matching window.
    pub fn trace_scenario_phase1(
        sc: &Scenario,
        exe: &Path,
        cfg: &FingerprintConfig,
    ) -> Result<TracedRun> {
        trace_scenario(
            sc,
            exe,
            cfg,
            OBSERVES,
            Phase1::start(cfg, None, MATCH_WINDOW)?,
            "phase-1-poc",
        )
    }
}
