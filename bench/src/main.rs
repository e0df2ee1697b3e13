//! Whole-system benchmarks (BRIEF §7), every figure measured side by side in one run:
//! `cargo run --release -p bench -- pairs` (root) and `-- agent`. See BENCHMARKS.md for what each mode means.

mod agent;
mod pairs;

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
    },
    /// Phase 2's agent on one core: events decoded, matched and closed per second, and its
    /// memory with a second of 1000 calls open in the matching window.
    Agent,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.what {
        What::Pairs { rounds } => pairs::run(rounds),
        What::Agent => agent::run(),
    };
    if let Err(e) = result {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}
