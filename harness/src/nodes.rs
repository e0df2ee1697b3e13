//! Nodes for scenarios whose pipeline spans machines (S9): network namespaces on this machine, each
//! with one veth into a bridge that lives in a namespace of its own (the "switch"), so that nothing
//! of the host's networking changes. A node sees its own loopback and the other nodes, over a real
//! network path.
//!
//! A run claims a slot 0..=255 by holding a lock file: its namespaces are named
//! `hx-n<slot>-<pid>-<node>` (the switch `hx-n<slot>-<pid>`) and its nodes have addresses in
//! `10.213.<slot>.0/24`, so parallel runs neither collide nor share a TCP 4-tuple a tracer could
//! confuse. Everything is deleted on drop; what a killed run left behind is deleted by the next
//! run that claims its slot (the lock died with it).

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The name under which [`crate::run::Targets`] lists components that run on no node (in the
/// machine's own namespace); no node may take it.
pub const HOST: &str = "host";

const LOCKS: &str = "/run/hx-nodes";

/// One node: a network namespace and its address on the nodes' network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The namespace's name, as `ip netns` lists it.
    pub netns: String,
    pub addr: Ipv4Addr,
}

impl Node {
    /// The namespace's file, to `setns` into.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.netns)
    }

    /// Makes `cmd` start inside this node. The process keeps the pid it would have had (only
    /// its network namespace differs), so tracing it by pid works as anywhere.
    pub fn place(&self, cmd: &mut Command) -> Result<()> {
        let ns = self.open()?;
        // SAFETY: setns is async-signal-safe; `ns` is owned by the closure, so open until exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        Ok(())
    }

    /// Runs `f` on a thread of its own inside this node: sockets it creates belong to the
    /// node for good, whichever thread uses them later.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = self.open()?;
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering node {}", self.name));
                }
                Ok(f())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn open(&self) -> Result<File> {
        File::open(self.path()).with_context(|| format!("opening node {}", self.name))
    }
}

/// A run's nodes; dropping it deletes them.
#[derive(Debug)]
pub struct Nodes {
    nodes: Vec<Node>,
    /// Every namespace created so far, the switch first.
    created: Vec<String>,
    /// Holds the slot.
    _lock: File,
}

impl Nodes {
    /// Creates one node per name (distinct names of letters, digits and '-'), addressed
    /// `10.213.<slot>.1`, `.2`, … in that order.
    pub fn create(names: &[&str]) -> Result<Self> {
        for (i, n) in names.iter().enumerate() {
            if n.is_empty()
                || *n == HOST
                || !n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || names[..i].contains(n)
            {
                bail!("bad node name {n:?} among {names:?}");
            }
        }
        if names.len() > 253 {
            bail!("{} nodes: a /24 holds 253", names.len());
        }
        let (slot, lock) = claim_slot()?;
        let prefix = format!("hx-n{slot}-");
        for stale in std::fs::read_dir("/run/netns").into_iter().flatten() {
            let name = stale?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                ip(
                    "deleting a namespace a killed run left",
                    &["netns", "del", &name],
                )?;
            }
        }
        let switch = format!("{prefix}{}", std::process::id());
        let mut nodes = Self {
            nodes: Vec::new(),
            created: Vec::new(),
            _lock: lock,
        };
        nodes.add_netns(&switch)?;
        ip(
            "creating the nodes' bridge",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        )?;
        ip(
            "creating the nodes' bridge",
            &["-n", &switch, "link", "set", "br0", "up"],
        )?;
        for (i, name) in names.iter().enumerate() {
            let node = Node {
                name: name.to_string(),
                netns: format!("{switch}-{name}"),
                addr: Ipv4Addr::new(10, 213, slot, i as u8 + 1),
            };
            let ns = node.netns.as_str();
            let port = format!("p{i}");
            let cidr = format!("{}/24", node.addr);
            let what = format!("setting up node {name}");
            nodes.add_netns(ns)?;
            for args in [
                &["-n", ns, "link", "set", "lo", "up"][..],
                &[
                    "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns,
                ],
                &["-n", &switch, "link", "set", &port, "master", "br0", "up"],
                &["-n", ns, "addr", "add", &cidr, "dev", "eth0"],
                &["-n", ns, "link", "set", "eth0", "up"],
            ] {
                ip(&what, args)?;
            }
            nodes.nodes.push(node);
        }
        Ok(nodes)
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes, in the order they were asked for.
    pub fn all(&self) -> &[Node] {
        &self.nodes
    }

    fn add_netns(&mut self, name: &str) -> Result<()> {
        ip(
            &format!("creating network namespace {name}"),
            &["netns", "add", name],
        )?;
        self.created.push(name.to_string());
        Ok(())
    }
}

impl Drop for Nodes {
    /// Deleting a namespace deletes its end of every veth, and with it the other end.
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            if let Err(e) = ip("deleting a node", &["netns", "del", name]) {
                eprintln!("{e:#}");
            }
        }
    }
}

/// The first free slot from one picked by pid, and the lock that holds it.
fn claim_slot() -> Result<(u8, File)> {
    std::fs::create_dir_all(LOCKS).map_err(|e| anyhow!("creating {LOCKS}: {e}{}", as_root()))?;
    let start = std::process::id() as usize;
    for k in 0..256 {
        let slot = ((start + k) % 256) as u8;
        let path = format!("{LOCKS}/{slot}.lock");
        let f = File::create(&path).map_err(|e| anyhow!("creating {path}: {e}{}", as_root()))?;
        // SAFETY: flock on a file we own; the lock goes with the file (or the process).
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((slot, f));
        }
    }
    bail!("all 256 node slots in {LOCKS} are taken")
}

/// `ip ARGS`, its error as one line.
fn ip(what: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().with_context(|| {
        format!("{what}: running ip (iproute2; `bash scripts/setup.sh` installs it)")
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{what}: ip {}: {}{}",
            args.join(" "),
            err.split_whitespace().collect::<Vec<_>>().join(" "),
            as_root()
        );
    }
    Ok(())
}

fn as_root() -> &'static str {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        ""
    } else {
        " (run as root)"
    }
}
