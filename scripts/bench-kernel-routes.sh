#!/usr/bin/env bash
# The kernel's own cost of the routes weft (and flannel) programs, without weftd: N
# onlink routes via distinct gateways on one device (`10.x.y.0/24 via 10.x.y.0 dev d0
# onlink`, as the vxlan backend installs per peer), then 200 more one at a time; the
# same with nexthop objects (`ip nexthop` + `route ... nhid`) for comparison. The kernel
# hashes a route's fib_info by device, protocol, scope, source and metric, not gateway,
# so all of these routes share one hash chain and each insert walks it: O(N) per route,
# O(N^2) from scratch. Prints BENCH lines; docs/benchmarks.md reports them. Needs root;
# works in a network namespace of its own (removed on exit), touching nothing of the host.
set -euo pipefail
N=${WEFT_BENCH_ROUTES:-15000}
ns=weft-fib-$$
work=$(mktemp -d)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add d0 type veth peer name d1
ip -n "$ns" link set d0 up
ip -n "$ns" link set d1 up

# The /24 of peer i (10.100.0.0 upwards) and its gateway address.
peer() { echo "10.$((100 + $1 / 256)).$(($1 % 256)).0"; }
timed_batch() { # file -> seconds
    local start=$EPOCHREALTIME
    ip -n "$ns" -batch "$1"
    awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'
}
for i in $(seq 0 $((N - 1))); do
    p=$(peer "$i")
    echo "route add $p/24 via $p dev d0 onlink proto 91" >>"$work/routes"
    echo "nexthop add id $((i + 1)) via $p dev d0 onlink proto 91" >>"$work/nexthops"
    echo "route add $p/24 nhid $((i + 1)) proto 91" >>"$work/nh-routes"
done
for i in $(seq 0 199); do
    p=10.250.$i.0
    echo "route add $p/24 via $p dev d0 onlink proto 91" >>"$work/more-routes"
    echo "nexthop add id $((N + i + 1)) via $p dev d0 onlink proto 91" >>"$work/more-nh"
    echo "route add $p/24 nhid $((N + i + 1)) proto 91" >>"$work/more-nh"
done
cat "$work/nexthops" "$work/nh-routes" >"$work/nh-all"

secs=$(timed_batch "$work/routes")
echo "BENCH kernel routes: $N gateway routes on one device from scratch: $secs s"
secs=$(timed_batch "$work/more-routes")
echo "BENCH kernel routes: 200 more at $N: $(awk -v s="$secs" 'BEGIN { printf "%.3f", s * 1000 / 200 }') ms per route"
ip -n "$ns" route flush proto 91
secs=$(timed_batch "$work/nh-all")
echo "BENCH kernel routes: $N nexthop objects + $N routes using them from scratch: $secs s"
secs=$(timed_batch "$work/more-nh")
echo "BENCH kernel routes: 200 more at $N: $(awk -v s="$secs" 'BEGIN { printf "%.3f", s * 1000 / 200 }') ms per nexthop + route"
