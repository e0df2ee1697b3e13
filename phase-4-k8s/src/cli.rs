//! Phase 4's agent: phase 3's, plus pods.

use crate::attribution::{selected_pids, Attribution};
use crate::cgroup::cgroup2_root;
use crate::pods::{self, Selector};
use clap::Args;
use phase_3_multi_node::cli::{run_agent_with, AgentHooks};

/// Phase 3's agent flags and the Kubernetes target selection.
#[derive(Args, Debug, Clone)]
pub struct PodAgentArgs {
    #[command(flatten)]
    pub agent: phase_3_multi_node::cli::AgentArgs,
    /// Trace the pods of this namespace (repeatable: any of them).
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Trace the pods matching this label selector (`app=asr,tier!=debug`).
    #[arg(long, value_name = "LABELS")]
    pub selector: Option<String>,
    /// Trace only this container of the selected pods (repeatable: any of them).
    #[arg(long, value_name = "NAME")]
    pub container: Vec<String>,
}

impl PodAgentArgs {
    fn selects_pods(&self) -> bool {
        !self.namespace.is_empty() || self.selector.is_some() || !self.container.is_empty()
    }
}

/// The agent: phase 3's, with every event named by its pod and, given a selection, the
/// selected pods' processes as targets (looked up every second). With --pid or --comm alone it
/// runs without a cluster too: its sightings are then not named by pod.
pub fn run_agent(args: &PodAgentArgs) -> anyhow::Result<()> {
    fn strs(names: &[String]) -> Vec<&str> {
        names.iter().map(String::as_str).collect()
    }
    let selector = Selector::new(
        &strs(&args.namespace),
        args.selector.as_deref(),
        &strs(&args.container),
    )?;
    let node = &args.agent.node;
    let cgroup2 = cgroup2_root().ok_or_else(|| {
        anyhow::anyhow!("no cgroup v2 hierarchy mounted: pods cannot be told apart")
    })?;
    // The pod watch runs on a runtime of its own for the agent's lifetime.
    let k8s = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let client = match k8s.block_on(pods::client()) {
        Ok(client) => client,
        Err(e) if !args.selects_pods() => {
            tracing::warn!("{e:#}: tracing without pod names");
            k8s.shutdown_background();
            return run_agent_with(&args.agent, AgentHooks::default());
        }
        Err(e) => return Err(e),
    };
    let index = k8s.block_on(async {
        let index = pods::start(client, node).await?;
        if !index.wait_synced(std::time::Duration::from_secs(30)).await {
            let late = format!("the pods of node {node} were not listed within 30 s");
            // Targets by pid or name do not wait for the pods: only their names do.
            match args.selects_pods() {
                true => anyhow::bail!("{late}"),
                false => tracing::warn!("{late}: tracing, naming pods once they are"),
            }
        }
        anyhow::Ok(index)
    })?;
    let mut attribution = Attribution::new(&cgroup2, index.clone());
    let hooks = AgentHooks {
        annotate: Some(Box::new(move |e| attribution.pod_of(e.call.cgroup_id))),
        targets: args
            .selects_pods()
            .then(|| -> Box<dyn FnMut() -> anyhow::Result<Vec<u32>>> {
                Box::new(move || Ok(selected_pids(&index, &selector)))
            }),
    };
    let result = run_agent_with(&args.agent, hooks);
    k8s.shutdown_background();
    result
}
