//! Who an event's process is in Kubernetes terms: its cgroup id → cgroup path → container id
//! (`cgroup`) → pod, container and workload (`pods`); and the reverse for target selection:
//! the processes of the selected pods' containers.

use crate::cgroup::{cgroup_of_pid, container_of, CgroupPaths};
use crate::pods::{PodIndex, PodMeta, Selector};
use phase_3_multi_node::proto::PodRef;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// An unknown cgroup is looked up again after this long: its pod may not be listed yet.
const RETRY_UNKNOWN: Duration = Duration::from_secs(1);

pub struct Attribution {
    cgroups: CgroupPaths,
    pods: PodIndex,
    known: HashMap<u64, PodRef>,
    unknown: HashMap<u64, Instant>,
}

fn pod_ref(m: PodMeta) -> PodRef {
    PodRef {
        namespace: m.namespace,
        pod: m.pod,
        container: m.container,
        workload: m.workload,
    }
}

impl Attribution {
    /// `cgroup2` is the cgroup v2 mount whose directory inodes are the eBPF cgroup ids.
    pub fn new(cgroup2: &Path, pods: PodIndex) -> Self {
        Self {
            cgroups: CgroupPaths::new(cgroup2),
            pods,
            known: HashMap::new(),
            unknown: HashMap::new(),
        }
    }

    /// The pod and container of the process whose event carried `cgroup_id`.
    pub fn pod_of(&mut self, cgroup_id: u64) -> Option<PodRef> {
        if let Some(p) = self.known.get(&cgroup_id) {
            return Some(p.clone());
        }
        if self
            .unknown
            .get(&cgroup_id)
            .is_some_and(|t| t.elapsed() < RETRY_UNKNOWN)
        {
            return None;
        }
        let found = self
            .cgroups
            .container_of_id(cgroup_id)
            .and_then(|c| self.pods.by_container_id(&c.id))
            .map(pod_ref);
        match &found {
            Some(p) => {
                self.known.insert(cgroup_id, p.clone());
                self.unknown.remove(&cgroup_id);
            }
            None => {
                self.unknown.insert(cgroup_id, Instant::now());
            }
        }
        found
    }
}

/// The processes (on this node, from /proc) of the containers `selector` picks.
pub fn selected_pids(pods: &PodIndex, selector: &Selector) -> Vec<u32> {
    let ids: HashSet<String> = pods
        .select(selector)
        .into_iter()
        .filter_map(|c| c.container_id)
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .filter_map(|p| u32::try_from(p.ok()?.pid).ok())
        .filter(|&pid| {
            cgroup_of_pid(pid)
                .and_then(|p| container_of(&p.to_string_lossy()))
                .is_some_and(|c| ids.contains(&c.id))
        })
        .collect()
}
