//! From an eBPF event's cgroup id to the container that made the call.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the calling task's cgroup in the *unified*
//! (v2) hierarchy. On 64-bit kernels that id is the inode number of the cgroup's directory in
//! any cgroup2 mount, so [`CgroupPaths`] indexes the hierarchy by inode (walking it again, at
//! most every 100 ms, when an id is unknown), and [`container_of`] reads the container out of
//! the path the way kubelet and the runtimes name it (the forms it knows are listed in
//! `cgroup_names.rs`). [`cgroup_of_pid`] gives the same path for a pid, from
//! `/proc/<pid>/cgroup`.
//!
//! On a *hybrid* host (v1 controllers under `/sys/fs/cgroup/<controller>`, the unified
//! hierarchy at `/sys/fs/cgroup/unified`) the ids still name unified-hierarchy directories:
//! index [`cgroup2_root`], not `/sys/fs/cgroup`. On a v1-only host every task is in the
//! unified root (id 1): ids name nothing, and only [`cgroup_of_pid`] (its v1 lines) attributes.
//!
//! Paths are relative to the hierarchy's root, without a leading `/` (the root cgroup is the
//! empty path), so `root.join(path)` is the directory.

use procfs::FromRead;
use procfs::ProcessCGroups;
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Reading a path by the runtimes' naming is its own module; its items are this one's API.
pub use crate::cgroup_names::{container_of, ContainerRef, Runtime};

/// How often, at most, an unknown id makes [`CgroupPaths`] walk the hierarchy again.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// The cgroup (v2) hierarchy indexed by directory inode, which is the cgroup id.
pub struct CgroupPaths {
    root: PathBuf,
    by_id: HashMap<u64, PathBuf>,
    last_walk: Option<Instant>,
    interval: Duration,
}

impl CgroupPaths {
    /// An index of the hierarchy mounted at `root` (`/sys/fs/cgroup` on a v2 host; see
    /// [`cgroup2_root`]). Nothing is read until the first lookup.
    pub fn new(root: &Path) -> Self {
        Self::with_refresh_interval(root, REFRESH_INTERVAL)
    }

