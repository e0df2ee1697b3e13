//! Phase 4 (in progress, issue 8): an agent per Kubernetes node (a DaemonSet) whose sightings
//! name pods, containers and workloads instead of pids, and the manifests, metrics and
//! dashboard to run it.
pub mod attribution;
pub mod cgroup;
pub mod cli;
pub mod pods;
