//! Phase 2's agent on one core: the records it decodes, links it resolves, admits through the
//! matching window and closes into hop records (timed by criterion: `cargo bench -p bench --bench agent`), and its
//! memory with a full second of 1000 calls open in the window (`bench agent`).
//!
//! The records are what the kernel would send for calls through a 3-hop chain of real
//! processes (`sleep` holders of real pipes, so links resolve as in production): source →
//! relay → relay → sink, every moment seen at six points, three moments per call record (a
//! 2 KiB call of speech), one call record per ring-buffer record (the decoder reads the kernel's
//! batches of several the same way).

use agent::pipeline::Matched;
use anyhow::Result;
use phase_2_straddle::event::{Phase2Call, Phase2Event, Phase2Moment, DIR_READ, DIR_WRITE};
use phase_2_straddle::links::{Links, Observed, Seen};
use phase_2_straddle::matcher::Matcher;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

/// Moments per call record.
pub const PER_CALL: usize = 3;
/// Sightings per moment: write and read at each of three links.
const POINTS: usize = 6;
/// Moments per non-silent second of a call: twice the default density (docs/fingerprint.md:
/// 12 per second of linear speech at keep 128), the rate at keep 256, as a margin.
const MOMENTS_PER_SECOND: usize = 24;
/// The matching window.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// A process holding pipe ends as its stdin and stdout, for as long as the bench runs.
fn holder(stdin: Option<OwnedFd>, stdout: Option<OwnedFd>) -> Result<Child> {
    let mut c = Command::new("sleep");
    c.arg("600");
    c.stdin(stdin.map_or(Stdio::null(), Stdio::from));
    c.stdout(stdout.map_or(Stdio::null(), Stdio::from));
    Ok(c.spawn()?)
}

pub struct Chain {
    holders: Vec<Child>,
    /// (tgid, fd, write) of the six points, in path order.
    points: [(u32, i32, bool); POINTS],
}

impl Chain {
    pub fn new() -> Result<Self> {
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3)
            .map(|_| {
                let (r, w) = std::io::pipe()?;
                Ok((r.into(), w.into()))
            })
            .collect::<Result<_>>()?;
        let mut pipes = pipes.into_iter();
        let (r0, w0) = pipes.next().unwrap();
        let (r1, w1) = pipes.next().unwrap();
        let (r2, w2) = pipes.next().unwrap();
        let (fd_in, fd_out) = (0, 1);
        let holders = vec![
            holder(None, Some(w0))?,
            holder(Some(r0), Some(w1))?,
            holder(Some(r1), Some(w2))?,
            holder(Some(r2), None)?,
        ];
        let pid = |i: usize| holders[i].id();
        let points = [
            (pid(0), fd_out, true),
            (pid(1), fd_in, false),
            (pid(1), fd_out, true),
            (pid(2), fd_in, false),
            (pid(2), fd_out, true),
            (pid(3), fd_in, false),
        ];
        Ok(Self { holders, points })
    }

    /// The ring-buffer records of `moments` moments of call `call` starting at `t0`, one
    /// record per point per `PER_CALL` moments, in the order a drain would deliver them.
    pub fn records(&self, call: u64, moments: usize, t0: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for first in (0..moments).step_by(PER_CALL) {
            let n = PER_CALL.min(moments - first);
            for (k, &(tgid, fd, write)) in self.points.iter().enumerate() {
                let header = Phase2Call {
                    t_ns: t0 + (first as u64) * 40_000_000 + k as u64 * 50_000,
                    flow_birth_ns: 1,
                    cgroup_id: 0,
                    tgid,
                    tid: tgid,
                    fd,
                    dir: if write { DIR_WRITE } else { DIR_READ },
                    n: n as u32,
                    tls: 0,
                    comm: *b"hx-bench\0\0\0\0\0\0\0\0",
                };
                let mut bytes = as_bytes(&header).to_vec();
                for m in first..first + n {
                    let moment = Phase2Moment {
                        signature: (call << 32 | m as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        end: 64 + m as u64 * 600,
                    };
                    bytes.extend_from_slice(as_bytes(&moment));
                }
                out.push(bytes);
            }
        }
        out
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for h in &mut self.holders {
            h.kill().ok();
            h.wait().ok();
        }
    }
}

fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain #[repr(C)] record without padding bytes read as uninitialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), std::mem::size_of::<T>()) }
}

/// What the agent keeps across drains: the links it resolved and the matching window.
pub struct AgentState {
    pub links: Links,
    pub matching: Matched<Matcher>,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            links: Links::default(),
            matching: Matched::new(WINDOW),
        }
    }
}

impl AgentState {
    /// One decoded event, its link resolved as the tracer's drain does, into the window.
    fn push(&mut self, e: Phase2Event) {
        let link = self
            .links
            .resolve(e.call.tgid, e.call.fd, e.call.flow_birth_ns);
        self.matching.push(Observed::Moment(Seen { e, link }));
    }
}

/// Decodes, links, admits and closes every record; returns the events handled and the hop
/// records.
pub fn run_agent(records: &[Vec<u8>], state: &mut AgentState) -> (usize, usize) {
    let mut events = 0;
    for r in records {
        for e in Phase2Call::parse(r) {
            state.push(e);
            events += 1;
        }
    }
    let matching = &mut state.matching;
    let mut hops = Vec::new();
    matching.close_due(None, &mut hops);
    (events, hops.len())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The agent's memory with one second of 1000 calls open in the window, after a pass of the
/// criterion benchmark's records has come and gone (links resolved, as in a running agent).
pub fn memory() -> Result<()> {
    let chain = Chain::new()?;
    let mut state = AgentState::default();
    let pass: Vec<Vec<u8>> = (0..20)
        .flat_map(|c| chain.records(c, 600, 1_000_000_000))
        .collect();
    let (_, hops) = run_agent(&pass, &mut state);
    drop(pass);
    let before = rss_kib();
    let second: Vec<Vec<u8>> = (0..1000)
        .flat_map(|c| chain.records(10_000 + c, MOMENTS_PER_SECOND, 5_000_000_000))
        .collect();
    let mut open = 0;
    for r in &second {
        for e in Phase2Call::parse(r) {
            state.push(e);
            open += 1;
        }
    }
    let held = rss_kib();
    println!(
        "agent memory: {} MiB RSS with {open} sightings of 1000 calls (1 s) open in the window ({} MiB before filling it; {hops} hop records in the pass before)",
        held / 1024,
        before / 1024
    );
    drop(state);
    Ok(())
}