    /// The same, walking again on a miss at most every `interval`.
    pub fn with_refresh_interval(root: &Path, interval: Duration) -> Self {
        Self {
            root: root.to_path_buf(),
            by_id: HashMap::new(),
            last_walk: None,
            interval,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path (relative to the root) of the cgroup whose id is `cgroup_id`; on a miss the
    /// hierarchy is walked again unless it was walked less than the refresh interval ago.
    pub fn path_of(&mut self, cgroup_id: u64) -> Option<PathBuf> {
        if let Some(p) = self.by_id.get(&cgroup_id) {
            return Some(p.clone());
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < self.interval) {
            return None;
        }
        self.refresh();
        self.by_id.get(&cgroup_id).cloned()
    }

    /// The container whose cgroup (or a cgroup below it) has the id `cgroup_id`.
    pub fn container_of_id(&mut self, cgroup_id: u64) -> Option<ContainerRef> {
        container_of(self.path_of(cgroup_id)?.to_str()?)
    }

    /// Walks the hierarchy now, replacing the index (cgroups removed since drop out).
    pub fn refresh(&mut self) {
        self.last_walk = Some(Instant::now());
        let mut by_id = HashMap::with_capacity(self.by_id.len().max(64));
        if let Ok(m) = fs::metadata(&self.root) {
            by_id.insert(m.ino(), PathBuf::new());
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            // A cgroup can vanish mid-walk: skip it.
            let Ok(entries) = fs::read_dir(self.root.join(&rel)) else {
                continue;
            };
            for entry in entries.flatten() {
                // cgroupfs has no symlinks; file_type() does not follow them anyway.
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                // readdir's d_ino is the inode stat would give (kernfs): no stat per cgroup.
                let child = rel.join(entry.file_name());
                by_id.insert(entry.ino(), child.clone());
                stack.push(child);
            }
        }
        self.by_id = by_id;
    }

    /// Cgroups indexed by the last walk.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Where this process sees the unified (v2) hierarchy: `/sys/fs/cgroup` on a v2 host,
/// `/sys/fs/cgroup/unified` on a hybrid one; `None` if no cgroup2 is mounted. From
/// `/proc/self/mountinfo`, preferring a mount of the hierarchy's root.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<(bool, PathBuf)> = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        found.push((f[3] == "/", PathBuf::from(unescape_mountinfo(f[4]))));
    }
    let pick = found
        .iter()
        .find(|(whole, p)| *whole && p == Path::new("/sys/fs/cgroup"))
        .or_else(|| found.iter().find(|(whole, _)| *whole))
        .or_else(|| found.first())?;
    Some(pick.1.clone())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup of process `pid`, relative to its hierarchy's root, from `/proc/<pid>/cgroup`
/// (see [`parse_proc_cgroup`] for which line).
pub fn cgroup_of_pid(pid: u32) -> Option<PathBuf> {
    parse_proc_cgroup(&fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Picks the path from the text of a `/proc/<pid>/cgroup`: v2 lines are `0::/path`, v1 lines
/// `<n>:<controllers>:/path` (`<n>:name=systemd:/path` for systemd's own). The lines are
/// ranked: the v2 line, then `name=systemd`, `memory`, `cpu` (also `cpu,cpuacct`), `pids`,
/// then the others; the first whose path [`container_of`] recognises wins, else the first
/// that is not the root, else the root. So on a v2 host it is the v2 line (what eBPF ids
/// name); on a hybrid host the v2 line whenever the runtime put the container there, a v1
/// line when only v1 knows it; on a v1 host the systemd or memory line. A removed cgroup's
/// ` (deleted)` mark is dropped. Paths seen from inside a cgroup namespace stay as the kernel
/// writes them (they may start with `..`). Text that is not such a file (procfs parses the
/// lines) names none.
pub fn parse_proc_cgroup(text: &str) -> Option<PathBuf> {
    let ProcessCGroups(groups) = ProcessCGroups::from_read(text.as_bytes()).ok()?;
    let mut lines: Vec<(u8, &str)> = groups
        .iter()
        .map(|g| {
            let has = |c: &str| g.controllers.iter().any(|x| x == c);
            let rank = if g.controllers.is_empty() {
                0
            } else if has("name=systemd") {
                1
            } else if has("memory") {
                2
            } else if has("cpu") {
                3
            } else if has("pids") {
                4
            } else {
                5
            };
            (rank, clean_path(&g.pathname))
        })
        .collect();
    lines.sort_by_key(|&(rank, _)| rank);
    let pick = lines
        .iter()
        .find(|(_, p)| container_of(p).is_some())
        .or_else(|| lines.iter().find(|(_, p)| !p.is_empty()))
        .or_else(|| lines.first())?;
    Some(PathBuf::from(pick.1))
}

/// Without the ` (deleted)` mark and the leading `/`.
fn clean_path(path: &str) -> &str {
    let path = path.trim_end();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.trim_start_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    const UID_: &str = "1b2c3d4e_5f6a_4b7c_8d9e_0f1a2b3c4d5e";

    #[test]
    fn proc_cgroup_files() {
        let v2 = format!("0::/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(
            parse_proc_cgroup(&v2),
            Some(PathBuf::from(format!("kubepods/besteffort/pod{UID}/{ID}")))
        );
        assert_eq!(parse_proc_cgroup("0::/\n"), Some(PathBuf::new()));
        assert_eq!(
            parse_proc_cgroup("0::/user.slice/user-0.slice/session-1.scope (deleted)\n"),
            Some(PathBuf::from("user.slice/user-0.slice/session-1.scope"))
        );
        // Hybrid, as on this project's test machine: the runtime used the unified hierarchy,
        // v1 controllers still show the parent's cgroups.
        let hybrid = format!(
            "9:name=systemd:/\n4:memory:/process_api/6a9c45c35a3f08fdd62c77e31300841c\n\
             1:cpu:/\n0::/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        assert_eq!(
            parse_proc_cgroup(&hybrid),
            Some(PathBuf::from(format!("kubepods/besteffort/pod{UID}/{ID}")))
        );
        // Hybrid, the runtime used v1 only: the v1 line that names the container.
        let hybrid_v1 = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             4:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/\n0::/\n"
        );
        assert_eq!(
            parse_proc_cgroup(&hybrid_v1),
            Some(PathBuf::from(format!("kubepods/burstable/pod{UID}/{ID}")))
        );
        // v1 with the systemd driver.
        let sd = format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope");
        let v1 =
            format!("11:cpu,cpuacct:{sd}\n5:memory:{sd}\n3:devices:{sd}\n1:name=systemd:{sd}\n");
        assert_eq!(
            parse_proc_cgroup(&v1),
            Some(PathBuf::from(sd.trim_start_matches('/')))
        );
        // No container anywhere: the first non-root by rank.
        let host = "5:memory:/system.slice/ssh.service\n1:name=systemd:/\n0::/\n";
        assert_eq!(
            parse_proc_cgroup(host),
            Some(PathBuf::from("system.slice/ssh.service"))
        );
        assert_eq!(parse_proc_cgroup(""), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape_mountinfo(r"/plain\0"), r"/plain\0");
    }

    /// A scratch directory tree standing in for the hierarchy (inodes work the same).
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cgroup-rs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("a/b/c")).unwrap();
        fs::create_dir_all(d.join("x")).unwrap();
        fs::write(d.join("a/cgroup.procs"), "").unwrap();
        d
    }

    fn ino(p: &Path) -> u64 {
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn index_by_inode() {
        let d = scratch("index");
        let mut paths = CgroupPaths::with_refresh_interval(&d, Duration::from_secs(3600));
        assert_eq!(paths.path_of(ino(&d)), Some(PathBuf::new()));
        assert_eq!(
            paths.path_of(ino(&d.join("a/b/c"))),
            Some(PathBuf::from("a/b/c"))
        );
        assert_eq!(paths.path_of(ino(&d.join("x"))), Some(PathBuf::from("x")));
        assert_eq!(paths.len(), 5);
        // A file's inode is no cgroup.
        assert_eq!(paths.path_of(ino(&d.join("a/cgroup.procs"))), None);
        // A new cgroup is unknown until the next walk, which the interval holds back.
        fs::create_dir(d.join("x/new")).unwrap();
        let new = ino(&d.join("x/new"));
        assert_eq!(paths.path_of(new), None);
        paths.refresh();
        assert_eq!(paths.path_of(new), Some(PathBuf::from("x/new")));
        // Removed cgroups drop out at the next walk.
        fs::remove_dir(d.join("x/new")).unwrap();
        paths.refresh();
        assert_eq!(paths.len(), 5);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_miss_walks_again_after_the_interval() {
        let d = scratch("miss");
        let mut paths = CgroupPaths::with_refresh_interval(&d, Duration::from_millis(50));
        assert_eq!(paths.path_of(ino(&d.join("x"))), Some(PathBuf::from("x")));
        fs::create_dir(d.join("x/late")).unwrap();
        let late = ino(&d.join("x/late"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(paths.path_of(late), Some(PathBuf::from("x/late")));
        // Misses inside the interval do not walk: the index stays the one just built.
        fs::create_dir(d.join("x/later")).unwrap();
        let t = paths.last_walk;
        assert_eq!(paths.path_of(u64::MAX), None);
        assert_eq!(paths.last_walk, t);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn this_process_is_found_by_its_cgroup_id() {
        // Whatever host this runs on, its own cgroup's directory is in the index.
        let Some(root) = cgroup2_root() else { return };
        let text = fs::read_to_string("/proc/self/cgroup").unwrap();
        let Some(line) = text.lines().find(|l| l.starts_with("0::")) else {
            return;
        };
        let rel = clean_path(&line[3..]);
        if rel.starts_with("..") {
            return; // a cgroup namespace hides the path from this mount
        }
        let mut paths = CgroupPaths::new(&root);
        assert_eq!(
            paths.path_of(ino(&root.join(rel))),
            Some(PathBuf::from(rel))
        );
    }
}
