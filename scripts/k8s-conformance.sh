#!/usr/bin/env bash
# The conformance tier (optional, slow; not part of scripts/test.sh or CI): Kubernetes' own
# [sig-network] tests against the real-cluster tier's cluster with weft installed by its
# chart. Needs root.
#
# 1. Builds, or takes from $WEFT_K8S_CACHE (keyed by version), what scripts/k8s-test.sh
#    builds (scripts/k8s/build.sh), plus e2e.test from k8s.io/kubernetes/test/e2e at the
#    cluster's release and the ginkgo CLI, and every image the selected tests run, under
#    the exact names and tags e2e asks for (scripts/k8s/e2e-images.txt), built locally:
#    nothing is pulled (scripts/k8s/e2e.sh).
# 2. Starts the same 3-node cluster (scripts/k8s/cluster.sh), with those images imported
#    into every node's containerd; `helm install` of charts/weft as the tier does; CoreDNS.
# 3. Runs the [sig-network] [Conformance] tests and the [sig-network] "Networking" tests
#    (Granular Checks: Pods and Services, kube-proxy's URLs) with ginkgo, in parallel
#    processes, from the control plane's host; prints one line per test (PASS with its
#    time, FAIL with the first line of its failure, SKIP with why it cannot run here), then
#    `N passed, N failed, N skipped`.
# 4. Tears everything down (also on failure or Ctrl-C) and checks nothing is left.
#
# Environment: as scripts/k8s-test.sh (WEFT_K8S_VERSION, WEFT_K8S_CACHE, WEFT_K8S_LOGS,
# WEFT_K8S_KEEP, WEFT_K8S_TIMEOUT: 7200 s in all here), and WEFT_E2E_PROCS (4 ginkgo
# processes). The per-test list is kept in $WEFT_K8S_LOGS/conformance-results.txt, the
# JSON report beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh
become_root scripts/k8s-conformance.sh "$@"
. scripts/k8s/build.sh
. scripts/k8s/cluster.sh
. scripts/k8s/tier.sh
. scripts/k8s/checks.sh
. scripts/k8s/e2e.sh

tier_timed scripts/k8s-conformance.sh 7200 "$@"

tier_tools
tier_build
step=$SECONDS
build_e2e
build_e2e_images
timing "e2e.test and the e2e images" $((SECONDS - step))

e2e_summary=""
# The summary line of the e2e tests, then the harness's own checks.
tier_summary() {
    if [ -n "$e2e_summary" ]; then
        echo "harness: $passed passed, $failed failed"
        echo "$e2e_summary"
    else
        echo "harness: $passed passed, $failed failed (the e2e tests did not run)"
    fi
}

tier_cluster_up
install_weft
check "every Node Ready, NetworkUnavailable=False set by weft (FlannelIsUp)" \
    wait_until 120 check_nodes_ready_with_weft
check "the control plane's host routes to every Node's podCIDR (as a control-plane node would)" \
    control_plane_routes_to_pods
check "CoreDNS runs (a Deployment on weft's network)" install_coredns

step=$SECONDS
report=$K8S_LOGS/conformance-report.json
run_e2e "$report"
timing "e2e tests" $((SECONDS - step))
e2e_results "$report" | tee "$K8S_LOGS/conformance-results.txt"
e2e_summary=$(tail -1 "$K8S_LOGS/conformance-results.txt")
case $e2e_summary in *" 0 failed,"*) ;; *) failed=$((failed + 1)) ;; esac
