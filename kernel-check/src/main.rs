//! Loads every phase's eBPF programs into the running kernel and prints, for each, the
//! instructions the kernel's verifier walked to accept it; fails when a program is rejected or
//! walks more than the limit. Phases 3 and 4 load phase 2's programs.
//!
//! Verification depends on the cluster-wide settings, which the programs read as constants, so
//! each phase is loaded at the narrowest, the default and the widest window.
//!
//! One line per program: `MATRIX <phase> window=<bytes> <program> <verified instructions>`, or
//! `MATRIX <phase> window=<bytes> rejected: <the error>`; the kernel matrix
//! (scripts/kernel-matrix.sh) collects them from every kernel.

use anyhow::Result;
use clap::Parser;
use shared::{FingerprintConfig, WINDOW_MAX, WINDOW_MIN};
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Loads every phase's eBPF programs and prints each one's verification cost")]
struct Args {
    /// Most verified instructions one program may take: 20 times below the verifier's
    /// 1 000 000, the headroom that absorbs a stable kernel's verifier change.
    #[arg(long, default_value_t = 50_000)]
    limit: u32,
}

type Programs = Vec<(String, Option<u32>)>;

fn load(phase: &str, cfg: &FingerprintConfig) -> Result<Programs> {
    Ok(match phase {
        "phase-1-poc" => phase_1_poc::tracer::Tracer::start(cfg, None)?.verified_instructions(),
        _ => phase_2_straddle::tracer::Tracer::start(cfg, None)?.verified_instructions(),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut failed = false;
    for phase in ["phase-1-poc", "phase-2-straddle"] {
        for window in [WINDOW_MIN, FingerprintConfig::default().window, WINDOW_MAX] {
            let cfg = FingerprintConfig::default().with_window(window);
            let at = format!("MATRIX {phase} window={window}");
            match load(phase, &cfg) {
                Ok(programs) => {
                    for (program, insns) in programs {
                        match insns {
                            Some(n) => println!("{at} {program} {n}"),
                            None => println!("{at} {program} unknown"),
                        }
                        if insns.is_some_and(|n| n > args.limit) {
                            eprintln!(
                                "kernel-check: {phase} {program} at window {window}: {} verified \
                                 instructions, above the limit of {}",
                                insns.unwrap(),
                                args.limit
                            );
                            failed = true;
                        }
                    }
                }
                Err(e) => {
                    // The verifier's tail follows on further lines; the first says what failed.
                    let text = format!("{e:#}");
                    println!("{at} rejected: {}", text.lines().next().unwrap_or(""));
                    eprintln!("kernel-check: {phase} at window {window}: {text}");
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
