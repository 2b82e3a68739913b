#!/usr/bin/env bash
# Datapath benchmarks (release build): convergence latency from an etcd lease write to
# the route in another node's kernel, weftd at 5,000 peers, host-gw throughput against
# hand-written routes, and the cost of one traffic-rules check. Needs root. Prints the
# BENCH lines that docs/benchmarks.md reports. As another user it re-runs itself through sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/bench.sh "$@"
trap return_target_dir EXIT
./scripts/setup.sh demo
# The throughput benchmark needs iperf3 (not needed by the test suite).
command -v iperf3 >/dev/null || { apt-get update -qq && apt-get install -y -qq iperf3 >/dev/null; }
as_builder cargo test --release --locked --workspace --no-run >/dev/null 2>&1 ||
    as_builder cargo test --release --locked --workspace --no-run
cargo test --release --locked --test bench_datapath -- --ignored --nocapture --test-threads=1 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
cargo test --release --locked --test bench_rules -- --ignored --nocapture --test-threads=1 2>&1 | grep -oE "BENCH.*|test result.*|panicked.*"
