#!/usr/bin/env bash
# Datapath benchmarks (release build): convergence latency from an etcd lease write to
# the route in another node's kernel, and weftd at 5,000 peers. Needs root. Prints the
# BENCH lines that docs/benchmarks.md reports. As another user it re-runs itself through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/bench.sh "$@"
trap return_target_dir EXIT
./scripts/setup.sh demo
as_builder cargo test --release --locked --workspace --no-run >/dev/null 2>&1 ||
    as_builder cargo test --release --locked --workspace --no-run
cargo test --release --locked --test bench_datapath -- --ignored --nocapture --test-threads=1 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
