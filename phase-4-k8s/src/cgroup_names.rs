//! The container (runtime, id, pod uid) a cgroup path belongs to, read the way kubelet and the
//! container runtimes name cgroups.
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
}
