//! OpenSSL uprobes: finds the libssl each target process has mapped and attaches phase 2's TLS
//! programs to it for that process only, so that processes that are not targets never take a
//! uprobe trap. Targets that map libssl later (dlopen) or start later (--comm) are picked up by
//! `refresh`.

use agent::targets::process_exists;
use anyhow::{Context, Result};
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;
use procfs::process::{MMapPath, Process};
use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

/// The OpenSSL functions probed and the entry program of each; `tls_leave` takes every return.
pub const FUNCTIONS: [(&str, &str); 4] = [
    ("SSL_write", "tls_write_enter"),
    ("SSL_write_ex", "tls_write_ex_enter"),
    ("SSL_read", "tls_read_enter"),
    ("SSL_read_ex", "tls_read_ex_enter"),
];
const RETURN_PROGRAM: &str = "tls_leave";

/// Which target processes have the probes, and which are still waiting for a libssl.
#[derive(Default)]
pub struct TlsProbes {
    enabled: bool,
    attached: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Processes probed so far, those that exited since included.
    probed: usize,
    /// Targets without libssl mapped (yet): looked at again by `refresh`.
    waiting: HashSet<u32>,
    /// Targets whose libssl could not be probed (uprobes need CAP_SYS_ADMIN since Linux 6.16):
    /// their TLS links are seen as ciphertext, the rest of their traffic as usual.
    failed: HashSet<u32>,
    /// Why the first of them failed, printed once.
    pub first_failure: Option<String>,
}

/// The OpenSSL library `pid` has mapped, as a path this agent can open (through the process's
/// root, so that a container's own libssl is the one probed).
pub fn libssl_of(pid: u32) -> Option<PathBuf> {
    let maps = Process::new(i32::try_from(pid).ok()?).ok()?.maps().ok()?;
    let path = maps.into_iter().find_map(|m| match m.pathname {
        MMapPath::Path(path)
            if path
                .file_name()
                .is_some_and(|f| f.as_encoded_bytes().starts_with(b"libssl.so")) =>
        {
            Some(path)
        }
        _ => None,
    })?;
    Some(Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").ok()?))
}

impl TlsProbes {
    /// Loads the TLS programs; with `enabled` false nothing is loaded or attached (the TLS
    /// links are then seen as ciphertext, as by a tracer without uprobes).
    pub fn load(ebpf: &mut Ebpf, enabled: bool) -> Result<Self> {
        if enabled {
            load_programs(ebpf, &FUNCTIONS, RETURN_PROGRAM)?;
        }
        Ok(Self {
            enabled,
            ..Default::default()
        })
    }

    /// Probes the libssl of each new target; those without one wait for `refresh`.
    pub fn add(&mut self, ebpf: &mut Ebpf, pids: &[u32]) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        for &pid in pids {
            if self.attached.contains_key(&pid) || self.failed.contains(&pid) {
                continue;
            }
            match libssl_of(pid) {
                Some(lib) => {
                    self.waiting.remove(&pid);
                    match attach(ebpf, pid, &lib) {
                        Ok(links) => {
                            self.attached.insert(pid, links);
                            self.probed += 1;
                        }
                        Err(e) => {
                            if self.first_failure.is_none() {
                                let why = format!("probing {} of pid {pid}: {e:#}", lib.display());
                                tracing::warn!("TLS links of some targets are not seen: {why}");
                                self.first_failure = Some(why);
                            }
                            self.failed.insert(pid);
                        }
                    }
                }
                None => {
                    self.waiting.insert(pid);
                }
            }
        }
        Ok(())
    }

    /// Looks again at targets waiting for a libssl, and detaches from processes that exited.
    pub fn refresh(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        self.waiting.retain(|&pid| process_exists(pid));
        self.failed.retain(|&pid| process_exists(pid));
        let waiting: Vec<u32> = self.waiting.iter().copied().collect();
        self.add(ebpf, &waiting)?;
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|&p| !process_exists(p))
            .collect();
        let mut links = Vec::new();
        for pid in gone {
            for (name, link) in self.attached.remove(&pid).unwrap_or_default() {
                links.extend(program(ebpf, name).and_then(|p| Ok(p.take_link(link)?)));
            }
        }
        // The processes are gone, their links are left. Closing a uprobe's perf event waits
        // for an RCU tasks-trace grace period (~0.2 s each here): not on the tracing loop.
        if !links.is_empty() {
            std::thread::spawn(move || drop(links));
        }
        Ok(())
    }

    /// Target processes whose libssl was probed, those that exited since included: a count
    /// read after a pipeline ends must not depend on whether `refresh` saw its processes go.
    pub fn probed(&self) -> usize {
        self.probed
    }

    /// Target processes whose libssl could not be probed.
    pub fn failures(&self) -> usize {
        self.failed.len()
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

/// Loads the entry program of each of `functions` (function, program) and `ret`'s.
pub(crate) fn load_programs(ebpf: &mut Ebpf, functions: &[(&str, &str)], ret: &str) -> Result<()> {
    for name in functions.iter().map(|f| f.1).chain([ret]) {
        program(ebpf, name)?
            .load()
            .map_err(|e| agent::loader::verifier_error(name, e))?;
    }
    Ok(())
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()?)
}

fn attach(ebpf: &mut Ebpf, pid: u32, lib: &PathBuf) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0")?);
    let mut links = Vec::new();
    for (function, entry) in FUNCTIONS {
        for name in [entry, RETURN_PROGRAM] {
            match program(ebpf, name).and_then(|p| Ok(p.attach(function, lib, scope)?)) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    // All of a process's probes or none: a lone return probe would see calls
                    // whose entry it never saw.
                    for (name, link) in links {
                        let _ = program(ebpf, name).and_then(|p| Ok(p.detach(link)?));
                    }
                    return Err(e.context(format!("attaching {name} to {function}")));
                }
            }
        }
    }
    Ok(links)
}
