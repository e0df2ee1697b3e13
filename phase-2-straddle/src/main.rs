use clap::Parser;
use phase_1_poc::cli::{exit_on_error, run_phase, AgentArgs, Phase};
use phase_2_straddle::{Phase2, OBSERVES};

/// Phase 2 of ebpf-audio-tracer: eBPF programs on every read and write path (write, writev,
/// sendto, sendmsg, read, readv, recvfrom, recvmsg) recognise moments of audio in what target
/// processes move, carrying scan state per flow so that a moment split over calls is still
/// found. The agent matches each moment as a tree of hops — transit (write → read of the same
/// pipe or socket) and residence (read → write inside a process) — and reports per hop: count,
/// p50, p90, p99, max.
///
/// With neither --pid nor --comm it runs the demo on a harness scenario (default S1). Needs root.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

const PHASE: Phase<Phase2> = Phase {
    name: "phase-2-straddle",
    hooks: "reads and writes",
    hops: "transit: write → read; residence: read → write",
    observes: OBSERVES,
    start: Phase2::start,
};

fn main() {
    harness::component::run_if_component();
    let cli = Cli::parse();
    exit_on_error(PHASE.name, || run_phase(&cli.agent, &PHASE));
}
