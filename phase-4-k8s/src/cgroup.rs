//! From an eBPF event's cgroup id to the container that made the call.
//!
//! `bpf_get_current_cgroup_id()` returns the id of the calling task's cgroup in the *unified*
//! (v2) hierarchy. On 64-bit kernels that id is the inode number of the cgroup's directory in
//! any cgroup2 mount, so [`CgroupPaths`] indexes the hierarchy by inode (walking it again, at
//! most every 100 ms, when an id is unknown), and [`container_of`] reads the container out of
//! the path the way kubelet and the runtimes name it. [`cgroup_of_pid`] gives the same path
//! for a pid, from `/proc/<pid>/cgroup`.
//!
//! On a *hybrid* host (v1 controllers under `/sys/fs/cgroup/<controller>`, the unified
//! hierarchy at `/sys/fs/cgroup/unified`) the ids still name unified-hierarchy directories:
//! index [`cgroup2_root`], not `/sys/fs/cgroup`. On a v1-only host every task is in the
//! unified root (id 1): ids name nothing, and only [`cgroup_of_pid`] (its v1 lines) attributes.
//!
//! Paths are relative to the hierarchy's root, without a leading `/` (the root cgroup is the
//! empty path), so `root.join(path)` is the directory.
//!
//! # Recognised forms
//!
//! The container is the last path component (nearest the leaf) of one of these forms; its
//! parent, when it is a pod's cgroup, gives the pod uid. Whatever comes before is ignored, so
//! nested nodes (kind, k3d: a whole node inside a container) and paths seen from a cgroup
//! namespace (`/../../kubepods…`) work, and so do cgroups below the container's (CRI-O with
//! crun under systemd puts the processes in `…/crio-<id>.scope/container`).
//!
//! | cgroup driver | path (`<id>`: 64 lowercase hex)                                          | runtime    |
//! |---------------|---------------------------------------------------------------------------|------------|
//! | systemd       | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` | containerd |
//! | systemd       | `…/kubepods-<qos>-pod<uid_>.slice/crio-<id>.scope` (not `crio-conmon-<id>.scope`)             | CRI-O      |
//! | systemd       | `…/kubepods-<qos>-pod<uid_>.slice/docker-<id>.scope`                       | Docker     |
//! | systemd       | guaranteed QoS: `/kubepods.slice/kubepods-pod<uid_>.slice/<container>.scope` | as above |
//! | cgroupfs      | `/kubepods/<qos>/pod<uid>/<id>`, guaranteed: `/kubepods/pod<uid>/<id>`    | containerd |
//! | cgroupfs      | `/kubepods/<qos>/pod<uid>/crio-<id>` (CRI-O's own prefix)                  | CRI-O      |
//! | cgroupfs      | `/docker/<id>` (Docker without Kubernetes)                                 | Docker     |
//! | systemd       | `/system.slice/docker-<id>.scope` (Docker without Kubernetes)              | Docker     |
//!
//! `<qos>` is `burstable` or `besteffort`; `<uid_>` is the pod uid with `_` for `-` (systemd
//! reserves `-`), given back with dashes. The prefixed forms are also accepted without
//! `.scope`. A bare `<id>` names no runtime: it is Docker under a `docker` cgroup, and
//! containerd anywhere else (cri-dockerd with the cgroupfs driver, rare, reads as containerd).
//! A uid is a UUID (8-4-4-4-12 hex) or, for static pods, kubelet's 32-hex config hash — the
//! mirror pod the API shows has another uid and carries the hash in its
//! `kubernetes.io/config.mirror` annotation. Not recognised: Podman (`libpod-<id>.scope`),
//! sandboxes' `crio-conmon-<id>` and pod-level cgroups themselves.
//!
//! A whole `/proc/<pid>/cgroup` line (`0::/path`, `12:memory:/path`) is accepted too.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
/// writes them (they may start with `..`).
pub fn parse_proc_cgroup(text: &str) -> Option<PathBuf> {
    let mut lines: Vec<(u8, &str)> = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rank = if controllers.is_empty() {
            0
        } else {
            let has = |c: &str| controllers.split(',').any(|x| x == c);
            if has("name=systemd") {
                1
            } else if has("memory") {
                2
            } else if has("cpu") {
                3
            } else if has("pids") {
                4
            } else {
                5
            }
        };
        lines.push((rank, clean_path(path)));
    }
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

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
}

