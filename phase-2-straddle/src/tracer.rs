//! Loads and attaches phase 2's eBPF programs (the sys_enter/sys_exit raw tracepoints, which
//! dispatch every read and write syscall and close/dup2/dup3, and the read and write functions
//! of OpenSSL and Go's crypto/tls in target processes) and drains their events.

use crate::event::{layout::PHASE2_TLS_OPAQUE, Phase2Call, Phase2Event, PHASE2_COUNTERS};
use crate::go_tls::GoTlsProbes;
use crate::links::{Link, Links, Observed, Seen};
use crate::tls::TlsProbes;
use agent::counters::{Counters, SCAN_COUNTERS};
use agent::loader::{
    load_object, read_counters, recursion_misses, verified_instructions, verifier_error, ScanMode,
};
use agent::targets::{add_targets, pids_with_comm_prefix, remove_targets};
use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use aya::programs::{BtfTracePoint, RawTracePoint};
use aya::{Btf, Ebpf, RawTracePointRunOptions, TestRun};
use shared::FingerprintConfig;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/phase2.bpf.o"));
/// The BTF raw tracepoints that dispatch every syscall by number, and their programs.
const RAW_TRACEPOINTS: [&str; 2] = ["sys_enter", "sys_exit"];
/// The program that sends a CPU's batch of call records now (run, never attached).
const FLUSH: &str = "flush_batch";

pub struct Tracer {
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    /// Where `flush_batch` runs before each drain.
    cpus: Vec<u32>,
    /// Runs of `flush_batch` the kernel refused.
    flush_failures: u64,
    tls: TlsProbes,
    go_tls: GoTlsProbes,
    comm_prefix: Option<String>,
    /// Each event's link, resolved as it is drained (while its fd is most likely still open).
    links: Links,
    opaque: OpaqueSockets,
}

impl Tracer {
    /// Starts scanning, with the OpenSSL and Go TLS probes.
    pub fn start(cfg: &FingerprintConfig, comm_prefix: Option<&str>) -> Result<Self> {
        Self::start_with(cfg, comm_prefix, ScanMode::Scan, true)
    }

