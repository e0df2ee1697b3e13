#!/usr/bin/env bash
# Every test: the kernel matrix first (every program's load check and the kernel-vs-reference
# conformance tests on each supported kernel, docs/kernels.md), then the workspace's tests,
# including the ones that load eBPF programs into this kernel, then the benchmarks once each.
# Each step runs even when one before it failed; the exit status says whether any did.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
failed=()
bash scripts/kernel-matrix.sh || failed+=("kernel matrix")
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast || failed+=("workspace tests")
else
  cargo test --workspace --release --no-fail-fast || failed+=("workspace tests")
fi
# The criterion benchmarks, run once each as tests (their figures: BENCHMARKS.md).
cargo bench -p bench --benches -- --test || failed+=("benchmarks as tests")
[ ${#failed[@]} = 0 ] || { echo "test.sh: failed: ${failed[*]}" >&2; exit 1; }
