#!/usr/bin/env bash
# Every test: the kernel matrix first (every program's load check and the kernel-vs-reference
# conformance tests on each supported kernel, docs/kernels.md), then the workspace's tests,
# including the ones that load eBPF programs into this kernel, then the benchmarks once each.
# Each step runs even when one before it failed; the exit status says whether any did.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
failed=()
# Runs a step, saying how long it took (CI's budget is spent here), and notes a failure.
step() {
  local name=$1 start=$SECONDS
  shift
  "$@" || failed+=("$name")
  echo "test.sh: $name took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s" >&2
}
step "kernel matrix" bash scripts/kernel-matrix.sh
if cargo nextest --version >/dev/null 2>&1; then
  step "workspace tests" cargo nextest run --workspace --release --no-fail-fast
else
  step "workspace tests" cargo test --workspace --release --no-fail-fast
fi
# The criterion benchmarks, run once each as tests (their figures: BENCHMARKS.md).
step "benchmarks as tests" cargo bench -p bench --benches -- --test
[ ${#failed[@]} = 0 ] || { echo "test.sh: failed: ${failed[*]}" >&2; exit 1; }
