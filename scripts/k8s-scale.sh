#!/usr/bin/env bash
# Kube mode at scale against the real API server (issue 28; optional, slow, needs root;
# not part of scripts/test.sh or CI). Prints the BENCH lines of docs/benchmarks.md, "Kube
# mode against a real API server".
#
# 1. Takes kube-apiserver and kubectl from the real-cluster tier's cache (scripts/k8s/
#    build.sh builds them once, keyed by version) and etcd from the machine.
# 2. Starts etcd and kube-apiserver with the tier's functions (scripts/k8s/cluster.sh),
#    under names and directories of its own (ws-*, /run/weft-k8s-scale, ...), so it can
#    run beside scripts/k8s-test.sh; no controller manager, no scheduler, no kubelets. The
#    API server writes an audit log of weft's requests (its ServiceAccount only).
# 3. weft's RBAC as the chart renders it (ServiceAccount `flannel`, its ClusterRole and
#    binding; `helm template`), and a token of that ServiceAccount for weftd.
# 4. A namespace for weftd on the tier's switch (ws-weft, 198.18.0.20), then the harness
#    (tests/bench_kube_scale.rs, `kube_scale`, release build): it creates the Nodes (5,000,
#    then 15,000; podCIDRs in 10.0.0.0/8 set at creation, weft's annotations), runs the
#    release weftd in kube mode in ws-weft and measures. It calls this script back as
#    `scripts/k8s-scale.sh restart-apiserver` (etcd compacted, API server restarted).
# 5. Tears everything down, also on failure or Ctrl-C, and checks nothing is left.
#
# Environment: WEFT_SCALE_SIZES (5000,15000), WEFT_SCALE_IDLE (60 s), WEFT_BENCH_WEFTD
# (another weftd to measure; default: this checkout's `cargo build --release`),
# WEFT_K8S_VERSION and WEFT_K8S_CACHE as for scripts/k8s-test.sh, WEFT_K8S_SCALE_LOGS
# (/var/log/weft-k8s-scale: the daemons' logs, the audit log, weftd's log),
# WEFT_K8S_TIMEOUT (3600 s in all). `scripts/k8s-scale.sh --down` removes what a stopped
# run left.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/k8s-scale.sh "$@"
. scripts/k8s/build.sh
. scripts/k8s/cluster.sh

# This tier's own names and directories (cluster.sh's functions use these).
K8S_RUN=/run/weft-k8s-scale
K8S_STATE=/var/lib/weft-k8s-scale
K8S_LOGS=${WEFT_K8S_SCALE_LOGS:-/var/log/weft-k8s-scale}
PKI=$K8S_STATE/pki
K8S_NODES=""
CP_NS=ws-cp
SWITCH_NS=ws-sw
K8S_NETNS_PATTERN='^ws-'
WEFT_NS=ws-weft
WEFT_IP=198.18.0.20
WEFT_NODE=ws-weft
WEFT_USER=system:serviceaccount:kube-system:flannel
AUDIT_LOG=$K8S_LOGS/audit.log
K8S_APISERVER_ARGS=(--audit-policy-file="$K8S_STATE/audit-policy.yaml" --audit-log-path="$AUDIT_LOG"
    --audit-log-maxsize=0 --audit-log-maxbackup=0)

# Called back by the harness: etcd's history compacted up to now (every older
# resourceVersion is gone), and the API server restarted (its watch cache starts anew).
restart_apiserver() {
    local pid revision
    pid=$(cat "$K8S_RUN/pids/kube-apiserver")
    kill "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    revision=$(ip netns exec "$CP_NS" etcdctl --endpoints=127.0.0.1:2379 endpoint status -w json |
        sed -n 's/.*"revision":\([0-9]*\).*/\1/p')
    ip netns exec "$CP_NS" etcdctl --endpoints=127.0.0.1:2379 compact "$revision" >/dev/null
    start_apiserver
}

case "${1:-}" in
--down)
    ip netns pids "$WEFT_NS" 2>/dev/null | xargs -r kill -KILL
    ip netns del "$WEFT_NS" 2>/dev/null || true
    cluster_down
    exit 0
    ;;
restart-apiserver)
    restart_apiserver
    exit 0
    ;;
"") ;;
*)
    echo "usage: scripts/k8s-scale.sh [--down | restart-apiserver]" >&2
    exit 2
    ;;