impl Runtime {
    /// The scheme of a pod status's `containerID` (`containerd://<id>`).
    pub fn scheme(&self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerRef {
    pub runtime: Runtime,
    /// 64 lowercase hex.
    pub id: String,
    /// With dashes, as the API shows it (a static pod's is its config hash, see the module doc).
    pub pod_uid: Option<String>,
}

impl ContainerRef {
    /// As `status.containerStatuses[].containerID` writes it: `containerd://<id>`.
    pub fn status_id(&self) -> String {
        format!("{}://{}", self.runtime.scheme(), self.id)
    }
}

/// The container a cgroup path belongs to, by the forms in the module doc; `None` for a
/// cgroup outside any container.
pub fn container_of(cgroup_path: &str) -> Option<ContainerRef> {
    let path = strip_proc_line(cgroup_path);
    let path = path.trim_end();
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    for i in (0..parts.len()).rev() {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        if let Some((runtime, id)) = container_component(parts[i], parent) {
            return Some(ContainerRef {
                runtime,
                id: id.to_string(),
                pod_uid: parent.and_then(pod_uid_of),
            });
        }
    }
    None
}

/// `12:memory:/path` or `0::/path` → `/path`; anything else unchanged.
fn strip_proc_line(s: &str) -> &str {
    if let Some((n, rest)) = s.split_once(':') {
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            if let Some((_, path)) = rest.split_once(':') {
                return path;
            }
        }
    }
    s
}

fn container_component<'a>(name: &'a str, parent: Option<&str>) -> Option<(Runtime, &'a str)> {
    let bare = name.strip_suffix(".scope").unwrap_or(name);
    let (runtime, id) = if let Some(id) = bare.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, id)
    } else if let Some(id) = bare.strip_prefix("crio-") {
        // crio-conmon-<id> is the container's monitor, not the container (and not hex anyway).
        if id.starts_with("conmon-") {
            return None;
        }
        (Runtime::CriO, id)
    } else if let Some(id) = bare.strip_prefix("docker-") {
        (Runtime::Docker, id)
    } else if name == bare {
        // A bare id: the cgroupfs driver's containerd (and cri-dockerd), or plain Docker.
        let runtime = if parent == Some("docker") {
            Runtime::Docker
        } else {
            Runtime::Containerd
        };
        (runtime, bare)
    } else {
        return None;
    };
    is_container_id(id).then_some((runtime, id))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_>.slice` (systemd) → the uid with dashes.
fn pod_uid_of(parent: &str) -> Option<String> {
    let uid = if let Some(slice) = parent.strip_suffix(".slice") {
        let (_, last) = slice.rsplit_once('-')?;
        last.strip_prefix("pod")?.replace('_', "-")
    } else {
        parent.strip_prefix("pod")?.to_string()
    };
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (8-4-4-4-12 lowercase hex) or a static pod's 32-hex config hash.
fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str| p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if s.len() == 32 {
        return hex(s);
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && hex(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";
    const UID_: &str = "1b2c3d4e_5f6a_4b7c_8d9e_0f1a2b3c4d5e";

    fn c(runtime: Runtime, id: &str, pod: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            id: id.to_string(),
            pod_uid: pod.map(str::to_string),
        })
    }

    #[test]
    fn systemd_driver() {
        for qos in ["burstable", "besteffort"] {
            let pod =
                format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice");
            assert_eq!(
                container_of(&format!("{pod}/cri-containerd-{ID}.scope")),
                c(Runtime::Containerd, ID, Some(UID))
            );
            assert_eq!(
                container_of(&format!("{pod}/crio-{ID}.scope")),
                c(Runtime::CriO, ID, Some(UID))
            );
            assert_eq!(
                container_of(&format!("{pod}/docker-{ID}.scope")),
                c(Runtime::Docker, ID, Some(UID))
            );
            // CRI-O with crun: the processes sit one level below the scope.
            assert_eq!(
                container_of(&format!("{pod}/crio-{ID}.scope/container")),
                c(Runtime::CriO, ID, Some(UID))
            );
            assert_eq!(container_of(&format!("{pod}/crio-conmon-{ID}.scope")), None);
            assert_eq!(container_of(&pod), None);
        }
        // Guaranteed QoS: the pod slice sits directly under kubepods.slice.
        assert_eq!(
            container_of(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, ID, Some(UID))
        );
    }

    #[test]
    fn cgroupfs_driver() {
        for pod in [
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods/besteffort/pod{UID}"),
            format!("/kubepods/pod{UID}"),
        ] {
            assert_eq!(
                container_of(&format!("{pod}/{ID}")),
                c(Runtime::Containerd, ID, Some(UID))
            );
            assert_eq!(
                container_of(&format!("{pod}/crio-{ID}")),
                c(Runtime::CriO, ID, Some(UID))
            );
            assert_eq!(container_of(&pod), None);
        }
    }

    #[test]
    fn docker_without_kubernetes() {
        assert_eq!(
            container_of(&format!("/docker/{ID}")),
            c(Runtime::Docker, ID, None)
        );
        assert_eq!(
            container_of(&format!("/system.slice/docker-{ID}.scope")),
            c(Runtime::Docker, ID, None)
        );
        assert_eq!(
            c(Runtime::Docker, ID, None).unwrap().status_id(),
            format!("docker://{ID}")
        );
    }

    #[test]
    fn proc_lines_and_relative_paths() {
        let want = c(Runtime::Containerd, ID, Some(UID));
        assert_eq!(
            container_of(&format!("12:memory:/kubepods/burstable/pod{UID}/{ID}")),
            want
        );
        assert_eq!(
            container_of(&format!("0::/kubepods/burstable/pod{UID}/{ID}")),
            want
        );
        assert_eq!(
            container_of(&format!("kubepods/burstable/pod{UID}/{ID}")),
            want
        );
        assert_eq!(
            container_of(&format!("/kubepods/burstable/pod{UID}/{ID} (deleted)")),
            want
        );
        // Seen from a cgroup namespace.
        assert_eq!(
            container_of(&format!(
                "/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, ID, Some(UID))
        );
    }

    #[test]
    fn nested_nodes_match_the_tail() {
        // kind: a node in a Docker container, pods in the node's containerd.
        assert_eq!(
            container_of(&format!(
                "/system.slice/docker-{ID2}.scope/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
            )),
            c(Runtime::Containerd, ID, Some(UID))
        );
        // k3d (cgroupfs driver inside the node).
        assert_eq!(
            container_of(&format!("/docker/{ID2}/kubepods/besteffort/pod{UID}/{ID}")),
            c(Runtime::Containerd, ID, Some(UID))
        );
        // The node's own processes belong to the node's container.
        assert_eq!(
            container_of(&format!("/docker/{ID2}/system.slice/containerd.service")),
            c(Runtime::Docker, ID2, None)
        );
        assert_eq!(
            container_of(&format!("/docker/{ID2}/kubepods/besteffort/pod{UID}")),
            c(Runtime::Docker, ID2, None)
        );
    }

    #[test]
    fn static_pod_uid_is_the_config_hash() {
        let hash = "5c8a1f3e9b2d4c6a8e0f1a2b3c4d5e6f";
        assert_eq!(
            container_of(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            c(Runtime::Containerd, ID, Some(hash))
        );
        assert_eq!(
            container_of(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/crio-{ID}.scope"
            )),
            c(Runtime::CriO, ID, Some(hash))
        );
    }

    #[test]
    fn not_containers() {
        for p in [
            "",
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/init.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            // One hex digit short, upper case, a podman container.
            &format!("/kubepods/burstable/pod{UID}/{}", &ID[1..]),
            &format!("/kubepods/burstable/pod{UID}/{}", ID.to_uppercase()),
            &format!("/machine.slice/libpod-{ID}.scope"),
            &format!("/system.slice/crio-conmon-{ID}.scope"),
        ] {
            assert_eq!(container_of(p), None, "{p}");
        }
        // A malformed pod uid leaves the container known, the pod not.
        assert_eq!(
            container_of(&format!("/kubepods/burstable/podnot-a-uid/{ID}")),
            c(Runtime::Containerd, ID, None)
        );
        assert_eq!(
            container_of(&format!(
                "/kubepods.slice/kubepods-pod{UID}.slice/crio-{ID}.scope"
            )),
            c(Runtime::CriO, ID, None),
            "dashes in a systemd pod slice are not the uid"
        );
    }

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
