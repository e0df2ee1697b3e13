#!/usr/bin/env bash
# The main job on its embedded default: phase 2's eBPF tracer follows a real S1 pipeline
# (source → relay → relay → sink over pipes, real speech) and prints each hop's latency next to
# the ground truth the pipeline recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release -p phase-2-straddle