    /// With `tls` false (no OpenSSL or Go probes), TLS links are seen only as the ciphertext
    /// their syscalls carry.
    pub fn start_with(
        cfg: &FingerprintConfig,
        comm_prefix: Option<&str>,
        mode: ScanMode,
        tls: bool,
    ) -> Result<Self> {
        let mut ebpf = load_object(OBJECT, cfg, comm_prefix, mode, &["batches"])?;
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        for name in RAW_TRACEPOINTS {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing"))?
                .try_into()?;
            p.load(name, &btf).map_err(|e| verifier_error(name, e))?;
            p.attach()
                .with_context(|| format!("attaching to the raw tracepoint {name}"))?;
        }
        let flush: &mut RawTracePoint = ebpf
            .program_mut(FLUSH)
            .with_context(|| format!("{FLUSH} missing"))?
            .try_into()?;
        flush.load().map_err(|e| verifier_error(FLUSH, e))?;
        let cpus = aya::util::online_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("listing the online CPUs ({what}): {e}"))?;
        let go_tls = GoTlsProbes::load(&mut ebpf, tls)?;
        let tls = TlsProbes::load(&mut ebpf, tls)?;
        let events = RingBuf::try_from(ebpf.take_map("events").context("map events missing")?)?;
        let mut tracer = Self {
            ebpf,
            events,
            cpus,
            flush_failures: 0,
            tls,
            go_tls,
            comm_prefix: comm_prefix.map(str::to_string),
            links: Links::default(),
            opaque: OpaqueSockets::default(),
        };
        tracer.refresh()?;
        Ok(tracer)
    }

    pub fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        add_targets(&mut self.ebpf, pids)?;
        self.go_tls.add(&mut self.ebpf, pids)?;
        self.tls.add(&mut self.ebpf, pids)
    }

    /// Probes the TLS library of targets that appeared or mapped it since the last look.
    pub fn refresh(&mut self) -> Result<()> {
        if let Some(prefix) = &self.comm_prefix {
            let pids = pids_with_comm_prefix(prefix)?;
            self.go_tls.add(&mut self.ebpf, &pids)?;
            self.tls.add(&mut self.ebpf, &pids)?;
        }
        self.go_tls.refresh(&mut self.ebpf)?;
        self.tls.refresh(&mut self.ebpf)
    }

    /// Sends every CPU's batch of call records to the ring buffer, then hands every moment
    /// waiting there to `f`; returns how many there were.
    pub fn drain(&mut self, mut f: impl FnMut(Phase2Event)) -> usize {
        self.flush_batches();
        let mut n = 0;
        while let Some(item) = self.events.next() {
            for e in Phase2Call::parse(&item) {
                f(e);
                n += 1;
            }
        }
        n
    }

    /// Runs `flush_batch` on each CPU. A CPU in the middle of a call keeps its batch: the run is
    /// tried again a few times (a call takes microseconds, or longer if it was preempted); a run
    /// still refused, or that failed, is counted, and leaves the batch to the next drain or to the
    /// CPU's next call once the batch is 50 ms old.
    fn flush_batches(&mut self) {
        /// Tries of a CPU whose batch is busy, 200 µs apart: a call preempted mid-scan holds it
        /// for a time slice.
        const TRIES: u32 = 100;
        let Some(flush) = self
            .ebpf
            .program(FLUSH)
            .and_then(|p| <&RawTracePoint>::try_from(p).ok())
        else {
            return;
        };
        for &cpu in &self.cpus {
            let mut sent = false;
            for try_ in 0..TRIES {
                if try_ > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
                let run = flush.test_run(RawTracePointRunOptions {
                    cpu: Some(cpu),
                    ..RawTracePointRunOptions::new()
                });
                match run {
                    Ok(r) if r.return_value != 0 => continue, // busy: a call is building its record
                    Ok(_) => sent = true,
                    Err(_) => {} // the kernel refused the run itself: no retry changes that
                }
                break;
            }
            if !sent {
                self.flush_failures += 1;
            }
        }
    }

    /// Flow states alive now; evictions = created - closed - live.
    pub fn live_flows(&self) -> Result<usize> {
        // sizeof(struct flow_state) in bpf/phase2.bpf.c: only its keys are read here, and aya
        // refuses a map whose value size differs, so a change there fails every tracer test.
        const FLOW_STATE_SIZE: usize = 312;
        let flows: aya::maps::HashMap<_, [u8; 16], [u8; FLOW_STATE_SIZE]> =
            aya::maps::HashMap::try_from(self.ebpf.map("flows").context("map flows missing")?)?;
        Ok(flows.keys().filter(|k| k.is_ok()).count())
    }

    /// The scan's counters and the data path's.
    pub fn counters(&self) -> Result<(Counters, Counters)> {
        Ok((
            read_counters(&self.ebpf, "fp_counters", &SCAN_COUNTERS)?,
            read_counters(&self.ebpf, "phase2_counters", &PHASE2_COUNTERS)?,
        ))
    }

    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        verified_instructions(&self.ebpf)
    }

    /// Runs of the programs the kernel skipped (docs/kernels.md, preemptible kernels).
    pub fn recursion_misses(&self) -> u64 {
        recursion_misses(&self.ebpf)
    }

    /// Runs of `flush_batch` the kernel refused.
    pub fn flush_failures(&self) -> u64 {
        self.flush_failures
    }

    /// Target processes whose libssl was probed, and those whose libssl could not be; `None`
    /// with the TLS probes off.
    pub fn tls_probes(&self) -> Option<(usize, usize)> {
        self.tls
            .enabled()
            .then(|| (self.tls.probed(), self.tls.failures()))
    }

    /// Go processes probed, those with crypto/tls of a version not placed, and those whose
    /// probes could not be attached; `None` with the TLS probes off.
    pub fn go_tls_probes(&self) -> Option<(usize, usize, usize)> {
        self.go_tls.enabled().then(|| {
            (
                self.go_tls.probed(),
                self.go_tls.unplaced(),
                self.go_tls.failures(),
            )
        })
    }

    /// TCP links named by their own socket's tuple (`Links::untracked`).
    pub fn tcp_links_untracked(&self) -> u64 {
        self.links.untracked()
    }
}

/// Sockets whose plaintext no probe sees (marked `PHASE2_TLS_OPAQUE` in the map tls_sockets),
/// with their links: where an opaque stretch can run (`opaque_links`). Keyed by (pid, fd,
/// inode): a socket closed is kept a while even when its fd already names another.
#[derive(Default)]
struct OpaqueSockets {
    held: HashMap<(u32, i32, u64), OpaqueSocket>,
    looked: Option<Instant>,
}

struct OpaqueSocket {
    link: Link,
    last_listed: Instant,
}

/// How often the map is read.
const OPAQUE_LOOK_EVERY: Duration = Duration::from_millis(100);
/// How long a socket closed (or evicted from the map) still counts: its last moments are matched
/// up to a matching window later.
const OPAQUE_KEPT: Duration = Duration::from_secs(10);

impl OpaqueSockets {
    /// Every opaque socket's process and link, when they changed since the last look.
    fn look(&mut self, ebpf: &Ebpf, links: &mut Links) -> Option<Vec<(u32, Link)>> {
        use std::os::unix::fs::MetadataExt;
        if self.looked.is_some_and(|t| t.elapsed() < OPAQUE_LOOK_EVERY) {
            return None;
        }
        let now = Instant::now();
        self.looked = Some(now);
        let map: aya::maps::HashMap<_, u64, u8> =
            aya::maps::HashMap::try_from(ebpf.map("tls_sockets")?).ok()?;
        let before = self.held.len();
        let mut added = false;
        // Sockets a probe named since: their plaintext is seen.
        let mut named = HashSet::new();
        for (key, mark) in map.iter().filter_map(Result::ok) {
            let (pid, fd) = ((key >> 32) as u32, key as u32 as i32);
            if mark != PHASE2_TLS_OPAQUE {
                named.insert((pid, fd));
                continue;
            }
            let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            let socket = (pid, fd, meta.ino());
            if let Some(s) = self.held.get_mut(&socket) {
                s.last_listed = now;
            } else if let Some(link) = links.lookup(pid, fd) {
                let last_listed = now;
                self.held.insert(socket, OpaqueSocket { link, last_listed });
                added = true;
            }
        }
        self.held.retain(|&(pid, fd, _), s| {
            !named.contains(&(pid, fd)) && now - s.last_listed < OPAQUE_KEPT
        });
        (added || self.held.len() != before).then(|| {
            self.held
                .iter()
                .map(|(&(pid, ..), s)| (pid, s.link.clone()))
                .collect()
        })
    }
}

