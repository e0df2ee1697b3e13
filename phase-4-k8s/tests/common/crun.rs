//! Real containers for the tests: busybox containers run by crun in cgroups named the way
//! kubelet names them under each cgroup driver.
//!
//! crun's cgroupfs manager creates whatever `cgroupsPath` it is given, so systemd-driver names
//! are made without systemd. On a hybrid host (v1 controllers, the unified hierarchy at
//! `/sys/fs/cgroup/unified`) crun refuses to run while the unified hierarchy has a controller
//! (hugetlb here); each crun call then runs in a private mount namespace where
//! `/sys/fs/cgroup` is the cgroup2 mount, so crun sees a v2 host and puts the container in the
//! unified hierarchy, which is what eBPF cgroup ids name.

use phase_4_k8s::cgroup::cgroup2_root;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The tests that run containers share the `kubepods` trees at the hierarchy's root: one at a
/// time, across processes too (two test binaries), so that one's cleanup never races another's
/// containers for a parent cgroup (or leaves behind one the other made). An exclusive flock,
/// released when the file closes.
pub fn exclusive() -> fs::File {
    let f = fs::File::create(std::env::temp_dir().join("ebpf-audio-tracer-containers.lock"))
        .expect("creating the lock file");
    f.lock().expect("locking the lock file");
    f
}

pub const SETUP: &str = "run `bash scripts/setup.sh`";

/// The host as the tests see it.
pub struct Host {
    /// The unified hierarchy's mount point.
    pub root: PathBuf,
    /// Whether crun must be shown a v2 `/sys/fs/cgroup` in a mount namespace.
    pub hybrid: bool,
    pub busybox: PathBuf,
}

/// Checks that this runs as root with crun, unshare and a static busybox (one-line failures
/// naming scripts/setup.sh otherwise).
pub fn host() -> Host {
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

pub fn in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl Host {
    /// `crun --cgroup-manager=cgroupfs <args>`, in a mount namespace on a hybrid host.
    pub fn crun(&self, args: &[&str]) -> Command {
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

    pub fn crun_ok(&self, args: &[&str]) -> String {
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
pub fn random_ids() -> (String, String) {
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
pub struct Container<'h> {
    host: &'h Host,
    pub name: String,
    bundle: PathBuf,
    /// `cgroupsPath` without its leading `/`.
    pub cgroup: String,
    /// Cgroup directories that did not exist before, deepest last.
    made_dirs: Vec<PathBuf>,
}

impl<'h> Container<'h> {
    /// Prepares a bundle: a busybox rootfs (plus `files`) and a config running `args` in the
    /// cgroup `cgroups_path`.
    pub fn new(host: &'h Host, cgroups_path: &str, args: &[&str], files: &[(&str, &[u8])]) -> Self {
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
    pub fn run(&self) {
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
    pub fn create(&self, stdout: std::io::PipeWriter) {
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

    pub fn start(&self) {
        self.host.crun_ok(&["start", &self.name]);
    }

    /// The container's init pid, from `crun state`.
    pub fn pid(&self) -> u32 {
        let state: serde_json::Value =
            serde_json::from_str(&self.host.crun_ok(&["state", &self.name])).unwrap();
        state["pid"].as_u64().expect("crun state has a pid") as u32
    }

    /// Its cgroup's directory in the unified hierarchy.
    pub fn cgroup_dir(&self) -> PathBuf {
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
