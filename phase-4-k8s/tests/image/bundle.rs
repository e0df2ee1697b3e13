//! crun bundles over the image's root filesystem, configured the way the manifests run its
//! two containers.

use anyhow::{Context, Result};
use phase_4_k8s::testbed::crun::Host;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The image's root filesystem, mounted by buildah; unmounted and its working container
/// removed on drop.
pub struct ImageRoot {
    container: String,
    pub path: PathBuf,
}

impl ImageRoot {
    pub fn mount(image: &str) -> Result<Self> {
        let container = buildah(&["from", "--pull=never", "--quiet", image])?;
        // Removed on drop from here on, if mounting fails too.
        let mut root = Self {
            container,
            path: PathBuf::new(),
        };
        root.path = PathBuf::from(buildah(&["mount", &root.container])?);
        Ok(root)
    }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        let _ = buildah(&["umount", &self.container]);
        let _ = buildah(&["rm", &self.container]);
    }
}

/// `buildah <args>`, its stdout's last line.
fn buildah(args: &[&str]) -> Result<String> {
    let out = Command::new("buildah")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("buildah {args:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().last().unwrap_or_default().trim().to_string())
}

/// What differs between the agent's and the collector's containers.
pub struct Workload<'a> {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub uid: u32,
    /// Capability names without `CAP_`, as the manifests give them.
    pub capabilities: &'a [&'a str],
    /// The DaemonSet's hostPID.
    pub host_pid: bool,
    /// (host path, container path, read-only).
    pub binds: Vec<(PathBuf, PathBuf, bool)>,
}

/// Writes a bundle in `dir` running `w` on the image's root filesystem, read-only, as its
/// pod's securityContext says: every capability dropped but `w.capabilities`, no privilege
/// escalation, its own mount, IPC, UTS and cgroup namespaces. It shares the host's network:
/// the fake API server and the collector listen on loopback, where a cluster has Services.
pub fn write(host: &Host, dir: &Path, root: &ImageRoot, w: &Workload) -> Result<()> {
    fs::create_dir_all(dir)?;
    host.crun_ok(&["spec", "--bundle", &dir.to_string_lossy()])?;
    let spec_path = dir.join("config.json");
    let mut spec: Value = serde_json::from_slice(&fs::read(&spec_path)?)?;
    spec["root"] = json!({ "path": root.path, "readonly": true });
    let caps: Vec<String> = w.capabilities.iter().map(|c| format!("CAP_{c}")).collect();
    spec["process"] = json!({
        "terminal": false,
        "user": { "uid": w.uid, "gid": w.uid },
        "args": w.args,
        "env": w.env,
        "cwd": "/",
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": []
        },
        "noNewPrivileges": true
    });
    let mut namespaces = vec![json!({"type": "mount"}), json!({"type": "ipc"})];
    namespaces.extend([json!({"type": "uts"}), json!({"type": "cgroup"})]);
    if !w.host_pid {
        namespaces.push(json!({"type": "pid"}));
    }
    spec["linux"]["namespaces"] = json!(namespaces);
    // No resources: crun 1.8's device filter needs CAP_SYS_RESOURCE in some sandboxes
    // (testbed::crun says more).
    spec["linux"].as_object_mut().unwrap().remove("resources");
    // The runtime's own /sys/fs/cgroup shows only the container's cgroup; the binds replace it.
    let mounts = spec["mounts"].as_array_mut().context("the spec's mounts")?;
    mounts.retain(|m| m["destination"] != "/sys/fs/cgroup");
    for (from, to, read_only) in &w.binds {
        let mode = if *read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": to, "type": "bind", "source": from,
            "options": ["rbind", mode, "nosuid", "nodev"]
        }));
    }
    fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}
