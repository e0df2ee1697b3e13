#!/usr/bin/env bash
# Every test of the workspace, including the ones that load eBPF programs into this kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast
fi
# The criterion benchmarks, run once each as tests (their figures: BENCHMARKS.md).
cargo bench -p bench --benches -- --test
