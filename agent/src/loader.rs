//! Loading a phase's eBPF object built on shared/bpf: the machine's fitness first (root, kernel
//! features probed, not versions), the cluster-wide settings as read-only globals, a verifier
//! rejection as one line, and what the kernel says of the loaded programs afterwards.

use crate::counters::Counters;
use crate::targets::COMM_LEN;
use anyhow::{bail, Context, Result};
use aya::maps::{MapType, PerCpuArray};
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};
use shared::FingerprintConfig;
use std::path::Path;

/// Lines of the verifier's log worth showing: its conclusion, not the whole walk.
const VERIFIER_TAIL: usize = 12;

/// The kernels the tracer is tested on; every phase's programs load on each of them.
pub const SUPPORTED_KERNELS: &str = "Linux 6.1 and newer";

/// Fails with one clear line when this machine cannot run the tracer.
pub fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root: loading eBPF programs needs CAP_BPF and CAP_PERFMON");
    }
    kernel_features()?;
    if !Path::new("/sys/kernel/tracing/events/syscalls").exists()
        && !Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        bail!("tracefs is not mounted (no events/syscalls): mount -t tracefs nodev /sys/kernel/tracing");
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux): build it with CONFIG_DEBUG_INFO_BTF=y");
    }
    Ok(())
}

/// The kernel features the programs need, each with the first Linux release that had it, in
/// the order they are checked.
const KERNEL_FEATURES: [(&str, &str); 4] = [
    ("BTF for BPF programs", "5.1"),
    ("global BPF functions, which every scan stage is", "5.6"),
    ("BPF global data (the cluster-wide settings)", "5.2"),
    ("the BPF ring buffer", "5.8"),
];

/// Probes KERNEL_FEATURES (distributions backport features, so a version number proves
/// nothing) and names the first one missing.
fn kernel_features() -> Result<()> {
    let features = aya::features();
    let present = [
        features.btf().is_some(),
        features.btf().is_some_and(|btf| btf.btf_func_global()),
        features.bpf_global_data(),
        aya::sys::is_map_supported(MapType::RingBuf).unwrap_or(false),
    ];
    missing_feature(present).map_or(Ok(()), Err)
}

/// One line for the first feature of KERNEL_FEATURES that `present` lacks.
fn missing_feature(present: [bool; KERNEL_FEATURES.len()]) -> Option<anyhow::Error> {
    let (what, since) = KERNEL_FEATURES
        .iter()
        .zip(present)
        .find_map(|(feature, here)| (!here).then_some(feature))?;
    Some(anyhow::anyhow!(
        "this kernel lacks {what} (Linux {since}); the tracer supports {SUPPORTED_KERNELS}"
    ))
}

/// Each loaded program of `ebpf` with the instructions the kernel's verifier walked to accept
/// it (`None` before Linux 5.16, which does not say).
pub fn verified_instructions(ebpf: &Ebpf) -> Vec<(String, Option<u32>)> {
    let mut programs: Vec<_> = ebpf
        .programs()
        .filter_map(|(name, p)| {
            let info = p.info().ok()?;
            Some((name.to_string(), info.verified_instruction_count()))
        })
        .collect();
    programs.sort();
    programs
}

/// Runs of `ebpf`'s programs the kernel skipped because the same program was already running on
/// that CPU: on a preemptible kernel, one preempted mid-scan (docs/kernels.md). Each skip is a
/// call not seen. From each program's fdinfo (Linux 5.12+; 0 where it is missing).
pub fn recursion_misses(ebpf: &Ebpf) -> u64 {
    use std::os::fd::{AsFd, AsRawFd};
    ebpf.programs()
        .filter_map(|(_, p)| p.fd().ok())
        .filter_map(|fd| {
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            std::fs::read_to_string(path).ok()
        })
        .map(|info| fdinfo_field(&info, "recursion_misses"))
        .sum()
}

/// A numeric `name:` line of an fdinfo file, or 0.
pub fn fdinfo_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A verifier rejection as one line, then the end of the verifier's log.
pub fn verifier_error(program: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL)..].join("\n  ");
            anyhow::anyhow!(
                "the kernel's verifier rejected {program} ({io_error}); end of its log:\n  {tail}"
            )
        }
        other => anyhow::Error::new(other).context(format!("loading {program}")),
    }
}

/// What the kernel side does with a target's bytes (`fp_stage` in shared/bpf/fingerprint.bpf.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u32)]
pub enum ScanMode {
    /// Scan them for moments: the tracer.
    #[default]
    Scan = 0,
    /// Copy them from user memory and stop: the floor benchmarks measure the scan against.
    CopyOnly = 1,
    /// Copy them and run the SWAR marking pass only: what every byte costs, whatever it holds.
    MarkOnly = 2,
}