/// As the agent's pipeline drains it: each event with the link it was seen on.
impl agent::pipeline::Kernel for Tracer {
    type Event = Observed;

    fn start(cfg: &FingerprintConfig, comm_prefix: Option<&str>, mode: ScanMode) -> Result<Self> {
        Tracer::start_with(cfg, comm_prefix, mode, true)
    }

    fn remove_targets(&mut self, pids: &[u32]) -> Result<()> {
        remove_targets(&mut self.ebpf, pids)
    }

    /// The opaque sockets first, when they changed: the moments they carry close later.
    fn drain(&mut self, f: &mut dyn FnMut(Observed)) -> usize {
        let mut links = std::mem::take(&mut self.links);
        if let Some(held) = self.opaque.look(&self.ebpf, &mut links) {
            f(Observed::OpaqueSockets(held));
        }
        let n = Tracer::drain(self, |e| {
            let link = links.resolve(e.call.tgid, e.call.fd, e.call.flow_birth_ns);
            f(Observed::Moment(Seen { e, link }))
        });
        self.links = links;
        n
    }

    fn add_targets(&mut self, pids: &[u32]) -> Result<()> {
        Tracer::add_targets(self, pids)
    }

    fn refresh(&mut self) -> Result<()> {
        Tracer::refresh(self)
    }

    fn health(&self) -> Result<String> {
        let (scan, path) = self.counters()?;
        let live = self.live_flows()? as u64;
        let evicted = path
            .get("flows_created")
            .saturating_sub(path.get("flows_closed") + live);
        let tls = match self.tls_probes() {
            Some((probed, failures)) => format!("{probed} tls_probe_failures={failures}"),
            None => "off".into(),
        };
        let go_tls = match self.go_tls_probes() {
            Some((probed, unplaced, failures)) => {
                format!("{probed} go_tls_unplaced={unplaced} go_tls_probe_failures={failures}")
            }
            None => "off".into(),
        };
        Ok(format!(
            "{scan} {path} flows_live={live} flows_evicted={evicted} batch_flush_failures={} recursion_misses={} tls_probed_processes={tls} go_tls_probed_processes={go_tls} tcp_links_untracked={} opaque_sockets={}",
            self.flush_failures,
            self.recursion_misses(),
            self.tcp_links_untracked(),
            self.opaque.held.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, ObjectSymbol};

    /// The uprobe programs (bpf/uprobe_guard.bpf.h): none touches its stack, which from 6.13
    /// is per CPU, before its claim of the CPU, an atomic compare-and-exchange.
    #[test]
    fn every_uprobe_program_claims_its_cpu_before_touching_its_stack() {
        const CMPXCHG: i32 = 0xf1;
        let elf = object::File::parse(super::OBJECT).unwrap();
        let mut programs = 0;
        for section in elf.sections() {
            let name = section.name().unwrap();
            if name != "uprobe" && name != "uretprobe" {
                continue;
            }
            let code = section.data().unwrap();
            for symbol in elf.symbols() {
                if symbol.section_index() != Some(section.index())
                    || symbol.kind() != object::SymbolKind::Text
                {
                    continue;
                }
                programs += 1;
                let start = symbol.address() as usize;
                let insns = code[start..].chunks_exact(8);
                let mut claimed = false;
                for (i, insn) in insns.enumerate() {
                    let (opcode, regs) = (insn[0], insn[1]);
                    let imm = i32::from_le_bytes(insn[4..8].try_into().unwrap());
                    // BPF_STX | BPF_ATOMIC (| BPF_W or BPF_DW)
                    if (opcode == 0xc3 || opcode == 0xdb) && imm == CMPXCHG {
                        claimed = true;
                        break;
                    }
                    let (dst, src) = (regs & 0xf, regs >> 4);
                    assert!(
                        dst != 10 && src != 10,
                        "{}: instruction {i} uses the stack before the claim",
                        symbol.name().unwrap()
                    );
                }
                assert!(claimed, "{}: no claim", symbol.name().unwrap());
            }
        }
        // tls_{write,read}{,_ex}_enter, tls_leave, go_tls_{write,read}_enter, go_tls_leave.
        assert_eq!(programs, 8);
    }
}
