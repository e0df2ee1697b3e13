#!/usr/bin/env bash
# The kernel matrix (docs/kernels.md): builds kernel-check and the phases' conformance tests,
# runs them (kernel-matrix/checks.sh) on this machine's kernel and on each Debian kernel the
# project supports, booted under qemu (kernel-matrix/boot.sh, which takes the same options:
# --kernels 'REGEX...', --no-host), and prints the verified instructions of each program per
# kernel, the most over the windows loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p kernel-check
tests=$(cargo test --release --no-run -q -p phase-1-poc -p phase-2-straddle --test conformance \
          --message-format=json | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "conformance":
        print(os.path.basename(os.path.dirname(m["manifest_path"])) + "=" + m["executable"])
')
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
bash scripts/kernel-matrix/boot.sh "$@" -- bash scripts/kernel-matrix/checks.sh $tests | tee "$log" || rc=$?
# The table: a row per program, a column per kernel.
python3 - "$log" <<'PY'
import re, sys
cost, kernels = {}, []
for line in open(sys.argv[1]):
    m = re.match(r"\[(\S+)\] MATRIX (\S+) window=\d+ (\w+) (\d+)$", line.strip())
    if m:
        kernel, phase, program, n = m.groups()
        kernels += [kernel] if kernel not in kernels else []
        key = (phase, program)
        cost.setdefault(key, {})[kernel] = max(cost.get(key, {}).get(kernel, 0), int(n))
print("| program | " + " | ".join(kernels) + " |")
print("| --- |" + " --- |" * len(kernels))
for (phase, program), per in sorted(cost.items()):
    print(f"| {phase} {program} | " + " | ".join(f"{per[k]:,}" if k in per else "–" for k in kernels) + " |")
PY
exit $rc
