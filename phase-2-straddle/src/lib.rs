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
use harness::schema::HopRecord;
use harness::score::Observes;
use matcher::Matcher;
use phase_1_poc::{trace_scenario, TracedRun, Tracing, MATCH_WINDOW};
use shared::FingerprintConfig;
use std::path::Path;
use std::time::Duration;
use tracer::Tracer;

/// Phase 2 sees reads and writes: its hops are transit and residence.
pub const OBSERVES: Observes = Observes::ALL;

pub struct Phase2 {
    pub tracer: Tracer,
    pub matcher: Matcher,
}

impl Phase2 {
    pub fn start(
        cfg: &FingerprintConfig,
        comm_prefix: Option<&str>,
        window: Duration,
    ) -> Result<Self> {
        Ok(Self {
            tracer: Tracer::start(cfg, comm_prefix)?,
            matcher: Matcher::new(window.as_nanos() as u64),
        })
    }
}

impl Tracing for Phase2 {
    fn drain_and_match(&mut self, now_ns: Option<u64>, out: &mut Vec<HopRecord>) -> Result<u64> {
        let matcher = &mut self.matcher;
        let n = self.tracer.drain(|e| matcher.push(e)) as u64;
        match now_ns {
            Some(now) => matcher.flush(now, out),
            None => matcher.finish(out),
        }
        Ok(n)
    }

    fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        self.tracer.add_targets(pids)
    }

    fn health(&self) -> Result<String> {
        let (scan, path) = self.tracer.counters()?;
        let live = self.tracer.live_flows()? as u64;
        let evicted = path
            .get("flows_created")
            .saturating_sub(path.get("flows_closed") + live);
        let c = self.matcher.counters;
        Ok(format!(
            "kernel: {scan} {path} flows_live={live} flows_evicted={evicted} | agent: unmatched={} refused_repeats={} \
             refused_ambiguous={} unpaired={}",
            c.unmatched, c.refused_repeats, c.refused_ambiguous, c.unpaired
        ))
    }
}

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
