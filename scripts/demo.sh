#!/usr/bin/env bash
# The main job on its embedded default: a real pipeline (S9: source on node a → two relays on
# node b → two consumers on node c; "nodes" are network namespaces joined by veth, with clocks
# skewed on purpose) traced by an eBPF agent per node and a collector that aligns the clocks;
# prints each hop's latency and error bound next to the ground truth the pipeline recorded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release -p phase-3-multi-node
