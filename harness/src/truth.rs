//! Ground truth: what the harness's own components record of every read and write they make.

use agent::clock::Skew;
use agent::schema::Dir;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How many times the calling thread has been switched out while runnable (`ru_nivcsw` of
/// `getrusage(RUSAGE_THREAD)`): a change across a stamp and its syscall means the thread lost
/// its CPU somewhere in between. One syscall, nothing allocated.
pub fn involuntary_switches() -> i64 {
    // SAFETY: an all-zero rusage is valid; getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid out-pointer; RUSAGE_THREAD exists on Linux ≥ 2.6.26.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    ru.ru_nivcsw as i64
}

/// Bytes `flow_off..flow_off+len` of a flow carry bytes `audio_off..audio_off+len` of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub flow_off: u64,
    pub call: u32,
    pub audio_off: u64,
    pub len: u64,
}

/// One read or write syscall. Writes are stamped right before the call, reads right after it
/// returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Io {
    pub t_ns: u64,
    /// The thread was preempted (its involuntary context-switch count changed) between the
    /// count read just before the write's clock read and just after its syscall returned, or
    /// just before the read's syscall and just after its clock read. Then `t_ns` may be off
    /// from the syscall's entry (write) or exit (read) by a scheduling slice, while a tracer's
    /// in-kernel stamp is not: such truth is not fit to judge a latency error. A superset:
    /// a switch inside the syscall or right around the stamp sets it too.
    #[serde(default)]
    pub preempted: bool,
    pub dir: Dir,
    pub fd: i32,
    /// The link this fd is an end of (scenario-wide name).
    pub link: String,
    pub flow_off: u64,
    pub len: u64,
    /// The audio these bytes carry; bytes not covered are headers.
    pub segments: Vec<Segment>,
}

/// Everything one component process recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentLog {
    pub name: String,
    pub pid: u32,
    pub comm: String,
    pub ios: Vec<Io>,
    /// A process the harness did not write (a real broker or TLS proxy): measured as a black
    /// box, it records nothing, so its `ios` are empty.
    #[serde(default)]
    pub external: bool,
    /// The node it ran on (set by the runner); `None`: the machine's own network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl ComponentLog {
    /// Saved through an 8 KiB buffer: the component is traced, and its own bookkeeping should
    /// not look like one huge write.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut w, self)?;
        std::io::Write::flush(&mut w).with_context(|| format!("writing {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading ground truth {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// A TLS implementation other than OpenSSL. Its plaintext passes no syscall and no OpenSSL
/// function: a tracer sees it only with probes inside that stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsStack {
    /// Go's crypto/tls.
    Go,
    /// The JDK's (JSSE).
    Java,
    Rustls,
}

/// One point of a call's path where its audio is observable: a component reading or writing a link.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Point {
    pub component: String,
    pub dir: Dir,
    pub link: String,
    /// The stack whose plaintext this is, on a TLS link whose end here is not OpenSSL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_stack: Option<TlsStack>,
}

/// Where one call's audio goes: a tree of points (a chain, unless a component fans it out).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallTruth {
    pub call: u32,
    /// The call's audio as the source sent it.
    pub wav: PathBuf,
    pub points: Vec<Point>,
    /// The point each point's audio came from (`None` for the source's write).
    pub parent: Vec<Option<usize>>,
}

impl CallTruth {
    /// Adds a point fed by `parent`; returns its index.
    pub fn add(&mut self, point: Point, parent: Option<usize>) -> usize {
        self.points.push(point);
        self.parent.push(parent);
        self.points.len() - 1
    }
}

/// The whole ground truth of one scenario run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroundTruth {
    pub scenario: String,
    pub calls: Vec<CallTruth>,
    pub components: Vec<ComponentLog>,
    /// The clock each node's agent was told to pretend it has (S9's unsynchronised nodes), by
    /// node; an unnamed node's clock is the real one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_clocks: BTreeMap<String, Skew>,
}

impl GroundTruth {
    pub fn component(&self, name: &str) -> Option<&ComponentLog> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The real time of a stamp on `node`'s own clock.
    pub fn real_ns(&self, node: &str, node_ns: u64) -> u64 {
        self.node_clocks
            .get(node)
            .map_or(node_ns, |c| c.real(node_ns))
    }
}
