//! The cost of a write+read pair through a pipe, one thread, for each phase's kernel side:
//!
//! - untraced: no program loaded;
//! - not a target: the phase loaded, this process not traced (what every other process pays);
//! - floor: this process traced, the programs copy its bytes but do not scan them;
//! - mark: the copy and the scan's first pass (SWAR over every word), nothing after it;
//! - scan: the tracer as it runs.
//!
//! Modes are interleaved batch by batch within a load, rounds repeat every load, and each
//! figure is the median of its batches' means: the machine's noise hits every mode alike.
//!
//! With `--program-time` the figures are instead the time spent inside the phase's eBPF
//! programs per pair (their `run_time_ns`, counted while `kernel.bpf_stats_enabled` is set):
//! what each pass costs, free of the syscall path and of the host's steal time.

use agent::loader::{fdinfo_field, ScanMode};
use agent::pipeline::Kernel;
use anyhow::Result;
use harness::audio;
use shared::FingerprintConfig;
use std::collections::BTreeMap;

const SIZES: [usize; 2] = [2 * 1024, 64 * 1024];
/// Bytes written (and read) per batch, whatever the pair size.
const BATCH_BYTES: usize = 2 << 20;
/// Batches per mode, size and content in each round.
const BATCHES: usize = 4;
/// Pipe capacity: a 64 KiB write must never wait for the read.
const PIPE_SIZE: i32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Content {
    Speech,
    Quiet,
    Json,
}

impl Content {
    const ALL: [Content; 3] = [Content::Speech, Content::Quiet, Content::Json];

    pub(crate) fn bytes(self) -> Result<Vec<u8>> {
        Ok(match self {
            Content::Speech => audio::speech_call(&audio::speech_corpus()?, 60.0, 1).to_bytes(),
            // Comfort noise at a few LSB: what a muted line carries.
            Content::Quiet => audio::comfort_noise(8000, 60.0, 30.0, 2).to_bytes(),
            Content::Json => (0..)
                .map(|i| {
                    format!(
                        "{{\"ts\":{},\"level\":\"info\",\"call\":\"c-{}\",\"event\":\"guidance\",\"text\":\"slow down, confirm the account number\"}}\n",
                        1_790_000_000_000u64 + i * 20,
                        i % 977
                    )
                })
                .flat_map(String::into_bytes)
                .take(960_000)
                .collect(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Untraced,
    NotTarget,
    Floor,
    Mark,
    Scan,
}

pub(crate) struct Pipe {
    r: i32,
    w: i32,
}

impl Pipe {
    pub(crate) fn new() -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: a pipe fd we own.
        if unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(Self {
            r: fds[0],
            w: fds[1],
        })
    }

    /// Mean ns per pair over one batch of `size`-byte pairs taken from `bytes`, by the clock
    /// or inside the eBPF programs.
    fn measure(&self, bytes: &[u8], size: usize, buf: &mut [u8], program_time: bool) -> f64 {
        if !program_time {
            return self.batch(bytes, size, buf);
        }
        let before = program_ns();
        self.batch(bytes, size, buf);
        (program_ns() - before) as f64 / (BATCH_BYTES / size) as f64
    }

    /// Mean ns per pair over one batch of `size`-byte pairs taken from `bytes`.
    pub(crate) fn batch(&self, bytes: &[u8], size: usize, buf: &mut [u8]) -> f64 {
        let pairs = BATCH_BYTES / size;
        let t = std::time::Instant::now();
        for i in 0..pairs {
            let chunk = &bytes[(i * size) % (bytes.len() - size)..][..size];
            // SAFETY: valid buffers of `size` bytes and open fds.
            unsafe {
                assert_eq!(
                    libc::write(self.w, chunk.as_ptr().cast(), size),
                    size as isize
                );
                assert_eq!(
                    libc::read(self.r, buf.as_mut_ptr().cast(), size),
                    size as isize
                );
            }
        }
        t.elapsed().as_nanos() as f64 / pairs as f64
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: fds we own.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

/// ns spent so far in the eBPF programs this process holds, by their fdinfo's `run_time_ns`.
fn program_ns() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .map(|info| fdinfo_field(&info, "run_time_ns"))
        .sum()
}

/// Sets `kernel.bpf_stats_enabled` for its lifetime, then restores it.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let was = std::fs::read_to_string(BPF_STATS)?;
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self(was))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.0.trim());
    }
}

