use clap::{Parser, Subcommand};
use phase_1_poc::cli::exit_on_error;
use phase_3_multi_node::cli::{run_collector, CollectorArgs};
use phase_4_k8s::cli::{run_agent, AgentArgs};

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
}

#[derive(Subcommand)]
enum Command {
    /// Trace this node's selected pods (and --pid/--comm targets); stream to the collector.
    Agent(AgentArgs),
    /// Phase 3's collector: match across nodes, report per workload hop.
    Collector(CollectorArgs),
}

fn main() {
    harness::component::run_if_component();
    let cli = Cli::parse();
    exit_on_error("phase-4-k8s", || match &cli.command {
        Command::Agent(a) => run_agent(a),
        Command::Collector(c) => run_collector(c),
    });
}
