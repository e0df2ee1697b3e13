//! Loads phase 1's eBPF program, attaches it to `write()`, and drains its events.

use crate::event::Phase1Event;
use agent::counters::{Counters, SCAN_COUNTERS};
use agent::loader::{
    attach_syscall, load_object, read_counters, recursion_misses, verified_instructions, ScanMode,
};
use agent::targets::{add_targets, remove_targets};
use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use aya::Ebpf;
use shared::FingerprintConfig;

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/phase1.bpf.o"));
const PROGRAM: &str = "phase1_write";

pub struct Tracer {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
}

impl Tracer {
    /// Loads the program with the cluster-wide fingerprint settings and attaches it to
    /// `write()`. Targets are the tgids added later and, if given, every process whose command
    /// name starts with `comm_prefix`.
    pub fn start(cfg: &FingerprintConfig, comm_prefix: Option<&str>) -> Result<Self> {
        Self::start_mode(cfg, comm_prefix, ScanMode::Scan)
    }

    pub fn start_mode(
        cfg: &FingerprintConfig,
        comm_prefix: Option<&str>,
        mode: ScanMode,
    ) -> Result<Self> {
        let mut ebpf = load_object(OBJECT, cfg, comm_prefix, mode, &[])?;
        attach_syscall(&mut ebpf, PROGRAM, "sys_enter_write")?;
        let events = RingBuf::try_from(ebpf.take_map("events").context("map events missing")?)?;
        Ok(Self { ebpf, events })
    }

    pub fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        add_targets(&mut self.ebpf, pids)
    }

    /// Hands every event waiting in the ring buffer to `f`; returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(Phase1Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if let Some(e) = Phase1Event::parse(&item) {
                f(e);
                n += 1;
            }
        }
        n
    }

    pub fn counters(&self) -> Result<Counters> {
        read_counters(&self.ebpf, "fp_counters", &SCAN_COUNTERS)
    }

    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        verified_instructions(&self.ebpf)
    }
}

impl agent::pipeline::Kernel for Tracer {
    type Event = Phase1Event;

    fn start(cfg: &FingerprintConfig, comm_prefix: Option<&str>, mode: ScanMode) -> Result<Self> {
        Tracer::start_mode(cfg, comm_prefix, mode)
    }

    fn remove_targets(&mut self, pids: &[u32]) -> Result<()> {
        remove_targets(&mut self.ebpf, pids)
    }

    fn drain(&mut self, f: &mut dyn FnMut(Phase1Event)) -> usize {
        Tracer::drain(self, f)
    }

    fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        Tracer::add_targets(self, pids)
    }

    fn health(&self) -> Result<String> {
        Ok(format!(
            "{} recursion_misses={}",
            self.counters()?,
            recursion_misses(&self.ebpf)
        ))
    }
}
