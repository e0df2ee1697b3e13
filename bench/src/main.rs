//! Whole-system benchmarks (BENCHMARKS.md holds their results), every figure measured side by side in one run:
//! `cargo run --release -p bench -- pairs` (root), `-- agent`, `-- collector` and `-- scale`
//! (root); the agent's throughput, in-process, by criterion: `cargo bench -p bench`. See
//! BENCHMARKS.md for what each mode means.

mod collector;
pub mod compare;
mod pairs;
mod scale;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of every phase's kernel side (run as root)")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Cost of a write+read pair through a pipe: untraced, loaded but not a target, the copy
    /// floor, and the scan — per phase, size and content.
    Pairs {
        /// Rounds of every mode (loads included); medians are over all batches of all rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Time inside the eBPF programs per pair instead of the wall clock (sets
        /// kernel.bpf_stats_enabled while it runs).
        #[arg(long)]
        program_time: bool,
        /// Only these phases (comma-separated: phase-1-poc, phase-2-straddle).
        #[arg(long, value_delimiter = ',')]
        phases: Vec<String>,
    },
    /// Phase 2's agent: its memory with a second of 1000 calls open in the matching window (its
    /// throughput on one core is criterion's: `cargo bench -p bench --bench agent`).
    Agent,
    /// Phase 3's collector in this process at full rate: synthetic batches through its gRPC
    /// service, matching, hop statistics and metrics; RSS and records/s at checkpoints.
    Collector {
        /// Hop records to take.
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// Print RSS and rate every this many records.
        #[arg(long, default_value_t = 1_000_000)]
        checkpoint: u64,
        /// Also keep every latency per hop in a vector, sorting a copy at each report, as the
        /// hop statistics did before they were histograms.
        #[arg(long)]
        vec_baseline: bool,
        /// Shard the traffic by signature over this many collectors, as agents do, and time
        /// each (no checkpoints, no baseline).
        #[arg(long)]
        replicas: Option<usize>,
    },
    /// Every phase on the whole scenario catalogue and S9: which scenarios each passes, its
    /// figures, and its overhead; writes the comparison page.
    Compare {
        #[arg(long, default_value = "docs/phases/comparison.md")]
        out: std::path::PathBuf,
        /// Only these scenarios (comma-separated ids; the CI subset), without the overhead
        /// measurement.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
    },
    /// Concurrent calls in real time through a 3-hop chain of real processes under phase 2:
    /// moments emitted vs received, agent CPU and RSS, and the score.
    Scale {
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        /// Audio per call, sent in real time.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// No tracer: the components alone, scored with the oracle (what the machine carries
        /// without tracing, and the scorer's time).
        #[arg(long)]
        untraced: bool,
    },
}

fn main() {
    // The scale bench launches its pipeline's components from this binary.
    harness::component::run_if_component();
    // So does the comparison, and phase 3's and phase 4's agents.
    phase_3_multi_node::run::run_if_agent();
    phase_4_k8s::run::run_if_agent();
    let cli = Cli::parse();
    let result = match cli.what {
        What::Pairs {
            rounds,
            program_time,
            phases,
        } => pairs::run(rounds, program_time, &phases),
        What::Agent => bench::agent::memory(),
        What::Collector {
            records,
            checkpoint,
            vec_baseline,
            replicas,
        } => match replicas {
            Some(n) => collector::sharded(records, n.max(1)),
            None => collector::run(records, checkpoint.max(1), vec_baseline),
        },
        What::Compare { out, scenarios } => compare::write_page(&out, &scenarios),
        What::Scale {
            calls,
            seconds,
            untraced,
        } => scale::run(calls, seconds, untraced),
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}
