# Sourced by the real-cluster scripts (scripts/k8s-test.sh, scripts/k8s-conformance.sh):
# what they share around their own checks. The time bound, the tools, the build, the
# PASS/FAIL counting, the cluster's start (after removing what an earlier run left) and
# the teardown that runs however the run ends. Needs scripts/common.sh,
# scripts/k8s/build.sh and scripts/k8s/cluster.sh sourced first.

# Re-runs script $1 (with the arguments after it) under `timeout`, once: the whole run is
# bounded (a cold build included) by WEFT_K8S_TIMEOUT, default $2 seconds. --foreground
# keeps Ctrl-C working from a terminal; its TERM reaches the script, which runs the
# teardown (tier_finish) once the command it waits for ends. KILL only if that and the
# teardown take longer than --kill-after.
tier_timed() {
    local script=$1 limit=$2
    shift 2
    [ -n "${WEFT_K8S_TIMED:-}" ] && return
    export WEFT_K8S_TIMED=1
    exec timeout --foreground --kill-after=900 "${WEFT_K8S_TIMEOUT:-$limit}" "$script" "$@"
}

tier_started=$SECONDS
timing() { printf 'TIME %-40s %4d s\n' "$1" "$2"; }

# The tools the tier runs, installed from Debian when missing; sets HELM.
tier_tools() {
    echo "== tools"
    ./scripts/setup.sh test >/dev/null
    local missing=() tool
    for tool in containerd:containerd runc:runc buildah:buildah ctr:containerd conntrack:conntrack \
        debootstrap:debootstrap busybox:busybox-static socat:socat ethtool:ethtool nft:nftables; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    HELM=$(./scripts/chart-tools.sh | sed -n 's/^HELM=//p')
}

# Kubernetes' components, CoreDNS, kube-network-policies and the images every node imports.
tier_build() {
    echo "== build (Kubernetes $K8S_VERSION from its Go module, images with buildah)"
    local step=$SECONDS
    build_components
    build_coredns
    build_netpol
    timing "components (cached: 0)" $((SECONDS - step))
    step=$SECONDS
    build_images
    timing "images" $((SECONDS - step))
}

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

# The EXIT trap: tears down (unless WEFT_K8S_KEEP), checks nothing is left, and prints the
# summary: `N passed, N failed`, with what tier_summary (a function the script may define)
# adds before it.
tier_finish() {
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
    timing "whole run" $((SECONDS - tier_started))
    if declare -F tier_summary >/dev/null; then
        tier_summary
    else
        echo "$passed passed, $failed failed"
    fi
    [ "$failed" -eq 0 ] && [ "$status" -eq 0 ]
    exit
}

# Sets the teardown trap, removes what an earlier run left, and starts the cluster.
tier_cluster_up() {
    trap tier_finish EXIT
    trap 'exit 130' INT TERM
    if leftovers >/dev/null 2>&1; then
        echo "== removing what an earlier run left"
        cluster_down
        if leftovers; then
            echo "$(basename "$0"): an earlier run left the above and it could not be removed" >&2
            exit 1
        fi
    fi
    # Only the tier's own logs (WEFT_K8S_LOGS may name a directory holding other files).
    mkdir -p "$K8S_LOGS"
    rm -f "$K8S_LOGS"/*.log
    echo "== cluster up"
    local step=$SECONDS
    cluster_up
    timing "cluster up (3 nodes registered)" $((SECONDS - step))
}