type Cells = BTreeMap<(&'static str, usize, Content, Mode), Vec<f64>>;

struct Bench {
    program_time: bool,
    pipe: Pipe,
    buf: Vec<u8>,
    contents: Vec<(Content, Vec<u8>)>,
    cells: Cells,
}

impl Bench {
    /// One batch of every size and content, counted as `mode`; `drain` runs after each.
    fn sweep(&mut self, phase: &'static str, mode: Mode, mut drain: impl FnMut()) {
        for size in SIZES {
            for (content, bytes) in &self.contents {
                let ns = self
                    .pipe
                    .measure(bytes, size, &mut self.buf, self.program_time);
                self.cells
                    .entry((phase, size, *content, mode))
                    .or_default()
                    .push(ns);
                drain();
            }
        }
    }

    fn phase<K: Kernel>(&mut self, phase: &'static str, rounds: usize) -> Result<()> {
        let cfg = FingerprintConfig::default();
        let me = [std::process::id()];
        for round in 0..rounds {
            eprintln!("{phase}: round {} of {rounds}", round + 1);
            for _ in 0..BATCHES {
                self.sweep(phase, Mode::Untraced, || {});
            }
            let mut k = K::start(&cfg, None, ScanMode::Scan)?;
            for _ in 0..BATCHES {
                k.remove_targets(&me)?;
                self.sweep(phase, Mode::NotTarget, || {});
                k.add_targets(&me)?;
                self.sweep(phase, Mode::Scan, || {
                    k.drain(&mut |_| {});
                });
            }
            drop(k);
            for (scan, mode) in [
                (ScanMode::CopyOnly, Mode::Floor),
                (ScanMode::MarkOnly, Mode::Mark),
            ] {
                let mut k = K::start(&cfg, None, scan)?;
                k.add_targets(&me)?;
                for _ in 0..BATCHES {
                    self.sweep(phase, mode, || {
                        k.drain(&mut |_| {});
                    });
                }
            }
        }
        Ok(())
    }
}

/// Median and spread (min, max) of a cell's batch means.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// The phases with a kernel program of their own.
const PHASES: [&str; 2] = ["phase-1-poc", "phase-2-straddle"];

pub fn run(rounds: usize, program_time: bool, only: &[String]) -> Result<()> {
    if let Some(unknown) = only.iter().find(|p| !PHASES.contains(&p.as_str())) {
        anyhow::bail!(
            "no phase {unknown} to measure (phases: {})",
            PHASES.join(", ")
        );
    }
    let phases: Vec<&str> = PHASES
        .into_iter()
        .filter(|p| only.is_empty() || only.iter().any(|o| o == p))
        .collect();
    let _stats = program_time.then(BpfStats::enable).transpose()?;
    let mut bench = Bench {
        program_time,
        pipe: Pipe::new()?,
        buf: vec![0; *SIZES.iter().max().unwrap()],
        contents: Content::ALL
            .iter()
            .map(|&c| Ok((c, c.bytes()?)))
            .collect::<Result<_>>()?,
        cells: Cells::new(),
    };
    if phases.contains(&PHASES[0]) {
        bench.phase::<phase_1_poc::tracer::Tracer>(PHASES[0], rounds)?;
    }
    if phases.contains(&PHASES[1]) {
        bench.phase::<phase_2_straddle::tracer::Tracer>(PHASES[1], rounds)?;
    }

    println!(
        "{} per write+read pair through a pipe, median of {} batch means (min–max)\n",
        if program_time {
            "ns inside the eBPF programs"
        } else {
            "ns"
        },
        rounds * BATCHES
    );
    println!("| phase | pair | content | untraced | not a target | floor (copy) | mark (pass 1) | scan | not a target: ns per syscall | scan ÷ floor | pass 1 over copy, ns/B | scan over copy, ns/B |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for phase in phases {
        // Phase 1 copies and scans the write side only.
        let sides = if phase == PHASES[0] { 1.0 } else { 2.0 };
        for size in SIZES {
            for content in Content::ALL {
                let cell = |m| stats(&bench.cells[&(phase, size, content, m)]);
                let fmt = |(med, lo, hi): (f64, f64, f64)| format!("{med:.0} ({lo:.0}–{hi:.0})");
                let (u, nt, floor, mark, scan) = (
                    cell(Mode::Untraced),
                    cell(Mode::NotTarget),
                    cell(Mode::Floor),
                    cell(Mode::Mark),
                    cell(Mode::Scan),
                );
                let per_byte = |ns: f64| (ns - floor.0) / (sides * size as f64);
                println!(
                    "| {phase} | {} KiB | {content:?} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.3} | {:.3} |",
                    size / 1024,
                    fmt(u),
                    fmt(nt),
                    fmt(floor),
                    fmt(mark),
                    fmt(scan),
                    (nt.0 - u.0) / 2.0,
                    scan.0 / floor.0,
                    per_byte(mark.0),
                    per_byte(scan.0),
                );
            }
        }
    }
    Ok(())
}