esac
if [ -z "${WEFT_K8S_TIMED:-}" ]; then
    # Bounded in all, as scripts/k8s-test.sh is; its TERM runs the teardown below.
    export WEFT_K8S_TIMED=1
    exec timeout --foreground --kill-after=300 "${WEFT_K8S_TIMEOUT:-3600}" scripts/k8s-scale.sh "$@"
fi

started=$SECONDS
trap return_target_dir EXIT
echo "== build (Kubernetes $K8S_VERSION from its Go module; the harness and weftd, release)"
command -v etcd >/dev/null && command -v etcdctl >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null; }
HELM=$(./scripts/chart-tools.sh | sed -n 's/^HELM=//p')
build_components
as_builder cargo test --release --locked --test bench_kube_scale --no-run >/dev/null 2>&1 ||
    as_builder cargo test --release --locked --test bench_kube_scale --no-run
if [ -z "${WEFT_BENCH_WEFTD:-}" ]; then
    as_builder cargo build --release --locked --bin weftd >/dev/null 2>&1 ||
        as_builder cargo build --release --locked --bin weftd
    WEFT_BENCH_WEFTD=$TARGET_DIR/release/weftd
fi
echo "BENCH weftd under test: $WEFT_BENCH_WEFTD"

finish() {
    local status=$?
    trap '' INT TERM PIPE
    trap - EXIT
    set +e
    ip netns pids "$WEFT_NS" 2>/dev/null | xargs -r kill -KILL
    ip netns del "$WEFT_NS" 2>/dev/null
    cluster_down
    return_target_dir
    if leftovers; then
        echo "FAIL nothing is left behind (above: what is)"
        status=1
    fi
    echo "== done in $((SECONDS - started)) s (status $status); logs in $K8S_LOGS"
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

if leftovers >/dev/null 2>&1; then
    echo "== removing what an earlier run left"
    ip netns del "$WEFT_NS" 2>/dev/null || true
    cluster_down
fi
mkdir -p "$K8S_RUN/pids" "$K8S_STATE" "$K8S_LOGS"
rm -f "$K8S_LOGS"/*.log

echo "== control plane (etcd, kube-apiserver with an audit log of weft's requests)"
cat >"$K8S_STATE/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["$WEFT_USER"]
- level: None
EOF
make_pki
network_up
start_etcd
start_apiserver
# weft's RBAC exactly as the chart renders it, and a token of its ServiceAccount.
"$HELM" template weft charts/weft --namespace kube-system \
    --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml | kubectl apply -f - >/dev/null
token=$(kubectl -n kube-system create token flannel --duration=4h)
cat >"$PKI/weft.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: weft-k8s-scale
  cluster:
    server: https://$CP_IP:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: flannel
  user: {token: $token}
contexts:
- name: weft-k8s-scale
  context: {cluster: weft-k8s-scale, user: flannel}
current-context: weft-k8s-scale
EOF
chmod 600 "$PKI/weft.kubeconfig"
plug_into_switch "$WEFT_NS" "$WEFT_IP"
rm -rf "$K8S_LOGS/weftd"
mkdir -p "$K8S_LOGS/weftd"
echo "== control plane up in $((SECONDS - started)) s; the harness"

WEFT_SCALE_KUBECONFIG=$PKI/admin.kubeconfig \
    WEFT_SCALE_WEFT_KUBECONFIG=$PKI/weft.kubeconfig \
    WEFT_SCALE_WEFT_USER=$WEFT_USER \
    WEFT_SCALE_CP_NETNS=$CP_NS \
    WEFT_SCALE_WEFT_NETNS=$WEFT_NS \
    WEFT_SCALE_NODE_NAME=$WEFT_NODE \
    WEFT_SCALE_NODE_IP=$WEFT_IP \
    WEFT_SCALE_DIR=$K8S_LOGS/weftd \
    WEFT_SCALE_PIDS=$K8S_RUN/pids \
    WEFT_SCALE_AUDIT_LOG=$AUDIT_LOG \
    WEFT_SCALE_CONTROL="$(pwd)/scripts/k8s-scale.sh" \
    WEFT_BENCH_WEFTD=$WEFT_BENCH_WEFTD \
    cargo test --release --locked --test bench_kube_scale -- --ignored --nocapture --test-threads=1 \
    --exact kube_scale 2>&1 | grep --line-buffered -oE "BENCH.*|test result.*|panicked.*|k8s-test.sh.*"
