//! S10's pods: node-a's pods and their containers as the fake API server lists them (plus one
//! of node-b's), and which of them the agent's selection picks.

use phase_4_k8s::cgroup::Runtime;
use phase_4_k8s::testbed::crun::random_ids;
use phase_4_k8s::testbed::plan::{self, ContainerPlan, Driver, PodPlan, Qos};

pub const NODE: &str = "node-a";
/// The agent's selection: namespace `audio`, label `app` one of these.
pub const NAMESPACE: &str = "audio";
pub const SELECTOR: &str = "app in (asr, mixer)";
pub const SELECTED_APPS: [&str; 2] = ["asr", "mixer"];

/// What the agent's selection picks (written out here, not through the crate's selector).
pub fn selected(pod: &PodPlan) -> bool {
    let app = pod
        .labels
        .iter()
        .find(|(k, _)| k == "app")
        .map(|(_, v)| v.as_str());
    pod.namespace == NAMESPACE && app.is_some_and(|a| SELECTED_APPS.contains(&a))
}

/// The pods of node-a (and one of node-b) and their containers, fresh ids each run.
pub fn plan() -> (Vec<PodPlan>, Vec<ContainerPlan>) {
    let uid = || random_ids().1;
    let id = || random_ids().0;
    let labels = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let owner = |kind: &str, name: &str| Some((kind.to_string(), name.to_string()));
    let asr_labels = labels(&[("app", "asr"), ("pod-template-hash", "6f7b9c8d54")]);
    let pods = vec![
        PodPlan {
            namespace: "audio".into(),
            name: "asr-6f7b9c8d54-k2x7p".into(),
            uid: uid(),
            node: NODE.into(),
            labels: asr_labels.clone(),
            owner: owner("ReplicaSet", "asr-6f7b9c8d54"),
            qos: Qos::Burstable,
            driver: Driver::Systemd,
            workload: "asr".into(),
        },
        PodPlan {
            namespace: "audio".into(),
            name: "asr-6f7b9c8d54-w9q4m".into(),
            uid: uid(),
            node: NODE.into(),
            labels: asr_labels.clone(),
            owner: owner("ReplicaSet", "asr-6f7b9c8d54"),
            qos: Qos::Burstable,
            driver: Driver::Systemd,
            workload: "asr".into(),
        },
        PodPlan {
            namespace: "audio".into(),
            name: "mixer-0".into(),
            uid: uid(),
            node: NODE.into(),
            labels: labels(&[
                ("app", "mixer"),
                ("statefulset.kubernetes.io/pod-name", "mixer-0"),
            ]),
            owner: owner("StatefulSet", "mixer"),
            qos: Qos::BestEffort,
            driver: Driver::Cgroupfs,
            workload: "mixer".into(),
        },
        PodPlan {
            namespace: "audio".into(),
            name: "mixer-1".into(),
            uid: uid(),
            node: NODE.into(),
            labels: labels(&[
                ("app", "mixer"),
                ("statefulset.kubernetes.io/pod-name", "mixer-1"),
            ]),
            owner: owner("StatefulSet", "mixer"),
            qos: Qos::Burstable,
            driver: Driver::Cgroupfs,
            workload: "mixer".into(),
        },
        PodPlan {
            namespace: "audio".into(),
            name: "asr-recorder".into(),
            uid: uid(),
            node: NODE.into(),
            labels: labels(&[("app", "asr"), ("role", "recorder")]),
            owner: None,
            qos: Qos::Guaranteed,
            driver: Driver::Systemd,
            workload: "asr-recorder".into(),
        },
        // Same label, another namespace: not selected.
        PodPlan {
            namespace: "archive".into(),
            name: "archiver".into(),
            uid: uid(),
            node: NODE.into(),
            labels: labels(&[("app", "asr")]),
            owner: None,
            qos: Qos::Guaranteed,
            driver: Driver::Cgroupfs,
            workload: "archiver".into(),
        },
        // The right namespace, another label: not selected.
        PodPlan {
            namespace: "audio".into(),
            name: "tts-5d8c7b6f4-q9w2e".into(),
            uid: uid(),
            node: NODE.into(),
            labels: labels(&[("app", "tts"), ("pod-template-hash", "5d8c7b6f4")]),
            owner: owner("ReplicaSet", "tts-5d8c7b6f4"),
            qos: Qos::BestEffort,
            driver: Driver::Systemd,
            workload: "tts".into(),
        },
        // On node-b, selected by labels, claiming the archiver's container (`podlist`): only
        // a client that asked for every node's pods would trace the archiver for it.
        PodPlan {
            namespace: "audio".into(),
            name: "asr-6f7b9c8d54-zz9tb".into(),
            uid: uid(),
            node: "node-b".into(),
            labels: asr_labels,
            owner: owner("ReplicaSet", "asr-6f7b9c8d54"),
            qos: Qos::Burstable,
            driver: Driver::Systemd,
            workload: "asr".into(),
        },
    ];
    let c = |pod, name: &str, runtime, component: Option<&str>| ContainerPlan {
        pod,
        name: name.into(),
        id: id(),
        runtime,
        component: component.map(str::to_string),
    };
    use Runtime::{Containerd, CriO};
    let containers = vec![
        c(0, "capture", Containerd, Some("c0-src")),
        c(0, "asr", Containerd, Some("c0-r1")),
        c(1, "capture", Containerd, Some("c1-src")),
        c(1, "asr", Containerd, Some("c1-r1")),
        c(2, "mixer", Containerd, Some("c0-r2")),
        c(3, "mixer", CriO, Some("c1-r2")),
        c(4, "recorder", Containerd, Some("c1-sink")),
        c(5, "archiver", Containerd, Some("c0-sink")),
        c(6, "tts", Containerd, None),
    ];
    (pods, containers)
}

/// The PodList the fake API server serves: the plan's, and node-b's pod with a container
/// whose id is the archiver's (the server drops it for a client that asks for node-a's pods
/// only).
pub fn podlist(pods: &[PodPlan], containers: &[ContainerPlan]) -> String {
    let archiver = containers.iter().find(|c| c.name == "archiver").unwrap();
    let claim = ContainerPlan {
        pod: pods.iter().position(|p| p.node != NODE).unwrap(),
        name: "asr".into(),
        component: None,
        ..archiver.clone()
    };
    let listed: Vec<ContainerPlan> = containers.iter().cloned().chain([claim]).collect();
    plan::podlist(pods, &listed)
}
