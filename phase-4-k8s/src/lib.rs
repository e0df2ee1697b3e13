//! Phase 4: phase 3's agent per Kubernetes node (a DaemonSet) whose sightings name pods,
//! containers and workloads instead of pids (`cgroup` → `pods`, joined in `attribution`), and
//! which can select its targets in Kubernetes terms (`cli`). deploy/ holds the manifests and
//! the Grafana dashboard. `run` traces a harness scenario on a cluster faked on this machine
//! (`testbed`: crun containers, a fake API server), as the comparison runs every phase.
pub mod attribution;
pub mod cgroup;
mod cgroup_names;
pub mod cli;
pub mod pods;
pub mod run;
mod selector;
pub mod testbed;
