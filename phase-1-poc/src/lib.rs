//! Phase 1: a C eBPF `write()` tracer (bpf/phase1.bpf.c) that recognises audio moments in the
//! buffers target processes write, and an agent that matches the same moment across writers and
//! reports per-hop latency.

pub mod counters;
pub mod event;
pub mod matcher;
pub mod report;
pub mod tracer;

use anyhow::Result;
use counters::Counters;
use harness::scenario::Scenario;
use harness::schema::{self, HopRecord};
use harness::score::{CallTruthIndex, Observes, Score};
use harness::truth::{monotonic_ns, GroundTruth};
use matcher::Matcher;
use report::HopStats;
use shared::FingerprintConfig;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracer::Tracer;

/// How often the ring buffer is drained (events are submitted without wake-ups).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Default matching window: a moment's sightings must fall within it.
pub const MATCH_WINDOW: Duration = Duration::from_secs(1);

/// The agent: drains the tracer, matches, keeps statistics and writes JSON lines.
pub struct Agent {
    pub tracer: Tracer,
    matcher: Matcher,
    pub stats: HopStats,
    json: Option<Box<dyn Write + Send>>,
    /// Every hop record, when asked to keep them (demo and tests).
    pub records: Option<Vec<HopRecord>>,
    pub events: u64,
}

impl Agent {
    pub fn new(tracer: Tracer, window: Duration, json: Option<Box<dyn Write + Send>>, keep_records: bool) -> Self {
        Self {
            tracer,
            matcher: Matcher::new(window.as_nanos() as u64),
            stats: HopStats::default(),
            json,
            records: keep_records.then(Vec::new),
            events: 0,
        }
    }

    /// Drains the ring buffer and reports the moments whose matching window has closed.
    pub fn tick(&mut self) -> Result<()> {
        self.drain_then(|m, out| m.flush(monotonic_ns(), out))
    }

    /// Drains and closes every open moment.
    pub fn finish(&mut self) -> Result<()> {
        self.drain_then(|m, out| m.finish(out))
    }

    fn drain_then(&mut self, close: impl FnOnce(&mut Matcher, &mut Vec<HopRecord>)) -> Result<()> {
        let matcher = &mut self.matcher;
        self.events += self.tracer.drain(|e| matcher.push(e)) as u64;
        let mut out = Vec::new();
        close(matcher, &mut out);
        for r in &out {
            self.stats.add(r);
        }
        if let Some(w) = self.json.as_mut() {
            schema::write_jsonl(w, &out)?;
        }
        if let Some(all) = self.records.as_mut() {
            all.extend(out);
        }
        Ok(())
    }

    /// One line of the agent's own health: kernel counters and matcher counters.
    pub fn health(&self) -> Result<String> {
        Ok(format!(
            "kernel: {} | agent: events={} refused={} unmatched={}",
            self.tracer.counters()?,
            self.events,
            self.matcher.refused,
            self.matcher.unmatched
        ))
    }
}

/// A scenario traced by phase 1 and scored against its ground truth.
pub struct TracedRun {
    pub gt: GroundTruth,
    pub records: Vec<HopRecord>,
    pub score: Score,
    /// The hops as phase 1 measured them.
    pub measured: HopStats,
    /// The same hops as the ground truth has them (the oracle's write → write records).
    pub truth: HopStats,
    pub counters: Counters,
    pub health: String,
}

/// Phase 1 sees writes only: its hops are write → write.
pub const OBSERVES: Observes = Observes::WRITES;

/// Runs `sc` (components launched from `exe`) under phase 1's tracer, draining live.
pub fn trace_scenario(sc: &Scenario, exe: &Path, cfg: &FingerprintConfig) -> Result<TracedRun> {
    let agent = Arc::new(Mutex::new(Agent::new(Tracer::start(cfg, None)?, MATCH_WINDOW, None, true)));
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
    let dir = harness::run::workdir(&format!("phase1-{}", sc.id))?;
    let gt = harness::run::run(sc, exe, &dir, |t| agent.lock().unwrap().tracer.add_targets(&t.pids));
    done.store(true, Ordering::Relaxed);
    drainer.join().expect("drain thread panicked")?;
    let gt = gt?;
    let mut agent = agent.lock().unwrap();
    agent.finish()?;
    let records = agent.records.take().unwrap_or_default();
    let calls = CallTruthIndex::build(&gt, *cfg)?;
    std::fs::remove_dir_all(&dir).ok();
    let score = harness::score::score_indexed(&gt, &calls, &records, OBSERVES, *cfg, "phase-1-poc");
    let mut truth = HopStats::default();
    for r in harness::oracle::records(&gt, &calls, OBSERVES) {
        truth.add(&r);
    }
    let measured = std::mem::take(&mut agent.stats);
    Ok(TracedRun { gt, records, score, measured, truth, counters: agent.tracer.counters()?, health: agent.health()? })
}
