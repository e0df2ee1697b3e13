//! Phase 4: phase 3's agent per Kubernetes node (a DaemonSet) whose sightings name pods,
//! containers and workloads instead of pids (`cgroup`, with the runtimes' naming in
//! `cgroup_names` → `pods`, joined in `attribution`), and which can select its targets in
//! Kubernetes terms (`selector`, `cli`). deploy/ holds the manifests and
//! the Grafana dashboard. With the `demo` feature, `run` traces a harness scenario on a cluster
//! faked on this machine (`testbed`: crun containers, a fake API server), as the comparison runs
//! every phase; the agent and collector that ship are built without it.
pub mod attribution;
pub mod cgroup;
mod cgroup_names;
pub mod cli;
pub mod pods;
#[cfg(feature = "demo")]
pub mod run;
mod selector;
#[cfg(feature = "demo")]
pub mod testbed;