/// Loads an object built on shared/bpf with the cluster-wide fingerprint settings, the
/// command-name target prefix and the scan mode as `.rodata` globals (after the preflight
/// checks); `cpu_indexed_maps` get one entry per possible CPU.
pub fn load_object(
    object: &[u8],
    cfg: &FingerprintConfig,
    comm_prefix: Option<&str>,
    mode: ScanMode,
    cpu_indexed_maps: &[&str],
) -> Result<Ebpf> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    preflight()?;
    let mut comm = [0u8; COMM_LEN];
    let prefix = comm_prefix.unwrap_or("").as_bytes();
    if prefix.len() >= COMM_LEN {
        bail!(
            "--comm {:?} is longer than a command name ({} bytes)",
            comm_prefix.unwrap(),
            COMM_LEN - 1
        );
    }
    comm[..prefix.len()].copy_from_slice(prefix);
    let (window, keep, quiet, step) = (
        cfg.window as u32,
        cfg.keep_per_256 as u32,
        cfg.quiet_threshold as u32,
        cfg.max_step as u32,
    );
    let comm_len = prefix.len() as u32;
    let cpus = aya::util::nr_cpus()
        .map_err(|(what, e)| anyhow::anyhow!("counting the possible CPUs ({what}): {e}"))?
        as u32;
    let mut loader = EbpfLoader::new();
    for map in cpu_indexed_maps {
        loader.map_max_entries(map, cpus);
    }
    loader
        .override_global("fp_window", &window, true)
        .override_global("fp_keep_per_256", &keep, true)
        .override_global("fp_quiet_threshold", &quiet, true)
        .override_global("fp_max_step", &step, true)
        .override_global("fp_stage", &(mode as u32), true)
        .override_global("target_comm", &comm[..], true)
        .override_global("target_comm_len", &comm_len, true)
        .load(object)
        .context("loading the eBPF object")
}

/// Loads the tracepoint program `program` and attaches it to syscalls/`tracepoint`.
pub fn attach_syscall(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<()> {
    let p: &mut TracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("{program} missing"))?
        .try_into()?;
    p.load().map_err(|e| verifier_error(program, e))?;
    p.attach("syscalls", tracepoint)
        .with_context(|| format!("attaching to syscalls/{tracepoint}"))?;
    Ok(())
}

/// Sums a per-CPU counter array over CPUs.
pub fn read_counters(ebpf: &Ebpf, map: &str, names: &'static [&'static str]) -> Result<Counters> {
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(
        ebpf.map(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    let values = (0..names.len())
        .map(|i| Ok(array.get(&(i as u32), 0)?.iter().sum()))
        .collect::<Result<_>>()?;
    Ok(Counters { names, values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya_obj::VerifierLog;

    #[test]
    fn a_missing_kernel_feature_is_one_line_with_its_release() {
        assert!(missing_feature([true; 4]).is_none());
        let e = missing_feature([true, true, true, false])
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "this kernel lacks the BPF ring buffer (Linux 5.8); the tracer supports Linux 6.1 and newer"
        );
        // The first missing one is named: without BTF, nothing after it matters.
        let e = missing_feature([false, false, true, false])
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("this kernel lacks BTF for BPF programs (Linux 5.1)"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
    }

    #[test]
    fn fdinfo_fields_are_read_by_name() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\n\
                    recursion_misses:\t17\nverified_insns:\t24765\n";
        assert_eq!(fdinfo_field(info, "recursion_misses"), 17);
        assert_eq!(fdinfo_field(info, "verified_insns"), 24765);
        assert_eq!(fdinfo_field(info, "run_time_ns"), 0);
        assert_eq!(fdinfo_field("prog_type:\t26\n", "recursion_misses"), 0);
    }

    #[test]
    fn a_verifier_rejection_says_so_with_the_end_of_the_log() {
        let log: String = (1..=40).map(|i| format!("{i}: (85) call bpf_probe_read_user#112\n")).collect::<String>()
            + "R2 min value is negative, either use unsigned or 'var &= const'\nprocessed 18503 insns\n";
        let e = verifier_error(
            "phase1_write",
            ProgramError::LoadError {
                io_error: std::io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: VerifierLog::new(log),
            },
        );
        let text = e.to_string();
        let first = text.lines().next().unwrap();
        assert!(
            first.starts_with("the kernel's verifier rejected phase1_write (Permission denied"),
            "{first}"
        );
        assert!(text.contains("R2 min value is negative"), "{text}");
        assert_eq!(text.lines().count(), 1 + VERIFIER_TAIL, "{text}");
    }
}
