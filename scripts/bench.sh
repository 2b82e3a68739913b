#!/usr/bin/env bash
# Datapath benchmarks: convergence latency from an etcd lease write to the route in
# another node's kernel, weftd at 5,000 peers, host-gw throughput against hand-written
# routes, the cost of one traffic-rules check, and (issue 15) footprint and scale: the
# binary's size, RSS at 3 and 500 nodes in etcd and Kubernetes mode, and weftd against
# 5,000 and 15,000 peers from scratch (ready, peak RSS, timer cost, repair, one added
# peer's CPU and latency). Needs root. Prints the BENCH lines that docs/benchmarks.md
# reports. As another user it re-runs itself through sudo.
#
# The weftd measured is the shipped build (`cargo build --profile dist`); the harness is
# the release test build. Set WEFT_BENCH_WEFTD=/path/to/weftd to measure another build
# with the same harness (before/after A/B), WEFT_BENCH_PEERS (e.g. "15000") and
# WEFT_BENCH_NODES (e.g. "3,500") to change the sizes. Arguments, if any, are test names
# of tests/bench_datapath.rs to run instead of all of them (e.g. `scripts/bench.sh
# footprint_kube binary_size`); `scripts/bench.sh health` runs the health server's flood
# benchmark (tests/health_probes_under_flood.rs) alone; `scripts/bench.sh wireguard` the
# wireguard backend's throughput against boringtun configured by hand
# (tests/bench_wireguard.rs) alone.
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
dist_build >/dev/null 2>&1 || dist_build
export WEFT_BENCH_WEFTD=${WEFT_BENCH_WEFTD:-$TARGET_DIR/dist/weftd}
echo "BENCH weftd under test: $WEFT_BENCH_WEFTD"
bench() {
    cargo test --release --locked --test "$1" -- --ignored --nocapture --test-threads=1 --exact "${@:2}" 2>&1 |
        grep -oE "BENCH.*|test result.*|panicked.*"
}
if [ "${1:-}" = health ]; then
    # Probe latency, RSS and CPU with no flood and under an ongoing flood (issue 29).
    bench health_probes_under_flood bench_probe_latency_under_flood
    exit
fi
if [ "${1:-}" = wireguard ]; then
    # weft's WireGuard path against the same boringtun configured by hand (issue 26).
    ./scripts/setup.sh test >/dev/null
    bench bench_wireguard wireguard_throughput_against_hand_configured_boringtun
    exit
fi
if [ $# -gt 0 ]; then
    bench bench_datapath "$@"
    exit
fi
bench bench_datapath binary_size footprint_kube footprint_etcd convergence_latency_lease_to_route \
    scale_5000_peers scale_peers_from_scratch hostgw_throughput_against_hand_written_routes
bench bench_rules
# The kernel's own cost of weft's routes at 15,000 peers (no weftd).
scripts/bench-kernel-routes.sh
