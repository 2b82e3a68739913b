#!/usr/bin/env bash
# weft's main job on one machine: an etcd and three weftd "nodes", each in its own
# network namespace on an underlay bridge (198.18.0.0/24). Shows the subnets the nodes
# leased, what they stored in etcd and what each node learned about its peers, then
# cleans up. `--keep` leaves everything running until you press Enter.
#
# Only namespaces named wd-* are created; the host's interfaces and routes are untouched.
# Needs root: as another user it re-runs itself through sudo. It installs what is missing
# (scripts/setup.sh) and builds weftd and the CNI plugin first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/demo.sh "$@"
./scripts/setup.sh demo

KEEP=false
[ "${1:-}" = "--keep" ] && KEEP=true
NODES=3
PREFIX=wd
WORK=$(mktemp -d /tmp/weft-demo.XXXXXX)
CONFIG='{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'

remove_namespaces() {
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${PREFIX}-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
cleanup() { remove_namespaces; rm -rf "$WORK"; }
[ "${WEFT_DEMO_NO_CLEANUP:-}" = 1 ] || trap cleanup EXIT
# Leftovers of an interrupted earlier run.
remove_namespaces

# Every binary this script runs comes from this one build line; tests/scripts.rs checks
# that the line builds each target/debug/<name> used below.
echo "== building weftd and the CNI plugin (the first build takes a few minutes)"
as_builder cargo build --quiet --locked --workspace --bins
WEFTD=$TARGET_DIR/debug/weftd
CNI=$TARGET_DIR/debug/weft

echo "== underlay: bridge br0 198.18.0.1/24 in namespace ${PREFIX}-ul"
ip netns add ${PREFIX}-ul
ip -n ${PREFIX}-ul link set lo up
ip -n ${PREFIX}-ul link add br0 type bridge
ip -n ${PREFIX}-ul addr add 198.18.0.1/24 dev br0
ip -n ${PREFIX}-ul link set br0 up
for i in $(seq 1 $NODES); do
    ns=${PREFIX}-n$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n ${PREFIX}-ul link add p$i type veth peer name eth0 netns "$ns"
    ip -n ${PREFIX}-ul link set p$i master br0 up
    ip -n "$ns" addr add 198.18.0.1$i/24 dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via 198.18.0.1
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
done

echo "== etcd on 198.18.0.1:2379"
ip netns exec ${PREFIX}-ul etcd --name demo --data-dir "$WORK/etcd" \
    --listen-client-urls http://198.18.0.1:2379 --advertise-client-urls http://198.18.0.1:2379 \
    --listen-peer-urls http://198.18.0.1:2380 --initial-advertise-peer-urls http://198.18.0.1:2380 \
    --initial-cluster demo=http://198.18.0.1:2380 --log-level warn --logger zap >"$WORK/etcd.log" 2>&1 &
disown
etcdctl() { ip netns exec ${PREFIX}-ul env ETCDCTL_API=3 etcdctl --endpoints http://198.18.0.1:2379 "$@"; }
for _ in $(seq 1 100); do etcdctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
etcdctl put /coreos.com/network/config "$CONFIG" >/dev/null
echo "   config: $CONFIG"

echo "== starting weftd on $NODES nodes"
for i in $(seq 1 $NODES); do
    mkdir -p "$WORK/n$i"
    ip netns exec ${PREFIX}-n$i "$WEFTD" --etcd-endpoints=http://198.18.0.1:2379 \
        --subnet-file="$WORK/n$i/subnet.env" --healthz-port=8081 >"$WORK/n$i/weftd.log" 2>&1 &
    disown
done
for i in $(seq 1 $NODES); do
    for _ in $(seq 1 300); do [ -s "$WORK/n$i/subnet.env" ] && break; sleep 0.1; done
    [ -s "$WORK/n$i/subnet.env" ] || { echo "node $i wrote no subnet.env; its log:"; cat "$WORK/n$i/weftd.log"; exit 1; }
done

echo "== one pod per node, created through weft's CNI plugin (bridge + host-local)"
declare -A POD_IP
for i in $(seq 1 $NODES); do
    ip netns add ${PREFIX}-p$i
    conf=$(printf '{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","subnetFile":"%s","dataDir":"%s","delegate":{"hairpinMode":true,"isDefaultGateway":true,"ipMasq":false},"ipam":{"dataDir":"%s"}}' \
        "$WORK/n$i/subnet.env" "$WORK/n$i/cni" "$WORK/n$i/ipam")
    result=$(echo "$conf" | ip netns exec ${PREFIX}-n$i env CNI_COMMAND=ADD CNI_CONTAINERID=pod$i \
        CNI_NETNS=/var/run/netns/${PREFIX}-p$i CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$CNI")
    POD_IP[$i]=$(echo "$result" | grep -oE '"address": *"[0-9.]+' | head -1 | grep -oE '[0-9.]+$')
    echo "   pod on node $i: ${POD_IP[$i]}"
done
sleep 1

for i in $(seq 1 $NODES); do
    echo
    echo "== node $i (198.18.0.1$i): /readyz says: $(ip netns exec ${PREFIX}-n$i curl -s http://127.0.0.1:8081/readyz)"
    sed 's/^/   /' "$WORK/n$i/subnet.env"
    grep -E "using interface|lease acquired|peer added" "$WORK/n$i/weftd.log" | sed -E 's/^[^ ]+ +//; s/^/   /'
done
echo
echo "== leases in etcd (flannel's keys and JSON)"
etcdctl get --prefix /coreos.com/network/subnets/ | paste - - | sed 's/^/   /'

echo
echo "== pods talking across nodes (ping, 3 packets each)"
failures=0
for i in $(seq 1 $NODES); do for j in $(seq 1 $NODES); do
    [ "$i" = "$j" ] && continue
    if ip netns exec ${PREFIX}-p$i ping -c 3 -i 0.2 -W 1 -q "${POD_IP[$j]}" >/dev/null; then
        echo "   pod $i (${POD_IP[$i]}) -> pod $j (${POD_IP[$j]}): ok"
    else
        echo "   pod $i (${POD_IP[$i]}) -> pod $j (${POD_IP[$j]}): FAILED"; failures=$((failures + 1))
    fi
done; done
echo
echo "== node 1's kernel state: flannel's device and entries, routes through nexthop objects (nhid)"
ip -n ${PREFIX}-n1 -d link show flannel.1 | sed 's/^/   /' | head -3
ip -n ${PREFIX}-n1 route show dev flannel.1 | sed 's/^/   /'
ip -n ${PREFIX}-n1 neigh show dev flannel.1 | sed 's/^/   /'
bridge -n ${PREFIX}-n1 fdb show dev flannel.1 | grep dst | sed 's/^/   /'

if $KEEP; then
    echo
    echo "Running. Logs and subnet.env files are in $WORK. Press Enter to stop and clean up."
    read -r _
fi
[ "$failures" -eq 0 ] || { echo "demo: $failures pod pairs could not talk" >&2; exit 1; }
