use agent::cli::{exit_on_error, Phase, TraceArgs};
use agent::log::LogArgs;
use clap::Parser;
use phase_1_poc::Phase1;

/// Phase 1 of ebpf-audio-tracer: an eBPF program on write() recognises moments of audio in what
/// target processes write; this agent matches the same moment across processes and reports the
/// latency of each hop (writer → next writer): count, p50, p90, p99, max.
///
/// With neither --pid nor --comm (in a build with the demo, the default) it runs the demo: the harness starts a real pipeline
/// (source → relay → relay → sink over pipes, real speech), the tracer follows it, and the hop
/// table is printed next to the ground truth the pipeline recorded. Needs root.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    agent: TraceArgs,
    #[command(flatten)]
    log: LogArgs,
    #[cfg(feature = "demo")]
    #[command(flatten)]
    demo: harness::demo::DemoArgs,
}

const PHASE: Phase<Phase1> = Phase {
    name: "phase-1-poc",
    hooks: "write()",
    hops: "write → next write",
    start: Phase1::start,
};

fn main() {
    // The demo's pipeline components run from this binary.
    #[cfg(feature = "demo")]
    harness::component::run_if_component();
    let cli: Cli = agent::config::parse();
    exit_on_error(PHASE.name, || cli.log.init());
    exit_on_error(PHASE.name, || {
        #[cfg(feature = "demo")]
        return harness::demo::run_phase(
            &cli.agent,
            &cli.demo,
            &PHASE,
            phase_1_poc::demo::OBSERVES,
        );
        #[cfg(not(feature = "demo"))]
        agent::cli::run_phase(&cli.agent, &PHASE)
    });
}
