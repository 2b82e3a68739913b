#!/usr/bin/env bash
# Benchmarks (release build): convergence latency from an etcd lease write to the route
# in another node's kernel, weftd at 5,000 peers, and the cost of one traffic-rules
# check. Needs root. Prints the BENCH lines that docs/benchmarks.md reports.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --release --locked --workspace --no-run >/dev/null 2>&1 || cargo test --release --locked --workspace --no-run
cargo test --release --locked --test bench_datapath -- --ignored --nocapture --test-threads=1 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
cargo test --release --locked --test bench_rules -- --ignored --nocapture --test-threads=1 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
