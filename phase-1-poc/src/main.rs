use anyhow::{bail, Result};
use clap::Parser;
use phase_1_poc::cli::{exit_on_error, print_demo, run_live, AgentArgs};
use phase_1_poc::{trace_scenario_phase1, Phase1};

/// Phase 1 of ebpf-audio-tracer: an eBPF program on write() recognises moments of audio in what
/// target processes write; this agent matches the same moment across processes and reports the
/// latency of each hop (writer → next writer): count, p50, p90, p99, max.
///
/// With neither --pid nor --comm it runs the demo: the harness starts a real pipeline
/// (source → relay → relay → sink over pipes, real speech), the tracer follows it, and the hop
/// table is printed next to the ground truth the pipeline recorded. Needs root.
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() {
    harness::component::run_if_component();
    let cli = Cli::parse();
    exit_on_error("phase-1-poc", || {
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
        "phase 1 demo: {} ({}), {} calls of {} s, traced on write()",
        sc.id, sc.title, sc.calls, sc.seconds
    );
    let run = trace_scenario_phase1(&sc, &std::env::current_exe()?, &args.fingerprint())?;
    print_demo(&run, args.json.as_deref(), "write → next write")
}

fn live(args: &AgentArgs) -> Result<()> {
    args.check_targets()?;
    run_live(
        args,
        Phase1::start(
            &args.fingerprint(),
            args.comm.as_deref(),
            args.match_window(),
        )?,
        "write()",
    )
}
