#!/usr/bin/env bash
# What the kernel matrix (scripts/kernel-matrix.sh) runs on each kernel, from the repo root of a
# release build: every phase's programs load within their verifier budget (kernel-check), and
# the kernel's moments equal the shared reference's (the phases' conformance tests, passed as
# PHASE=TEST_BINARY arguments). Prints MATRIX lines; exits non-zero if anything failed.
set -uo pipefail
# A guest's loopback starts down; the conformance tests talk TCP over ::1.
ip link set lo up 2>/dev/null || true
rc=0
target/release/kernel-check || rc=1
for arg in "$@"; do
  phase=${arg%%=*} test=${arg#*=}
  out=$("$test" --test-threads 1 2>&1) || rc=1
  result=$(grep -E '^test result' <<<"$out" | tail -1)
  echo "MATRIX $phase conformance ${result:-did not run}"
  # The failing tests and their messages, for the matrix's log.
  grep -E '^test .*FAILED|panicked at' -A3 <<<"$out" | head -40 >&2 || true
done
exit $rc
