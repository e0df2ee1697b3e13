//! Cgroup attribution against real containers: busybox containers run by crun in cgroups named
//! the way kubelet names them under each cgroup driver, found back from their pid and from
//! their cgroup id (the directory's inode), and the id the eBPF tracer stamps on a container's
//! write is that same inode.
//!
//! crun's cgroupfs manager creates whatever `cgroupsPath` it is given, so systemd-driver names
//! are made without systemd. On a hybrid host (v1 controllers, the unified hierarchy at
//! `/sys/fs/cgroup/unified`) crun refuses to run while the unified hierarchy has a controller
//! (hugetlb here); each crun call then runs in a private mount namespace where
//! `/sys/fs/cgroup` is the cgroup2 mount, so crun sees a v2 host and puts the container in the
//! unified hierarchy, which is what eBPF cgroup ids name.

use phase_2_straddle::event::Phase2Event;
use phase_2_straddle::tracer::Tracer;
use phase_4_k8s::cgroup::{
    cgroup2_root, cgroup_of_pid, container_of, CgroupPaths, ContainerRef, Runtime,
};
use shared::{FingerprintConfig, Scanner};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The tests share the `kubepods` trees at the hierarchy's root: one at a time, across
/// processes too (two runs of this binary), so that one's cleanup never races another's
/// containers for a parent cgroup (or leaves behind one the other made). An exclusive flock,
/// released when the file closes.
fn exclusive() -> fs::File {
    let f = fs::File::create(std::env::temp_dir().join("ebpf-audio-tracer-containers.lock"))
        .expect("creating the lock file");
    f.lock().expect("locking the lock file");
    f
}

const SETUP: &str = "run `bash scripts/setup.sh`";

/// The host as the tests see it.
struct Host {
    /// The unified hierarchy's mount point.
    root: PathBuf,
    /// Whether crun must be shown a v2 `/sys/fs/cgroup` in a mount namespace.
    hybrid: bool,
    busybox: PathBuf,
}

fn host() -> Host {
    assert_eq!(
        fs::metadata("/proc/self").unwrap().uid(),
        0,
        "these tests run containers: run them as root"
    );
    for tool in ["crun", "unshare"] {
        assert!(
            in_path(tool).is_some(),
            "{tool} is missing: {SETUP} (it installs crun and busybox-static)"
        );
    }
    let busybox = in_path("busybox")
        .unwrap_or_else(|| panic!("busybox is missing: {SETUP} (it installs busybox-static)"));
    assert!(
        is_static(&busybox),
        "{} is dynamically linked, the container has no libraries: {SETUP} (busybox-static)",
        busybox.display()
    );
    let root = cgroup2_root().expect("no cgroup2 hierarchy is mounted (a v1-only host)");
    Host {
        hybrid: root != Path::new("/sys/fs/cgroup"),
        root,
        busybox,
    }
}

