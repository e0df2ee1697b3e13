use agent::cli::{exit_on_error, Phase, TraceArgs};
use agent::log::LogArgs;
use clap::Parser;
use phase_2_straddle::{start_without_tls, Phase2};

/// Phase 2 of ebpf-audio-tracer: eBPF programs on every read and write path (write, writev,
/// sendto, sendmsg, read, readv, recvfrom, recvmsg) recognise moments of audio in what target
/// processes move, carrying scan state per flow so that a moment split over calls is still
/// found. The agent matches each moment as a tree of hops — transit (write → read of the same
/// pipe or socket) and residence (read → write inside a process) — and reports per hop: count,
/// p50, p90, p99, max. On TLS links it reads the plaintext at OpenSSL (libssl.so.3:
/// SSL_write, SSL_write_ex, SSL_read, SSL_read_ex) in each target process.
///
/// With neither --pid nor --comm (in a build with the demo, the default) it runs the demo on a
/// harness scenario (default S1). Needs root.
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
    /// Do not probe OpenSSL: TLS links are then seen only as ciphertext.
    #[arg(long)]
    no_tls: bool,
}

fn main() {
    // The demo's pipeline components run from this binary.
    #[cfg(feature = "demo")]
    harness::component::run_if_component();
    let cli: Cli = agent::config::parse();
    let phase: Phase<Phase2> = Phase {
        name: "phase-2-straddle",
        hooks: "reads and writes",
        hops: "transit: write → read; residence: read → write",
        start: if cli.no_tls {
            start_without_tls
        } else {
            Phase2::start
        },
    };
    exit_on_error(phase.name, || cli.log.init());
    exit_on_error(phase.name, || {
        #[cfg(feature = "demo")]
        return harness::demo::run_phase(
            &cli.agent,
            &cli.demo,
            &phase,
            phase_2_straddle::demo::OBSERVES,
        );
        #[cfg(not(feature = "demo"))]
        agent::cli::run_phase(&cli.agent, &phase)
    });
}
