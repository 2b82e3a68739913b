#!/usr/bin/env bash
# The real-cluster tier (optional, slow; not part of scripts/test.sh or CI): a real
# Kubernetes of three nodes on this one machine, weft installed into it the way a user
# installs it, and the checks a cluster network must pass. Needs root.
#
# 1. Builds, or takes from $WEFT_K8S_CACHE (/var/cache/weft-k8s, keyed by version),
#    kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl
#    and agnhost from the k8s.io/kubernetes Go module at one pinned release, and pause
#    from the same module; CoreDNS and kube-network-policies (the chart's NetworkPolicy
#    sidecar) from their modules; the images with buildah and no registry: pause, a test
#    image (agnhost + busybox), CoreDNS's, kube-network-policies' and weft's image from the
#    repository's Containerfile.
# 2. Starts the cluster (scripts/k8s/cluster.sh): etcd and the control plane in one
#    network namespace, three nodes each with containerd + runc (Debian's), kubelet and
#    kube-proxy in namespaces of their own, joined by a switch namespace (198.18.0.0/24).
# 3. `helm install` of charts/weft (kube mode, vxlan, the local image, netpol.enabled
#    with the local sidecar image): the DaemonSet's init containers install the CNI plugin
#    and its config on each node, kubelets call it through containerd. Nothing of weft is
#    started by hand.
# 4. Checks, one PASS/FAIL line each, then `N passed, N failed`; then tears everything
#    down (also on failure or Ctrl-C) and checks nothing is left.
#
# Environment: WEFT_K8S_VERSION (v1.34.4), WEFT_K8S_CACHE, WEFT_K8S_LOGS
# (/var/log/weft-k8s: every daemon's log, kept after the run), WEFT_K8S_KEEP=1 (leave the
# cluster up; `scripts/k8s-test.sh --down` removes it), WEFT_K8S_TIMEOUT (3600 s in all, a cold build included).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/k8s-test.sh "$@"
. scripts/k8s/build.sh
. scripts/k8s/cluster.sh

if [ "${1:-}" = --down ]; then
    cluster_down
    exit 0
fi
if [ -z "${WEFT_K8S_TIMED:-}" ]; then
    # The whole run is bounded (a cold build included). --foreground keeps Ctrl-C working
    # from a terminal; its TERM reaches this shell, which runs the teardown (the trap
    # below) once the command it waits for ends, at most 300 s (a rollout's timeout).
    # KILL only if that and the teardown take longer than --kill-after.
    export WEFT_K8S_TIMED=1
    exec timeout --foreground --kill-after=900 "${WEFT_K8S_TIMEOUT:-3600}" scripts/k8s-test.sh "$@"
fi

started=$SECONDS
timing() { printf 'TIME %-40s %4d s\n' "$1" "$2"; }

echo "== tools"
./scripts/setup.sh test >/dev/null
missing=()
for tool in containerd:containerd runc:runc buildah:buildah ctr:containerd conntrack:conntrack \
    debootstrap:debootstrap busybox:busybox-static socat:socat ethtool:ethtool nft:nftables; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
HELM=$(./scripts/chart-tools.sh | sed -n 's/^HELM=//p')

echo "== build (Kubernetes $K8S_VERSION from its Go module, images with buildah)"
step=$SECONDS
build_components
build_coredns
build_netpol
timing "components (cached: 0)" $((SECONDS - step))
step=$SECONDS
build_images
timing "images" $((SECONDS - step))

passed=0
failed=0
check() { # check NAME COMMAND...: one PASS/FAIL line
    local name=$1
    shift
    if "$@"; then
        echo "PASS $name"
        passed=$((passed + 1))
    else
        echo "FAIL $name"
        failed=$((failed + 1))
    fi
}

finish() {
    local status=$?
    # The teardown runs to its end: a second Ctrl-C, a TERM or a closed output (a tee
    # ended by the Ctrl-C) must not cut it short, and no step's failure stops the rest.
    trap '' INT TERM PIPE
    trap - EXIT
    set +e
    if [ -n "${WEFT_K8S_KEEP:-}" ]; then
        echo "== left running (WEFT_K8S_KEEP): scripts/k8s-test.sh --down removes it"
    else
        cluster_down
        echo "== teardown done"
        if leftovers; then
            echo "FAIL nothing is left behind (above: what is)"
            failed=$((failed + 1))
        else
            echo "PASS nothing is left behind (processes, mounts, namespaces, cgroups)"
            passed=$((passed + 1))
        fi
    fi
    if [ "$status" -ne 0 ]; then
        # Timed out, interrupted or a step failed: the checks not reached count as one.
        echo "FAIL the run reached its end (it stopped with status $status)"
        failed=$((failed + 1))
    fi
    timing "whole run" $((SECONDS - started))
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
    exit
}
trap finish EXIT
trap 'exit 130' INT TERM

if leftovers >/dev/null 2>&1; then
    echo "== removing what an earlier run left"
    cluster_down
    if leftovers; then
        echo "k8s-test.sh: an earlier run left the above and it could not be removed" >&2
        exit 1
    fi
fi
# Only the tier's own logs (WEFT_K8S_LOGS may name a directory holding other files).
mkdir -p "$K8S_LOGS"
rm -f "$K8S_LOGS"/*.log

echo "== cluster up"
step=$SECONDS
cluster_up
timing "cluster up (3 nodes registered)" $((SECONDS - step))

. scripts/k8s/checks.sh
run_checks
