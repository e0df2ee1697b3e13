use agent::log::LogArgs;
use agent::schema;
use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use harness::score::{self, CallTruthIndex, Observes, SAME_NODE_BAR};
use harness::{oracle, run, scenario};
use shared::FingerprintConfig;
use std::path::PathBuf;

/// Scenario harness of ebpf-audio-tracer: runs real audio pipelines, scores tracers against the
/// ground truth the pipelines record, and runs the smallest-window study.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Lists the scenario catalogue.
    List,
    /// Runs one scenario and scores the oracle tracer (what a perfect tracer would report).
    Run {
        /// Scenario id (S1, S2, ...).
        #[arg(long, default_value = "S1")]
        scenario: String,
        /// Writes the hop records as JSON lines (docs/results-schema.md) to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The smallest-window study: repeats of windows of 16…256 bytes in real speech and hard
    /// synthetic audio, printed as Markdown tables (docs/fingerprint.md).
    Collisions,
}

fn main() -> Result<()> {
    harness::component::run_if_component();
    let cli = Cli::parse();
    cli.log.init()?;
    match cli.command {
        Command::List => {
            for s in scenario::catalogue() {
                println!("{:4} {}", s.id, s.title);
            }
        }
        Command::Run { scenario: id, json } => {
            let Some(sc) = scenario::by_id(&id) else {
                bail!("unknown scenario {id:?}; `harness list` shows the catalogue")
            };
            let dir = run::workdir(sc.id)?;
            tracing::info!("running {} ({}) in {}", sc.id, sc.title, dir.display());
            let gt = run::run(&sc, &std::env::current_exe()?, &dir, |_| Ok(()))?;
            let cfg = FingerprintConfig::default();
            let calls = CallTruthIndex::build(&gt, cfg)?;
            let records = oracle::records(&gt, &calls, Observes::ALL);
            if let Some(path) = json {
                schema::write_jsonl(
                    &mut std::io::BufWriter::new(std::fs::File::create(path)?),
                    &records,
                )?;
            }
            let s = score::score_indexed(&gt, &calls, &records, Observes::ALL, cfg, "oracle");
            print!("{s}");
            let misses = s.misses(&SAME_NODE_BAR);
            if !misses.is_empty() {
                bail!("{} misses the bar: {}", sc.id, misses.join("; "));
            }
        }
        Command::Collisions => print!("{}", harness::collisions::study()?),
    }
    Ok(())
}
