//! Scale: N concurrent 8 kHz calls in real time through a 3-hop chain of real
//! processes (`harness::scenario::scale`), traced by phase 2 and scored against the ground
//! truth.
//!
//! This process is the agent: `trace_scenario` drains the ring buffer and matches in a thread
//! of it, while the pipeline's components are child processes. A monitor thread samples every
//! thread of this process and every child from /proc while the components run: the agent's
//! CPU is that of the threads the tracing started (the drainer), over the window in which
//! components were alive; its peak RSS is VmHWM read at the end of that window, before the
//! scorer loads the ground truth. The kernel's counters come from the tracer's health line:
//! moments emitted into the ring buffer, moments dropped because it was full; the agent's
//! `events` are the moments it drained.

use agent::counters::in_health;
use agent::schema::Dir;
use anyhow::{bail, Result};
use harness::scenario;
use shared::FingerprintConfig;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAMPLE_EVERY: Duration = Duration::from_millis(50);

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// (ppid, utime + stime in ticks) of a /proc stat file; the fields after the comm.
fn stat(path: &str) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // Field 3 of stat is f[0] (state); ppid is field 4, utime 14, stime 15.
    Some((
        f[1].parse().ok()?,
        f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?,
    ))
}

/// A field of this process's /proc status, in KiB (VmRSS:, VmHWM:).
pub(crate) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn tids() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What the monitor saw.
#[derive(Default)]
struct Seen {
    /// Agent threads (started after the monitor): ticks at the first and last sample while
    /// components ran.
    agent: HashMap<u32, (u64, u64)>,
    /// Children by pid: comm, ticks at the first and last sample, when first and last seen.
    children: HashMap<u32, (String, u64, u64, Instant, Instant)>,
    /// First and last sample with a component alive.
    window: Option<(Instant, Instant)>,
    /// VmHWM at the last sample with a component alive.
    hwm_kib: u64,
    /// Highest VmRSS sampled while components ran.
    rss_max_kib: u64,
}

fn monitor(before: HashSet<u32>, stop: Arc<AtomicBool>) -> Seen {
    let me = std::process::id();
    let mut seen = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut alive = 0;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some((ppid, ticks)) = stat(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            if ppid != me {
                continue;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if !comm.starts_with("hx-") {
                continue;
            }
            alive += 1;
            seen.children
                .entry(pid)
                .and_modify(|c| {
                    c.2 = ticks;
                    c.4 = now;
                })
                .or_insert((comm.trim().to_string(), ticks, ticks, now, now));
        }
        if alive > 0 {
            seen.window = Some((seen.window.map_or(now, |w| w.0), now));
            for tid in tids().into_iter().filter(|t| !before.contains(t)) {
                if let Some((_, ticks)) = stat(&format!("/proc/self/task/{tid}/stat")) {
                    seen.agent
                        .entry(tid)
                        .and_modify(|a| a.1 = ticks)
                        .or_insert((ticks, ticks));
                }
            }
            seen.hwm_kib = status_kib("VmHWM:");
            seen.rss_max_kib = seen.rss_max_kib.max(status_kib("VmRSS:"));
        }
        std::thread::sleep(SAMPLE_EVERY);
    }
    seen
}

