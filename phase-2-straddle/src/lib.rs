//! Phase 2: every read and write path (write/writev/sendto/sendmsg, read/readv/recvfrom/recvmsg
//! on pipes, unix and TCP sockets), scan state carried per flow so that moments straddling calls
//! are found (on TLS links: the plaintext, at OpenSSL's SSL_read/SSL_write: `tls`, or at Go's
//! crypto/tls: `go_tls`). The tracer
//! (`tracer`, `event`) resolves each sighting's link as it drains it (`links`); the matcher
//! builds each moment's tree of transit and residence hops (`matcher`). The agent around them is
//! the `agent` crate's.

pub mod conntrack;
pub mod event;
pub mod go_tables;
pub mod go_tls;
pub mod links;
pub mod matcher;
pub mod opaque_links;
pub mod tls;
pub mod tracer;
pub mod unix_peers;

use agent::loader::ScanMode;
use agent::pipeline::PhaseTracing;
use anyhow::Result;
use shared::FingerprintConfig;

/// Phase 2: every read and write path, and the link-aware matcher.
pub type Phase2 = PhaseTracing<tracer::Tracer, matcher::Matcher>;

/// Phase 2 as the CLI starts it with --no-tls.
pub fn start_without_tls(
    cfg: &FingerprintConfig,
    comm_prefix: Option<&str>,
    window: std::time::Duration,
) -> Result<Phase2> {
    Ok(Phase2::new(
        tracer::Tracer::start_with(cfg, comm_prefix, ScanMode::Scan, false)?,
        window,
    ))
}

/// Phase 2 on harness scenarios: its demo and its tests.
#[cfg(feature = "demo")]
pub mod demo {
    use super::{tracer::Tracer, Phase2};
    use agent::loader::ScanMode;
    use agent::pipeline::MATCH_WINDOW;
    use anyhow::Result;
    use harness::demo::{trace_scenario, TracedRun};
    use harness::scenario::{Scenario, TlsStack};
    use harness::score::Observes;
    use shared::FingerprintConfig;
    use std::path::Path;

    /// Phase 2 sees reads and writes, OpenSSL's and Go crypto/tls's plaintext through their
    /// uprobes: its hops are transit and residence. No other TLS stack's plaintext (the JDK,
    /// rustls): across one, a hop runs from the last sighting before it to the first after it.
    /// Phases 3 and 4 see what it sees.
    pub const OBSERVES: Observes = Observes {
        tls_stacks: &[TlsStack::Go],
        ..Observes::READS_AND_WRITES
    };

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
}
