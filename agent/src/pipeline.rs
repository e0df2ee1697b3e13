//! The agent's pipeline, the same for every phase: a phase's kernel side ([`Kernel`]) is drained
//! into its matcher ([`Matching`]) through the shared matching window; the hop records that
//! come out feed the statistics and the JSON lines ([`Agent`]).

use crate::clock::monotonic_ns;
use crate::loader::ScanMode;
use crate::schema::{self, HopRecord};
use crate::stats::HopStats;
use crate::window::Window;
use anyhow::Result;
use shared::FingerprintConfig;
use std::io::Write;
use std::time::Duration;

/// How often the ring buffer is drained (events are submitted without wake-ups).
pub const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// Default matching window: a moment's sightings must fall within it.
pub const MATCH_WINDOW: Duration = Duration::from_secs(1);

/// What a phase plugs into the agent: its kernel side and its matcher.
pub trait Tracing: Send {
    /// Drains the kernel's events into the matcher, then reports the moments that are due
    /// (`now_ns`) or, with `None`, every open one. Returns the number of events drained.
    fn drain_and_match(&mut self, now_ns: Option<u64>, out: &mut Vec<HopRecord>) -> Result<u64>;
    fn add_targets(&mut self, pids: &[u32]) -> Result<()>;
    /// Looks again at the targets (ones started later, libraries mapped later); called by the
    /// live loop a few times a second.
    fn refresh(&mut self) -> Result<()>;
    /// One line of kernel and matcher counters.
    fn health(&self) -> Result<String>;
}

/// A phase's kernel side: its eBPF programs, loaded and attached, and their events.
pub trait Kernel: Send + Sized {
    type Event;
    fn start(cfg: &FingerprintConfig, comm_prefix: Option<&str>, mode: ScanMode) -> Result<Self>;
    /// Hands every waiting event to `f`; returns how many there were.
    fn drain(&mut self, f: &mut dyn FnMut(Self::Event)) -> usize;
    fn add_targets(&mut self, pids: &[u32]) -> Result<()>;
    fn remove_targets(&mut self, pids: &[u32]) -> Result<()>;
    /// See [`Tracing::refresh`]; nothing to do unless the kernel side hooks per process.
    fn refresh(&mut self) -> Result<()> {
        Ok(())
    }
    /// The kernel side's counters, one line.
    fn health(&self) -> Result<String>;
}

/// A phase's matcher: what it keeps of each event while the window is open, and how it turns
/// all sightings of one signature into hop records.
pub trait Matching: Send + Default {
    type Event;
    type Seen: Send;
    /// The event's signature, time, and what is kept of it until its window closes; `None` for
    /// an event that is what the matcher learns of the pipeline, not a sighting.
    fn admit(&mut self, e: Self::Event) -> Option<(u64, u64, Self::Seen)>;
    /// Every sighting of one signature within the window.
    fn close(&mut self, seen: Vec<Self::Seen>, out: &mut Vec<HopRecord>);
    /// The matcher's counters, one line.
    fn health(&self) -> String;
}

/// A matcher behind the shared window: events in, hop records out once their window closes.
pub struct Matched<M: Matching> {
    pub matcher: M,
    window: Window<M::Seen>,
}

impl<M: Matching> Matched<M> {
    pub fn new(window: Duration) -> Self {
        Self {
            matcher: M::default(),
            window: Window::new(window.as_nanos() as u64),
        }
    }

    pub fn push(&mut self, e: M::Event) {
        if let Some((signature, t_ns, seen)) = self.matcher.admit(e) {
            self.window.push(signature, t_ns, seen);
        }
    }

    /// Closes the groups due at `now_ns` (every open group with `None`) into `out`.
    pub fn close_due(&mut self, now_ns: Option<u64>, out: &mut Vec<HopRecord>) {
        for group in self.window.take_due(now_ns) {
            self.matcher.close(group, out);
        }
    }
}

/// A phase's tracing: its kernel side feeding its matcher through the shared window.
pub struct PhaseTracing<K, M: Matching> {
    pub kernel: K,
    pub matching: Matched<M>,
}

impl<K: Kernel, M: Matching<Event = K::Event>> PhaseTracing<K, M> {
    pub fn start(
        cfg: &FingerprintConfig,
        comm_prefix: Option<&str>,
        window: Duration,
    ) -> Result<Self> {
        Ok(Self::new(
            K::start(cfg, comm_prefix, ScanMode::Scan)?,
            window,
        ))
    }

    /// Around a kernel side started some other way.
    pub fn new(kernel: K, window: Duration) -> Self {
        Self {
            kernel,
            matching: Matched::new(window),
        }
    }
}

impl<K: Kernel, M: Matching<Event = K::Event>> Tracing for PhaseTracing<K, M> {
    fn drain_and_match(&mut self, now_ns: Option<u64>, out: &mut Vec<HopRecord>) -> Result<u64> {
        let matching = &mut self.matching;
        let n = self.kernel.drain(&mut |e| matching.push(e)) as u64;
        self.matching.close_due(now_ns, out);
        Ok(n)
    }

    fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        self.kernel.add_targets(pids)
    }

    fn refresh(&mut self) -> Result<()> {
        self.kernel.refresh()
    }

    fn health(&self) -> Result<String> {
        Ok(format!(
            "kernel: {} | agent: {}",
            self.kernel.health()?,
            self.matching.matcher.health()
        ))
    }
}

/// The agent: drains a phase's tracer, matches, keeps statistics and writes JSON lines.
pub struct Agent<T: Tracing> {
    pub tracing: T,
    pub stats: HopStats,
    json: Option<Box<dyn Write + Send>>,
    /// Every hop record, when asked to keep them (demo and tests).
    pub records: Option<Vec<HopRecord>>,
    pub events: u64,
}

impl<T: Tracing> Agent<T> {
    pub fn new(tracing: T, json: Option<Box<dyn Write + Send>>, keep_records: bool) -> Self {
        Self {
            tracing,
            stats: HopStats::default(),
            json,
            records: keep_records.then(Vec::new),
            events: 0,
        }
    }

    /// Drains the ring buffer and reports the moments whose matching window has closed.
    pub fn tick(&mut self) -> Result<()> {
        self.drain(Some(monotonic_ns()))
    }

    /// Drains and closes every open moment.
    pub fn finish(&mut self) -> Result<()> {
        self.drain(None)
    }

    fn drain(&mut self, now_ns: Option<u64>) -> Result<()> {
        let mut out = Vec::new();
        self.events += self.tracing.drain_and_match(now_ns, &mut out)?;
        for r in &out {
            self.stats.add(r);
        }
        if let Some(w) = self.json.as_mut() {
            schema::write_jsonl(w, &out)?;
            w.flush()?;
        }
        if let Some(all) = self.records.as_mut() {
            all.extend(out);
        }
        Ok(())
    }

    pub fn health(&self) -> Result<String> {
        Ok(format!("{} events={}", self.tracing.health()?, self.events))
    }
}
