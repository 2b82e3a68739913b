#!/usr/bin/env bash
# The whole test suite: formatting and lints first, then every test (unit, real etcd,
# network namespaces, real CNI plugins). Needs root. The last lines are cargo test's.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
set +e
cargo test --workspace --locked -- --test-threads=4 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
set -e
# Summarise across all test binaries so that a run that executed nothing is visible.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "weft: %d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
