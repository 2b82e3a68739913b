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
. scripts/k8s/tier.sh

if [ "${1:-}" = --down ]; then
    cluster_down
    exit 0
fi
tier_timed scripts/k8s-test.sh 3600 "$@"

tier_tools
tier_build
tier_cluster_up

. scripts/k8s/checks.sh
run_checks
