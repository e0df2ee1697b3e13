//! A Kubernetes cluster faked on this machine, for the phase-4 tests (S10, containers, pods)
//! and for phase 4 on the scenario catalogue ([`crate::run`], which `bench compare` runs):
//! real crun containers in cgroups named the way kubelet names them ([`crun`]), pods planned
//! around them ([`plan`]) and a fake API server listing those pods ([`api`]).
//!
//! It is library code, not `tests/common`, because another crate (bench) runs it, as phase 3's
//! runner is; and not behind a feature, which each of this crate's own tests would then have
//! to turn on through a dev-dependency on itself. It adds no crate the agent's build did not
//! already have (serde_json and tokio's io-util come with kube), and the agent never calls it.
//! Running it needs root, crun, unshare and busybox-static (scripts/setup.sh).

pub mod api;
pub mod crun;
pub mod plan;

use anyhow::Result;
use api::FakeApi;
use crun::{Container, Host, Joined};
use plan::{ContainerPlan, PodPlan};
use std::path::{Path, PathBuf};

/// Planned containers running (each a busybox `sleep 3600` in its kubelet-named cgroup), an
/// API server listing the planned pods, and a kubeconfig that points at it. Dropping it
/// kills the processes still in the containers and removes the containers.
pub struct FakeCluster {
    /// Dropped first: the processes that joined containers, then the containers.
    pub joined: Joined,
    /// One per planned container, in the plan's order.
    pub containers: Vec<Container>,
    pub api: FakeApi,
    /// For an agent started with `KUBECONFIG=<it>`.
    pub kubeconfig: PathBuf,
    /// The API server's.
    _runtime: tokio::runtime::Runtime,
}

impl FakeCluster {
    /// Runs a container per `containers` plan and serves `podlist` (usually
    /// [`plan::podlist`] of the plan); the kubeconfig is written into `dir`. Hold
    /// [`crun::exclusive`] meanwhile.
    pub fn start(
        host: &Host,
        pods: &[PodPlan],
        containers: &[ContainerPlan],
        podlist: &str,
        dir: &Path,
    ) -> Result<Self> {
        // All made before any runs: a parent cgroup they share is then removed by the last
        // one dropped.
        let made = containers
            .iter()
            .map(|c| Container::new(host, &c.cgroups_path(&pods[c.pod]), &["sleep", "3600"], &[]))
            .collect::<Result<Vec<_>>>()?;
        for c in &made {
            c.run()?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let api = runtime.block_on(FakeApi::start(podlist))?;
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        Ok(Self {
            joined: Joined::new(host),
            containers: made,
            api,
            kubeconfig,
            _runtime: runtime,
        })
    }

    /// Moves `pid` into the cgroup of container `i` (of the plan).
    pub fn join(&mut self, pid: u32, i: usize) -> Result<()> {
        self.joined.join(pid, &self.containers[i])
    }

    /// Sets the environment of an agent of node `node` started by `cmd`, as the DaemonSet's
    /// pod gives it: its node's name from the downward API, a client configuration (this API
    /// server's, not any cluster the machine may be in).
    pub fn agent_env(&self, cmd: &mut std::process::Command, node: &str) {
        cmd.env(crate::pods::NODE_NAME_ENV, node)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT");
    }
}