fn cpu_self_s() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn run(calls: u32, seconds: f64, untraced: bool) -> Result<()> {
    if calls == 0 || seconds <= 0.0 {
        bail!("--calls and --seconds must be positive");
    }
    let sc = scenario::scale(calls, seconds);
    let exe = std::env::current_exe()?;
    let cfg = FingerprintConfig::default();
    let stop = Arc::new(AtomicBool::new(false));
    let before: HashSet<u32> = tids().into_iter().collect();
    let mon = {
        let stop = stop.clone();
        std::thread::spawn(move || monitor(before, stop))
    };
    // The monitor's own thread is not the agent's.
    std::thread::sleep(Duration::from_millis(20));
    let mon_tids: HashSet<u32> = tids().into_iter().collect();
    let rss0_kib = status_kib("VmRSS:");
    let (cpu0, t0) = (cpu_self_s(), Instant::now());
    let traced = if untraced {
        let dir = harness::run::workdir("scale-untraced")?;
        let gt = harness::run::run(&sc, &exe, &dir, |_| Ok(()))?;
        let t = Instant::now();
        let idx = harness::score::CallTruthIndex::build(&gt, cfg);
        std::fs::remove_dir_all(&dir).ok();
        let idx = idx?;
        let records = harness::oracle::records(&gt, &idx, phase_2_straddle::demo::OBSERVES);
        let score = harness::score::score_indexed(
            &gt,
            &idx,
            &records,
            phase_2_straddle::demo::OBSERVES,
            cfg,
            "oracle",
        );
        eprintln!(
            "oracle: {} records indexed, built and scored in {:.1} s",
            records.len(),
            t.elapsed().as_secs_f64()
        );
        (gt, records.len(), score, String::new())
    } else {
        let run = phase_2_straddle::demo::trace_scenario_phase2(&sc, &exe, &cfg)?;
        // The agent keeps every hop record for the scorer (a test agent's mode): their share
        // of its RSS, the Vec plus each sighting's comm.
        let kept = run.records.capacity() * std::mem::size_of::<agent::schema::HopRecord>()
            + run
                .records
                .iter()
                .map(|r| r.from.comm.capacity() + r.to.comm.capacity())
                .sum::<usize>();
        eprintln!(
            "hop records kept by the agent: {} in {:.1} MiB",
            run.records.len(),
            kept as f64 / (1 << 20) as f64
        );
        (run.gt, run.records.len(), run.score, run.health)
    };
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_self_s() - cpu0);
    stop.store(true, Ordering::Relaxed);
    let seen = mon.join().expect("monitor panicked");
    let (gt, records, score, health) = traced;

    let hz = clock_ticks();
    let window_s = seen
        .window
        .map_or(0.0, |(a, b)| (b - a).as_secs_f64())
        .max(1e-9);
    let agent_ticks: u64 = seen
        .agent
        .iter()
        .filter(|(t, _)| !mon_tids.contains(t))
        .map(|(_, (a, b))| b - a)
        .sum();
    let agent_cpu = agent_ticks as f64 / hz / window_s * 100.0;
    // The source's pace: its first to last write, against the audio's length.
    let src = gt.component("src");
    let span = |dir: Dir, name: &str| -> Option<f64> {
        let ios: Vec<u64> = gt
            .component(name)?
            .ios
            .iter()
            .filter(|io| io.dir == dir)
            .map(|io| io.t_ns)
            .collect();
        Some((ios.iter().max()? - ios.iter().min()?) as f64 / 1e9)
    };
    let first_write = src.and_then(|c| c.ios.iter().map(|io| io.t_ns).min());
    let last_read = gt
        .component("sink")
        .and_then(|c| c.ios.iter().map(|io| io.t_ns).max());

    let (emitted, drops, events) = (
        in_health(&health, "moments"),
        in_health(&health, "drops"),
        in_health(&health, "events"),
    );
    let show = |v: Option<u64>| v.map_or("–".to_string(), |v| v.to_string());
    let mut per_comp: BTreeMap<String, f64> = BTreeMap::new();
    for (comm, a, b, first, last) in seen.children.values() {
        let alive = (*last - *first).as_secs_f64().max(1e-9);
        *per_comp.entry(comm.clone()).or_default() += (b - a) as f64 / hz / alive * 100.0;
    }

    println!(
        "## scale: {calls} calls × {seconds} s, 3 hops, {} TCP connections per hop{}",
        sc.topology.links.len() / 3,
        if untraced {
            " (untraced)"
        } else {
            " (phase 2)"
        }
    );
    println!();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| calls | {calls} |");
    println!("| audio seconds | {seconds} |");
    println!(
        "| source: first to last write | {:.2} s |",
        span(Dir::Write, "src").unwrap_or(0.0)
    );
    if let (Some(a), Some(b)) = (first_write, last_read) {
        println!(
            "| source's first write to sink's last read | {:.2} s |",
            (b - a) as f64 / 1e9
        );
    }
    println!("| components alive (sampled) | {window_s:.2} s |");
    println!("| moments emitted by the kernel | {} |", show(emitted));
    println!("| events received by the agent | {} |", show(events));
    println!("| moments dropped (ring buffer full) | {} |", show(drops));
    for key in [
        "truncated",
        "candidate_overflow",
        "read_errors",
        "iov_truncated",
        "unscanned_nested",
        "recursion_misses",
    ] {
        if let Some(v) = in_health(&health, key) {
            println!("| kernel {key} | {v} |");
        }
    }
    println!("| agent CPU (its threads, while components ran) | {agent_cpu:.1} % of one core |");
    println!(
        "| agent peak RSS (VmHWM at the end of the run, hop records kept) | {:.1} MiB |",
        seen.hwm_kib as f64 / 1024.0
    );
    println!(
        "| this process's RSS before the run | {:.1} MiB |",
        rss0_kib as f64 / 1024.0
    );
    println!(
        "| this process over the whole run (audio, run, scoring) | {wall:.1} s wall, {cpu:.1} s CPU |"
    );
    for (comm, pct) in &per_comp {
        println!("| {comm} CPU | {pct:.1} % of one core |");
    }
    println!("| hop records | {records} |");
    // A hop with nothing measurable (a call silent all along: the corpus has silent prompts)
    // scores coverage 1 with no moment; it cannot be found.
    let findable = score
        .hops
        .iter()
        .filter(|h| h.matched > 0 || h.coverage < 1.0)
        .count();
    println!(
        "| hops found / exist (with a measurable second) | {} / {} ({findable}) |",
        score.hops_found, score.hops_exist
    );
    println!(
        "| coverage min / mean | {:.1} % / {:.1} % |",
        score.coverage_min * 100.0,
        score.coverage_mean * 100.0
    );
    println!(
        "| error p50 / p99 / max, truth not preempted | {:.1} / {:.1} / {:.1} µs |",
        score.error_p50_ns as f64 / 1e3,
        score.error_p99_ns as f64 / 1e3,
        score.error_max_ns as f64 / 1e3
    );
    println!(
        "| error p99 / max over all truth (set aside) | {:.1} / {:.1} µs ({}) |",
        score.error_p99_all_ns as f64 / 1e3,
        score.error_max_all_ns as f64 / 1e3,
        score.preempted_truth
    );
    println!(
        "| records: correct / false / duplicate / framing | {} / {} / {} / {} |",
        score.correct, score.false_matches, score.duplicates, score.framing
    );
    if !health.is_empty() {
        println!();
        println!("health: {health}");
    }
    for e in &score.false_examples {
        println!("false: {e}");
    }
    Ok(())
}
