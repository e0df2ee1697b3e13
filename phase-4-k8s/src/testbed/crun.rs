//! Real containers: busybox containers run by crun in cgroups named the way kubelet names them
//! under each cgroup driver.
//!
//! crun's cgroupfs manager creates whatever `cgroupsPath` it is given, so systemd-driver names
//! are made without systemd. On a hybrid host (v1 controllers, the unified hierarchy at
//! `/sys/fs/cgroup/unified`) crun refuses to run while the unified hierarchy has a controller
//! (hugetlb here); each crun call then runs in a private mount namespace where
//! `/sys/fs/cgroup` is the cgroup2 mount, so crun sees a v2 host and puts the container in the
//! unified hierarchy, which is what eBPF cgroup ids name.

use crate::cgroup::cgroup2_root;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whoever runs containers shares the `kubepods` trees at the hierarchy's root: one at a time,
/// across processes too (two test binaries, a test and the comparison), so that one's cleanup
/// never races another's containers for a parent cgroup (or leaves behind one the other made).
/// An exclusive flock, released when the file closes.
pub fn exclusive() -> Result<fs::File> {
    let path = std::env::temp_dir().join("ebpf-audio-tracer-containers.lock");
    let f = fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    f.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}

pub const SETUP: &str = "run `bash scripts/setup.sh`";

/// The host as the containers see it.
#[derive(Clone, Debug)]
pub struct Host {
    /// The unified hierarchy's mount point.
    pub root: PathBuf,
    /// Whether crun must be shown a v2 `/sys/fs/cgroup` in a mount namespace.
    pub hybrid: bool,
    pub busybox: PathBuf,
}

