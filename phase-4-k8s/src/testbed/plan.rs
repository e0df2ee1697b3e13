//! Pods on paper: what a faked node runs (pods, their containers), the cgroups kubelet and the
//! runtimes would give those containers, and the PodList the API server would serve.

use crate::cgroup::Runtime;
use agent::schema::PodRef;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// How kubelet names a pod's cgroups.
#[derive(Clone, Copy, Debug)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

#[derive(Clone, Copy, Debug)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The cgroup level kubelet puts a pod of this class under (none for guaranteed).
    fn level(self) -> Option<&'static str> {
        match self {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        }
    }

    fn class(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    /// The controller owner: (kind, name).
    pub owner: Option<(String, String)>,
    pub qos: Qos,
    pub driver: Driver,
    /// The workload attribution must give.
    pub workload: String,
}

#[derive(Clone)]
pub struct ContainerPlan {
    /// Its pod, an index into the plan's pods.
    pub pod: usize,
    pub name: String,
    /// 64 hex.
    pub id: String,
    pub runtime: Runtime,
    /// The component process that joins it; `None`: the container's own process only.
    pub component: Option<String>,
}

impl ContainerPlan {
    /// `status.containerStatuses[].containerID`.
    pub fn status_id(&self) -> String {
        format!("{}://{}", self.runtime.scheme(), self.id)
    }

    /// The cgroup kubelet and the runtime would give it (cgroup_names.rs's module doc).
    pub fn cgroups_path(&self, pod: &PodPlan) -> String {
        let id = &self.id;
        match pod.driver {
            Driver::Systemd => {
                let uid_ = pod.uid.replace('-', "_");
                let prefix = match self.runtime {
                    Runtime::CriO => "crio",
                    Runtime::Docker => "docker",
                    Runtime::Containerd => "cri-containerd",
                };
                let pod_slice = match pod.qos.level() {
                    Some(q) => format!("kubepods-{q}.slice/kubepods-{q}-pod{uid_}.slice"),
                    None => format!("kubepods-pod{uid_}.slice"),
                };
                format!("/kubepods.slice/{pod_slice}/{prefix}-{id}.scope")
            }
            Driver::Cgroupfs => {
                let uid = &pod.uid;
                let leaf = match self.runtime {
                    Runtime::CriO => format!("crio-{id}"),
                    Runtime::Containerd | Runtime::Docker => id.clone(),
                };
                match pod.qos.level() {
                    Some(q) => format!("/kubepods/{q}/pod{uid}/{leaf}"),
                    None => format!("/kubepods/pod{uid}/{leaf}"),
                }
            }
        }
    }

    /// How the agent must name this container's processes.
    pub fn pod_ref(&self, pods: &[PodPlan]) -> PodRef {
        let p = &pods[self.pod];
        PodRef {
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
            container: self.name.clone(),
            workload: p.workload.clone(),
        }
    }
}

/// The PodList an API server holding `pods` serves, each pod with its `containers` (running
/// and ready). The server drops other nodes' pods for a client that asks for one node's.
pub fn podlist(pods: &[PodPlan], containers: &[ContainerPlan]) -> String {
    const IMAGE: &str = "docker.io/library/busybox:1.36";
    let items: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mine: Vec<&ContainerPlan> = containers.iter().filter(|c| c.pod == i).collect();
            let labels: BTreeMap<&str, &str> = p
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut metadata = json!({
                "name": p.name,
                "namespace": p.namespace,
                "uid": p.uid,
                "resourceVersion": format!("{}", 1000 + i),
                "creationTimestamp": "2025-06-01T19:02:37Z",
                "labels": labels,
            });
            if let Some((kind, name)) = &p.owner {
                metadata["ownerReferences"] = json!([{
                    "apiVersion": "apps/v1",
                    "kind": kind,
                    "name": name,
                    "uid": "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
                    "controller": true,
                    "blockOwnerDeletion": true,
                }]);
            }
            json!({
                "metadata": metadata,
                "spec": {
                    "nodeName": p.node,
                    "containers": mine.iter().map(|c| json!({
                        "name": c.name,
                        "image": IMAGE,
                    })).collect::<Vec<_>>(),
                },
                "status": {
                    "phase": "Running",
                    "qosClass": p.qos.class(),
                    "containerStatuses": mine.iter().map(|c| json!({
                        "name": c.name,
                        "containerID": c.status_id(),
                        "image": IMAGE,
                        "imageID": "docker.io/library/busybox@sha256:768e5c6f5cb6db0794eec98dc7a967f40631746c32232b78a3105fb946f3ab83",
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2025-06-01T19:02:40Z"}},
                    })).collect::<Vec<_>>(),
                },
            })
        })
        .collect();
    json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "2000"},
        "items": items,
    })
    .to_string()
}
