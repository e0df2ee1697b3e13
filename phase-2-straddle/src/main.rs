use anyhow::{bail, Result};
use clap::Parser;
use phase_1_poc::cli::{exit_on_error, print_demo, run_live, AgentArgs};
use phase_2_straddle::{trace_scenario_phase2, Phase2};

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

fn main() {
    harness::component::run_if_component();
    let cli = Cli::parse();
    exit_on_error("phase-2-straddle", || {
        if cli.agent.is_demo() {
            demo(&cli.agent)
        } else {
            live(&cli.agent)
        }
    });
}

fn demo(args: &AgentArgs) -> Result<()> {
    let Some(sc) = harness::scenario::by_id(&args.scenario) else {
        bail!(
            "unknown scenario {:?}; `harness list` shows the catalogue",
            args.scenario
        )
    };
    println!(
        "phase 2 demo: {} ({}), {} calls of {} s, traced on every read and write",
        sc.id, sc.title, sc.calls, sc.seconds
    );
    let run = trace_scenario_phase2(&sc, &std::env::current_exe()?, &args.fingerprint())?;
    print_demo(
        &run,
        args.json.as_deref(),
        "transit: write → read; residence: read → write",
    )
}

fn live(args: &AgentArgs) -> Result<()> {
    args.check_targets()?;
    let phase2 = Phase2::start(
        &args.fingerprint(),
        args.comm.as_deref(),
        args.match_window(),
    )?;
    run_live(args, phase2, "reads and writes")
}
