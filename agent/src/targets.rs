//! Which processes are traced: the kernel side's `targets` bitmap of tgids
//! (shared/bpf/targets.bpf.h), filled with given pids and with the processes whose command name
//! starts with a prefix.

use anyhow::{Context, Result};
use aya::maps::Array;
use aya::Ebpf;
use procfs::process::{all_processes, Process};

/// Bytes of a command name in the kernel, its NUL included (TASK_COMM_LEN).
pub const COMM_LEN: usize = 16;

/// Adds tgids to the shared `targets` bitmap (shared/bpf/targets.bpf.h).
pub fn add_targets(ebpf: &mut Ebpf, pids: &[u32]) -> Result<()> {
    set_targets(ebpf, pids, true)
}

/// Takes tgids out of the `targets` bitmap.
pub fn remove_targets(ebpf: &mut Ebpf, pids: &[u32]) -> Result<()> {
    set_targets(ebpf, pids, false)
}

fn set_targets(ebpf: &mut Ebpf, pids: &[u32], on: bool) -> Result<()> {
    let mut bits: Array<_, u64> =
        Array::try_from(ebpf.map_mut("targets").context("map targets missing")?)?;
    for &pid in pids {
        let word = pid / 64;
        let old = bits
            .get(&word, 0)
            .with_context(|| format!("pid {pid} is beyond the kernel's pid limit"))?;
        let new = if on {
            old | 1 << (pid % 64)
        } else {
            old & !(1 << (pid % 64))
        };
        bits.set(word, new, 0)
            .with_context(|| format!("updating target {pid}"))?;
    }
    Ok(())
}

pub fn process_exists(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| Process::new(pid).is_ok())
}

/// Processes whose command name starts with `prefix`; those that exit during the scan are left
/// out.
pub fn pids_with_comm_prefix(prefix: &str) -> Result<Vec<u32>> {
    Ok(all_processes()
        .context("reading /proc")?
        .filter_map(|p| p.ok())
        .filter(|p| p.stat().is_ok_and(|s| s.comm.starts_with(prefix)))
        .filter_map(|p| u32::try_from(p.pid).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_its_command_name_until_it_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(process_exists(pid));
        assert!(pids_with_comm_prefix("slee").unwrap().contains(&pid));
        assert!(!pids_with_comm_prefix("sleeq").unwrap().contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_exists(pid));
        assert!(!pids_with_comm_prefix("slee").unwrap().contains(&pid));
    }
}
