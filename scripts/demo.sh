#!/usr/bin/env bash
# The main job on its embedded default: a real S1 pipeline (source → relay → relay → sink over
# pipes, real speech) traced and scored against its ground truth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo run --release -p harness -- run --scenario S1