/// An ELF64 file without a PT_INTERP program header: it needs no dynamic loader.
fn is_static(path: &Path) -> bool {
    let Ok(b) = fs::read(path) else { return false };
    let u = |at: usize, n: usize| -> usize {
        b.get(at..at + n)
            .map_or(0, |s| s.iter().rev().fold(0, |a, &x| (a << 8) | x as usize))
    };
    if b.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (off, size, count) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    (0..count).all(|i| u(off + i * size, 4) != 3)
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Host {
    /// `crun --cgroup-manager=cgroupfs <args>`, in a mount namespace on a hybrid host.
    fn crun(&self, args: &[&str]) -> Command {
        let mut cmd = if self.hybrid {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg("mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec crun \"$@\"")
                .arg("crun");
            c
        } else {
            Command::new("crun")
        };
        cmd.arg("--cgroup-manager=cgroupfs").args(args);
        cmd
    }

    fn crun_ok(&self, args: &[&str]) -> String {
        let out = self
            .crun(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("crun {args:?}: {e}"));
        assert!(
            out.status.success(),
            "crun {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A 64-hex id and a pod uid, fresh for each container.
fn random_ids() -> (String, String) {
    let uuid = || {
        fs::read_to_string("/proc/sys/kernel/random/uuid")
            .unwrap()
            .trim()
            .to_string()
    };
    let id = format!("{}{}", uuid(), uuid()).replace('-', "");
    assert_eq!(id.len(), 64);
    (id, uuid())
}

/// One crun container and everything it leaves behind, removed on drop (panics included).
struct Container<'h> {
    host: &'h Host,
    name: String,
    bundle: PathBuf,
    /// `cgroupsPath` without its leading `/`.
    cgroup: String,
    /// Cgroup directories that did not exist before, deepest last.
    made_dirs: Vec<PathBuf>,
}

impl<'h> Container<'h> {
    /// Prepares a bundle: a busybox rootfs (plus `files`) and a config running `args` in the
    /// cgroup `cgroups_path`.
    fn new(host: &'h Host, cgroups_path: &str, args: &[&str], files: &[(&str, &[u8])]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "eat-cgroup-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let bundle = std::env::temp_dir().join(&name);
        let cgroup = cgroups_path.trim_start_matches('/').to_string();
        let mut made_dirs = Vec::new();
        let mut p = host.root.clone();
        for part in Path::new(&cgroup).components() {
            p.push(part);
            if !p.exists() {
                made_dirs.push(p.clone());
            }
        }
        let c = Self {
            host,
            name,
            bundle,
            cgroup,
            made_dirs,
        };
        let _ = fs::remove_dir_all(&c.bundle);
        let bin = c.bundle.join("rootfs/bin");
        fs::create_dir_all(&bin).unwrap();
        fs::copy(&host.busybox, bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "dd"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        for (path, bytes) in files {
            fs::write(c.bundle.join("rootfs").join(path), bytes).unwrap();
        }
        let bundle = c.bundle.to_str().unwrap().to_string();
        host.crun_ok(&["spec", "--bundle", &bundle]);
        let spec_path = c.bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&fs::read(&spec_path).unwrap()).unwrap();
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = false.into();
        spec["linux"]["cgroupsPath"] = cgroups_path.into();
        // No resources: the spec's device rules make crun 1.8 load an eBPF device filter after
        // raising RLIMIT_MEMLOCK, which fails without CAP_SYS_RESOURCE (some sandboxes).
        spec["linux"].as_object_mut().unwrap().remove("resources");
        fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        c
    }

    fn bundle(&self) -> String {
        self.bundle.to_str().unwrap().to_string()
    }

    /// `crun run -d`: the container runs with no stdio; crun's errors go to a file.
    fn run(&self) {
        let err = self.bundle.join("crun.err");
        let status = self
            .host
            .crun(&["run", "-d", "--bundle", &self.bundle(), &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "crun run {}: {}",
            self.name,
            fs::read_to_string(&err).unwrap_or_default()
        );
    }

    /// `crun create`: the container's process waits to be started, its stdout is `stdout`.
    fn create(&self, stdout: std::io::PipeWriter) {
        let err = self.bundle.join("crun.err");
        let status = self
            .host
            .crun(&["create", "--bundle", &self.bundle(), &self.name])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "crun create {}: {}",
            self.name,
            fs::read_to_string(&err).unwrap_or_default()
        );
    }

    fn start(&self) {
        self.host.crun_ok(&["start", &self.name]);
    }

    /// The container's init pid, from `crun state`.
    fn pid(&self) -> u32 {
        let state: serde_json::Value =
            serde_json::from_str(&self.host.crun_ok(&["state", &self.name])).unwrap();
        state["pid"].as_u64().expect("crun state has a pid") as u32
    }

    fn cgroup_dir(&self) -> PathBuf {
        self.host.root.join(&self.cgroup)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .host
            .crun(&["delete", "--force", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // crun removes the container's cgroup (a killed process can keep it busy for a
        // moment), not the parents it made; a parent another container still uses stays, for
        // that container to remove.
        let deadline = Instant::now() + Duration::from_secs(5);
        for (i, dir) in self.made_dirs.iter().rev().enumerate() {
            while dir.exists() && fs::remove_dir(dir).is_err() {
                if i > 0 || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.bundle);
    }
}

/// Runs one sleeping container per (cgroups path, expected container) at once and finds each
/// back from its pid and from its cgroup id.
fn attribute(cases: &[(String, ContainerRef)]) {
    let _lock = exclusive();
    let host = host();
    let containers: Vec<Container> = cases
        .iter()
        .map(|(path, _)| Container::new(&host, path, &["sleep", "600"], &[]))
        .collect();
    for c in &containers {
        c.run();
    }
    let mut paths = CgroupPaths::new(&host.root);
    for (c, (path, want)) in containers.iter().zip(cases) {
        let pid = c.pid();
        let rel = PathBuf::from(&c.cgroup);
        assert_eq!(cgroup_of_pid(pid), Some(rel.clone()), "pid {pid} of {path}");
        let line = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let ino = fs::metadata(c.cgroup_dir()).unwrap().ino();
        assert_eq!(
            paths.path_of(ino),
            Some(rel.clone()),
            "cgroup id {ino} of {path}"
        );
        assert_eq!(
            container_of(rel.to_str().unwrap()).as_ref(),
            Some(want),
            "{path}"
        );
        assert_eq!(container_of(path).as_ref(), Some(want), "{path}");
        assert_eq!(paths.container_of_id(ino).as_ref(), Some(want), "{path}");
        let v2 = line.lines().find(|l| l.starts_with("0::")).unwrap();
        assert_eq!(container_of(v2).as_ref(), Some(want), "{v2}");
        eprintln!("pid {pid}, cgroup id {ino}: {path} -> {want:?}");
    }
    // This test's own process is in no container.
    let own = cgroup_of_pid(std::process::id()).expect("this process has a cgroup");
    assert_eq!(container_of(own.to_str().unwrap()), None, "{own:?}");
}

fn containerd_ref(runtime: Runtime, id: &str, uid: &str) -> ContainerRef {
    ContainerRef {
        runtime,
        id: id.to_string(),
        pod_uid: Some(uid.to_string()),
    }
}

#[test]
fn systemd_driver_paths() {
    let (id1, uid1) = random_ids();
    let (id2, uid2) = random_ids();
    let (u1, u2) = (uid1.replace('-', "_"), uid2.replace('-', "_"));
    attribute(&[
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u1}.slice/\
                 cri-containerd-{id1}.scope"
            ),
            containerd_ref(Runtime::Containerd, &id1, &uid1),
        ),
        // Guaranteed QoS: the pod slice directly under kubepods.slice.
        (
            format!("/kubepods.slice/kubepods-pod{u2}.slice/crio-{id2}.scope"),
            containerd_ref(Runtime::CriO, &id2, &uid2),
        ),
    ]);
}

#[test]
fn cgroupfs_driver_paths() {
    let (id1, uid1) = random_ids();
    let (id2, uid2) = random_ids();
    attribute(&[
        (
            format!("/kubepods/besteffort/pod{uid1}/{id1}"),
            containerd_ref(Runtime::Containerd, &id1, &uid1),
        ),
        (
            format!("/kubepods/pod{uid2}/{id2}"),
            containerd_ref(Runtime::Containerd, &id2, &uid2),
        ),
    ]);
}

/// The tracer's `cgroup_id` on a container's writes is its cgroup directory's inode: a
/// container's `dd` writes speech-like PCM to its stdout, a pipe this test reads.
#[test]
fn ebpf_cgroup_id_is_the_cgroup_directory_inode() {
    let _lock = exclusive();
    let host = host();
    let (id, uid) = random_ids();
    let path = format!("/kubepods/burstable/pod{uid}/{id}");
    let audio = harness::audio::speech_like(8000, 10.0, 5).to_bytes();
    let c = Container::new(
        &host,
        &path,
        &["dd", "if=/audio.raw", "bs=4096"],
        &[("audio.raw", &audio)],
    );
    let (mut reader, writer) = std::io::pipe().unwrap();
    c.create(writer);
    // crun create leaves the container's init waiting in its cgroup, under its final pid.
    let pid = c.pid();
    let ino = fs::metadata(c.cgroup_dir()).unwrap().ino();
    let cfg = FingerprintConfig::default();
    let mut tracer = Tracer::start(&cfg, None).expect("loading phase 2 (run as root)");
    tracer.add_targets(&[pid]).unwrap();
    c.start();
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    assert!(
        got == audio,
        "the container wrote {} of {} bytes",
        got.len(),
        audio.len()
    );
    let mut events: Vec<Phase2Event> = Vec::new();
    tracer.drain(|e| events.push(e));
    let mine: Vec<&Phase2Event> = events
        .iter()
        .filter(|e| e.call.tgid == pid && e.call.fd == 1)
        .collect();
    let mut seen: Vec<(u64, u64)> = mine.iter().map(|e| (e.end, e.signature)).collect();
    seen.sort_unstable();
    let want: Vec<(u64, u64)> = Scanner::new(cfg)
        .feed_collect(&audio)
        .iter()
        .map(|m| (m.end, m.signature))
        .collect();
    assert!(want.len() > 10, "{} reference moments", want.len());
    assert_eq!(seen, want, "the container's moments");
    let ids: std::collections::BTreeSet<u64> = mine.iter().map(|e| e.call.cgroup_id).collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![ino],
        "cgroup ids on the container's writes"
    );
    let mut paths = CgroupPaths::new(&host.root);
    assert_eq!(
        paths.path_of(ino),
        Some(PathBuf::from(path.trim_start_matches('/')))
    );
    assert_eq!(
        paths.container_of_id(mine[0].call.cgroup_id),
        Some(containerd_ref(Runtime::Containerd, &id, &uid))
    );
    eprintln!(
        "{} moments from pid {pid} ({}), cgroup id {ino}: {path}",
        mine.len(),
        mine[0].comm()
    );
}
