use agent::cli::exit_on_error;
use agent::log::LogArgs;
use clap::{Parser, Subcommand};
use phase_3_multi_node::cli::{run_collector, CollectorArgs};
use phase_4_k8s::cli::{run_agent, PodAgentArgs};

/// Phase 4 of ebpf-audio-tracer: phase 3's agent and collector for Kubernetes. The agent (a
/// DaemonSet: one per node) watches the pods of its node (`NODE_NAME` from the downward API),
/// names every traced process by namespace, pod, container and owning workload (from its
/// cgroup), and can pick its targets in Kubernetes terms; the collector reports hops between
/// workloads. deploy/ holds the manifests and the Grafana dashboard. Needs root (or the
/// DaemonSet's capabilities).
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Trace this node's selected pods (and --pid/--comm targets); stream to the collector.
    Agent(Box<PodAgentArgs>),
    /// Phase 3's collector: match across nodes, report per workload hop.
    Collector(Box<CollectorArgs>),
    /// A harness scenario on a cluster faked on this machine: each component in a crun
    /// container of its own pod, a fake API server, an agent per node selecting those pods
    /// (needs root, crun and busybox-static: scripts/setup.sh). Not in the shipped image.
    #[cfg(feature = "demo")]
    Scenario {
        /// Its id (`harness list`; S9 runs on three nodes, clocks unskewed).
        #[arg(default_value = "S1")]
        id: String,
    },
}

fn main() {
    // The scenario's pipeline components and agents run from this binary.
    #[cfg(feature = "demo")]
    {
        harness::component::run_if_component();
        phase_4_k8s::run::run_if_agent();
    }
    // The DaemonSet gives the node's name as NODE_NAME (downward API).
    let cli: Cli = agent::config::parse_with_aliases(&[("node", phase_4_k8s::pods::NODE_NAME_ENV)]);
    exit_on_error("phase-4-k8s", || cli.log.init());
    exit_on_error("phase-4-k8s", || match &cli.command {
        Command::Agent(a) => run_agent(a),
        Command::Collector(c) => run_collector(c),
        #[cfg(feature = "demo")]
        Command::Scenario { id } => {
            use agent::clock::Skew;
            use anyhow::Context;
            use phase_4_k8s::run::trace_scenario_phase4;
            let sc = harness::scenario::by_id(id)
                .with_context(|| format!("unknown scenario {id:?}; `harness list` shows them"))?;
            let run = trace_scenario_phase4(&sc, &std::env::current_exe()?, |_| Skew::default())?;
            print!("{}", run.cluster.report());
            println!(
                "sightings not named by their component's pod: {} {:?}",
                run.misattributed, run.misattributed_examples
            );
            Ok(())
        }
    });
}
