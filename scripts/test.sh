#!/usr/bin/env bash
# The whole test suite: the demo (the README's first command, on the same debug build),
# formatting and lints, then every test (unit, real etcd, network namespaces, real CNI
# plugins). Needs root: as another user it re-runs itself through sudo, and builds as that
# user. The last lines are cargo test's, then one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/test.sh "$@"
./scripts/setup.sh test

echo "== cargo fmt --check"
as_builder cargo fmt --all -- --check
echo "== ./scripts/demo.sh"
./scripts/demo.sh
echo "== cargo clippy"
as_builder cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# Built as the user (under sudo), run as root: the tests create network namespaces.
as_builder cargo test --workspace --locked --no-run
set +e
cargo test --workspace --locked -- --test-threads=4 2>&1 | as_builder tee "$TARGET_DIR/test-output.log"
status=${PIPESTATUS[0]}
set -e
return_target_dir
# Summarise across all test binaries so that a run that executed nothing is visible.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "weft: %d passed, %d failed\n", p, f }' "$TARGET_DIR/test-output.log"
exit "$status"