/// Checks that this runs as root with crun, unshare and a static busybox (one-line errors
/// naming scripts/setup.sh otherwise).
pub fn host() -> Result<Host> {
    ensure!(
        fs::metadata("/proc/self")?.uid() == 0,
        "running containers needs root"
    );
    for tool in ["crun", "unshare"] {
        ensure!(
            in_path(tool).is_some(),
            "{tool} is missing: {SETUP} (it installs crun and busybox-static)"
        );
    }
    let busybox = in_path("busybox")
        .with_context(|| format!("busybox is missing: {SETUP} (it installs busybox-static)"))?;
    ensure!(
        is_static(&busybox),
        "{} is dynamically linked, the container has no libraries: {SETUP} (busybox-static)",
        busybox.display()
    );
    let root = cgroup2_root().context("no cgroup2 hierarchy is mounted (a v1-only host)")?;
    Ok(Host {
        hybrid: root != Path::new("/sys/fs/cgroup"),
        root,
        busybox,
    })
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

    /// Runs crun, its stdout if it succeeds.
    pub fn crun_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .crun(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("crun {args:?}"))?;
        ensure!(
            out.status.success(),
            "crun {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A 64-hex container id and a pod uid, fresh for each call.
pub fn random_ids() -> (String, String) {
    // The kernel makes a fresh UUID on every read of this file.
    let uuid = || {
        fs::read_to_string("/proc/sys/kernel/random/uuid")
            .expect("reading /proc/sys/kernel/random/uuid")
            .trim()
            .to_string()
    };
    let id = format!("{}{}", uuid(), uuid()).replace('-', "");
    (id, uuid())
}

/// One crun container and everything it leaves behind, removed on drop (panics included).
pub struct Container {
    host: Host,
    pub name: String,
    bundle: PathBuf,
    /// `cgroupsPath` without its leading `/`.
    pub cgroup: String,
    /// Cgroup directories that did not exist before, deepest last.
    made_dirs: Vec<PathBuf>,
}

impl Container {
    /// Prepares a bundle: a busybox rootfs (plus `files`) and a config running `args` in the
    /// cgroup `cgroups_path`.
    pub fn new(
        host: &Host,
        cgroups_path: &str,
        args: &[&str],
        files: &[(&str, &[u8])],
    ) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "eat-container-{}-{}",
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
        // From here on, dropping it cleans up whatever was made.
        let c = Self {
            host: host.clone(),
            name,
            bundle,
            cgroup,
            made_dirs,
        };
        let _ = fs::remove_dir_all(&c.bundle);
        let bin = c.bundle.join("rootfs/bin");
        fs::create_dir_all(&bin)?;
        fs::copy(&host.busybox, bin.join("busybox"))?;
        for applet in ["sh", "sleep", "cat", "dd"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        for (path, bytes) in files {
            fs::write(c.bundle.join("rootfs").join(path), bytes)?;
        }
        host.crun_ok(&["spec", "--bundle", &c.bundle()])?;
        let spec_path = c.bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&spec_path)?)?;
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = false.into();
        spec["linux"]["cgroupsPath"] = cgroups_path.into();
        // No resources: the spec's device rules make crun 1.8 load an eBPF device filter after
        // raising RLIMIT_MEMLOCK, which fails without CAP_SYS_RESOURCE (some sandboxes).
        if let Some(linux) = spec["linux"].as_object_mut() {
            linux.remove("resources");
        }
        fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(c)
    }

    fn bundle(&self) -> String {
        self.bundle.to_string_lossy().into_owned()
    }

    /// Runs `crun <args>` with its errors in a file, to name them if it fails.
    fn crun_quiet(&self, args: &[&str], stdout: Stdio) -> Result<()> {
        let err = self.bundle.join("crun.err");
        let status = self
            .host
            .crun(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(fs::File::create(&err)?)
            .status()?;
        if !status.success() {
            bail!(
                "crun {} {}: {}",
                args[0],
                self.name,
                fs::read_to_string(&err).unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    /// `crun run -d`: the container runs with no stdio.
    pub fn run(&self) -> Result<()> {
        self.crun_quiet(
            &["run", "-d", "--bundle", &self.bundle(), &self.name],
            Stdio::null(),
        )
    }

    /// `crun create`: the container's process waits to be started, its stdout is `stdout`.
    pub fn create(&self, stdout: std::io::PipeWriter) -> Result<()> {
        self.crun_quiet(
            &["create", "--bundle", &self.bundle(), &self.name],
            stdout.into(),
        )
    }

    pub fn start(&self) -> Result<()> {
        self.host.crun_ok(&["start", &self.name]).map(drop)
    }

    /// The container's init pid, from `crun state`.
    pub fn pid(&self) -> Result<u32> {
        let state: serde_json::Value =
            serde_json::from_str(&self.host.crun_ok(&["state", &self.name])?)?;
        let pid = state["pid"].as_u64().context("crun state has no pid")?;
        Ok(pid as u32)
    }

    /// Its cgroup's directory in the unified hierarchy.
    pub fn cgroup_dir(&self) -> PathBuf {
        self.host.root.join(&self.cgroup)
    }
}

impl Drop for Container {
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

/// Processes moved into containers' cgroups (only the cgroup: not the container's mount, pid,
/// network or other namespaces; attribution uses nothing else). Normally they have exited by
/// the end; on drop any that still run (still in one of those cgroups) are moved back to the
/// root cgroup and killed, so that the containers' cgroups can be removed: drop it before the
/// containers.
pub struct Joined {
    root: PathBuf,
    /// (pid, its container's cgroup, relative to the root).
    pids: Vec<(u32, String)>,
}

impl Joined {
    pub fn new(host: &Host) -> Self {
        Self {
            root: host.root.clone(),
            pids: Vec::new(),
        }
    }

    /// Moves `pid` (every thread of it) into `container`'s cgroup.
    pub fn join(&mut self, pid: u32, container: &Container) -> Result<()> {
        self.pids.push((pid, container.cgroup.clone()));
        let procs = container.cgroup_dir().join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", procs.display()))
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        for (pid, cgroup) in &self.pids {
            let line = format!("0::/{cgroup}");
            let still = fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|t| t.lines().any(|l| l == line));
            if still {
                let _ = fs::write(self.root.join("cgroup.procs"), pid.to_string());
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}
