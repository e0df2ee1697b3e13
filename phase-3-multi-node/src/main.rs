use agent::cli::exit_on_error;
use agent::log::LogArgs;
use clap::{Parser, Subcommand};
use phase_3_multi_node::cli::{run_agent, run_collector, AgentArgs, CollectorArgs};

/// Phase 3 of ebpf-audio-tracer: an agent per node runs phase 2's eBPF programs on that node's
/// targets and streams the moments' signatures and metadata (never audio) to a collector over
/// gRPC, with bounded buffering and exactly-once delivery. The collector aligns every node's
/// clock onto its own from NTP-style exchanges (offset, drift, and an error bound), matches
/// each moment across nodes and reports per hop: count, p50, p90, p99, max and, across nodes,
/// the error bound — as a table, JSON lines and Prometheus metrics.
///
/// Without a subcommand (in a build with the demo, the default) it runs the demo: scenario S9 on three "nodes" (network namespaces
/// joined by veth) with an agent per node whose clock is skewed on purpose. Needs root.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Trace this node's targets and stream their sightings to the collector.
    Agent(AgentArgs),
    /// Receive every node's sightings, align clocks, match across nodes, report.
    Collector(CollectorArgs),
}

/// The demo's node clocks: offsets within ±50 ms and drifts of tens of ppm, as unsynchronised
/// nodes are.
#[cfg(feature = "demo")]
fn demo_skew(node: &str) -> agent::clock::Skew {
    use agent::clock::Skew;
    match node {
        "b" => Skew {
            offset_ns: 37_500_000,
            ppm: 25.0,
            ..Skew::default()
        },
        "c" => Skew {
            offset_ns: -45_000_000,
            ppm: -30.0,
            ..Skew::default()
        },
        _ => Skew::default(),
    }
}

fn main() {
    // The demo's pipeline components and node agents run from this binary.
    #[cfg(feature = "demo")]
    {
        harness::component::run_if_component();
        phase_3_multi_node::run::run_if_agent();
    }
    let cli: Cli = agent::config::parse();
    exit_on_error("phase-3-multi-node", || cli.log.init());
    exit_on_error("phase-3-multi-node", || match &cli.command {
        Some(Command::Agent(a)) => run_agent(a),
        Some(Command::Collector(c)) => run_collector(c),
        #[cfg(not(feature = "demo"))]
        None => anyhow::bail!("give a subcommand: agent or collector (--help)"),
        #[cfg(feature = "demo")]
        None => {
            use phase_3_multi_node::run::trace_scenario_phase3;
            let sc = harness::scenario::s9();
            println!(
                "phase-3-multi-node demo: {} ({}), {} calls of {} s; node clocks skewed: b +37.5 ms +25 ppm, c −45 ms −30 ppm",
                sc.id, sc.title, sc.calls, sc.seconds
            );
            let run = trace_scenario_phase3(&sc, &std::env::current_exe()?, demo_skew)?;
            print!("\n{}", run.report());
            Ok(())
        }
    });
}
