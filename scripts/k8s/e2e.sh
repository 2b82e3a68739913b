# Sourced by scripts/k8s-conformance.sh (after scripts/k8s/build.sh and cluster.sh): what
# Kubernetes' own e2e tests need on this machine, built here with no registry, and the
# run of the selected tests with its per-test result list.
#
# - e2e.test from k8s.io/kubernetes/test/e2e at $K8S_VERSION (the same go.mod as the
#   components, build.sh's k8s_module) and the ginkgo CLI at the version that module
#   requires (it runs e2e.test in parallel processes), cached in $E2E_DIR.
# - Every image the selected tests run, under the exact name and tag e2e asks for
#   (scripts/k8s/e2e-images.txt), built locally: agnhost from the module (the cluster's
#   own agnhost binary, as build_components makes it) on a Debian base with the tools the
#   upstream image installs; busybox from Debian's busybox-static; jessie-dnsutils and nginx
#   from Debian's packages. Saved as docker archives that every node's containerd imports
#   (EXTRA_IMAGE_ARCHIVES, read by build.sh's image_archives).

E2E_DIR=$K8S_CACHE/e2e-$K8S_VERSION
E2E_TEST=$E2E_DIR/e2e.test
GINKGO=$E2E_DIR/ginkgo
E2E_IMAGES_LIST=scripts/k8s/e2e-images.txt
# Parallel ginkgo processes: most of a test's time is waiting for pods and probes, so more
# processes than cores; [Serial] tests still run alone at the end.
E2E_PROCS=${WEFT_E2E_PROCS:-4}

# What the tier runs: every [sig-network] [Conformance] test, and the [sig-network]
# "Networking" tests (pod-to-pod, node-to-pod and pod/node-to-Service connectivity:
# "Granular Checks: Pods", "Granular Checks: Services", kube-proxy's URLs), which need no
# cloud. ginkgo runs a test that matches any focus.
E2E_FOCUS=(
    '\[sig-network\].*\[Conformance\]'
    '\[sig-network\] Networking '
)

# The tests in that selection that cannot run here, one regular expression each with the
# reason (`regex|reason`: the regex has no `|`). Tests that skip themselves at run time (no SSH to nodes, a
# provider they need) are reported with the reason they give.
E2E_SKIPS=(
    '(?i)sctp|the kernel has no SCTP (CONFIG_IP_SCTP unset, and it loads no modules): an SCTP socket cannot be opened'
    '\[Feature:Networking-IPv4\]|needs the Internet from a pod (it pings 8.8.8.8): the nodes have no route out of the test network'
    '\[Feature:Networking-DNS\]|needs the Internet from a pod (it resolves and reaches google.com): no route out, no upstream DNS'
    '\[Feature:Networking-Performance\]|a throughput benchmark, not a pass/fail check: iperf2 from every node at once would starve the tests beside it on this 2-core machine'
    '\[Disruptive\]|deletes kube-proxy'"'"'s iptables rules on a node over SSH (a provider with SSH): the nodes are namespaces, with no SSH'
    '\[Feature:Networking-IPv6\]|IPv6: the cluster is IPv4 only (its Service and cluster CIDRs, weft with no IPv6 network)'
)

go_e2e_env() {
    go_env
    command -v go >/dev/null || { echo "k8s-conformance.sh: go not found (the polyglot machine has Go 1.26)" >&2; exit 1; }
}

# e2e.test and ginkgo, built once per version.
build_e2e() {
    if [ -f "$E2E_DIR/.complete" ]; then
        echo "== e2e.test $K8S_VERSION and ginkgo: cached in $E2E_DIR"
        return
    fi
    go_e2e_env
    echo "== building e2e.test $K8S_VERSION from k8s.io/kubernetes/test/e2e (cold: ~20 min on 2 cores)"
    local src=$K8S_CACHE/build-e2e-$K8S_VERSION
    mkdir -p "$E2E_DIR"
    k8s_module "$src" >/dev/null
    (cd "$src" && CGO_ENABLED=0 go test -c -vet=off -mod=mod -trimpath -ldflags="-s -w$(k8s_version_stamp)" \
        -o "$E2E_DIR/e2e.test" k8s.io/kubernetes/test/e2e) >"$K8S_CACHE/e2e-build.log" 2>&1 ||
        { tail -30 "$K8S_CACHE/e2e-build.log" >&2; exit 1; }
    # The ginkgo CLI at the version e2e.test is built with (its report format and parallel
    # protocol are the library's).
    local ginkgo_version
    ginkgo_version=$(cd "$src" && go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
    (cd "$src" && CGO_ENABLED=0 go build -mod=mod -trimpath -o "$E2E_DIR/ginkgo" github.com/onsi/ginkgo/v2/ginkgo) \
        >>"$K8S_CACHE/e2e-build.log" 2>&1 || { tail -30 "$K8S_CACHE/e2e-build.log" >&2; exit 1; }
    echo "   ginkgo $ginkgo_version"
    touch "$E2E_DIR/.complete"
}

# "ID image" per line of the committed list.
e2e_images() { grep -v '^#' "$E2E_IMAGES_LIST" | awk 'NF == 2 { print $1, $2 }'; }

# The docker archive image $1 is saved as.
e2e_archive() {
    local name=${1##*/}
    echo "$IMAGES_DIR/e2e-${name%%:*}-${name##*:}.tar"
}

# An image on the local Debian base: apt packages $3 installed, then `$4 CONTAINER MOUNT`
# adds files; entrypoint $5 and command $6 (JSON or empty); saved as image $2 in archive $1.
debian_e2e_image() {
    local archive=$1 image=$2 packages=$3 fill=$4 entrypoint=$5 cmd=$6
    [ -f "$archive" ] && return
    local container
    container=$(buildah from "$BASE_DEBIAN")
    if [ -n "$packages" ]; then
        buildah run --isolation chroot "$container" -- sh -ec \
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null && rm -rf /var/lib/apt/lists/*"
    fi
    [ -z "$fill" ] || "$fill" "$container"
    buildah config --entrypoint "${entrypoint:-[]}" --cmd "${cmd:-[]}" "$container"
    buildah commit --quiet "$container" "$image" >/dev/null
    buildah rm "$container" >/dev/null
    rm -f "$archive"
    buildah push --quiet "$image" "docker-archive:$archive.partial:$image"
    mv "$archive.partial" "$archive"
}

# agnhost's image (test/images/agnhost/Dockerfile): the binary at /agnhost (and
# /agnhost-2), porter's certificate and key, /uploads for netexec, CoreDNS at /coredns,
# the user and group a security test expects; dig, curl, nc, ip, iperf and bash from
# Debian (the upstream image takes them from Alpine).
fill_e2e_agnhost() {
    local container=$1 module
    module=$(go_e2e_env && cd "$K8S_CACHE/build-$K8S_VERSION" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
    buildah copy --quiet "$container" "$K8S_BIN/agnhost" /agnhost >/dev/null
    buildah copy --quiet "$container" "$module/test/images/agnhost/porter/localhost.crt" /localhost.crt >/dev/null
    buildah copy --quiet "$container" "$module/test/images/agnhost/porter/localhost.key" /localhost.key >/dev/null
    buildah copy --quiet "$container" "$K8S_CACHE/coredns-$COREDNS_VERSION/coredns" /coredns >/dev/null
    buildah run --isolation chroot "$container" -- sh -ec '
        ln -s agnhost /agnhost-2
        mkdir -p /uploads
        ln -sf /usr/bin/iperf /usr/local/bin/iperf
        groupadd -g 50000 group-defined-in-image
        useradd -u 1000 -M -G group-defined-in-image user-defined-in-image'
}

# busybox (static, Debian's busybox-static) with every applet linked, as the upstream image.
fill_e2e_busybox() {
    local container=$1 root
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp"
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    buildah copy --quiet "$container" "$root" / >/dev/null
    rm -rf "$root"
}

# Every image of the list (pause is build.sh's: the same name), and the archives the nodes
# import for them.
build_e2e_images() {
    local id image archive
    EXTRA_IMAGE_ARCHIVES=""
    # The list on descriptor 3: buildah run reads standard input.
    while read -r id image <&3; do
        archive=$(e2e_archive "$image")
        case $id in
            Agnhost) debian_e2e_image "$archive" "$image" "dnsutils curl netcat-openbsd iproute2 iperf bash passwd" \
                fill_e2e_agnhost '["/agnhost"]' '["pause"]' ;;
            BusyBox)
                [ -f "$archive" ] || {
                    local container
                    container=$(buildah from scratch)
                    fill_e2e_busybox "$container"
                    buildah config --cmd '["sh"]' "$container"
                    buildah commit --quiet "$container" "$image" >/dev/null
                    buildah rm "$container" >/dev/null
                    buildah push --quiet "$image" "docker-archive:$archive.partial:$image"
                    mv "$archive.partial" "$archive"
                } ;;
            JessieDnsutils) debian_e2e_image "$archive" "$image" "dnsutils" "" "" '["/bin/sh"]' ;;
            Nginx) debian_e2e_image "$archive" "$image" "nginx" "" "" '["nginx", "-g", "daemon off;"]' ;;
            Pause)
                [ "$image" = "$PAUSE_IMAGE" ] || { echo "k8s-conformance.sh: e2e wants $image, the cluster's sandbox image is $PAUSE_IMAGE" >&2; exit 1; }
                continue ;;
            *) echo "k8s-conformance.sh: no recipe for $id ($image) in scripts/k8s/e2e.sh" >&2; exit 1 ;;
        esac
        EXTRA_IMAGE_ARCHIVES+=" $archive"
    done 3< <(e2e_images)
    export EXTRA_IMAGE_ARCHIVES
}

# The images the harness builds, one "ID image" per line (what the consistency test reads).
e2e_built_images() {
    local id image
    while read -r id image; do
        case $id in Agnhost | BusyBox | JessieDnsutils | Nginx) echo "$id $image" ;; Pause) echo "$id $PAUSE_IMAGE" ;; esac
    done < <(e2e_images)
}

# The skip regexes joined as one.
e2e_skip_regex() {
    local rule out=""
    for rule in "${E2E_SKIPS[@]}"; do out+="${out:+|}${rule%%|*}"; done
    echo "$out"
}

# Runs the selection with ginkgo in $E2E_PROCS processes from the control plane's host;
# the JSON report goes to $1. Fails only if ginkgo could not run (a test failing is in the
# report).
run_e2e() {
    local report=$1 focus=() regex
    for regex in "${E2E_FOCUS[@]}"; do focus+=(--focus="$regex"); done
    mkdir -p "$K8S_LOGS/e2e"
    echo "== e2e.test: ${#E2E_FOCUS[@]} focus expressions, ${#E2E_SKIPS[@]} skip rules, $E2E_PROCS processes"
    local status=0
    ip netns exec "$CP_NS" env PATH="$K8S_BIN:$PATH" HOME="$K8S_STATE" KUBECONFIG="$PKI/admin.kubeconfig" \
        "$GINKGO" --procs="$E2E_PROCS" "${focus[@]}" --skip="$(e2e_skip_regex)" --no-color \
        --timeout=3h --json-report="$report" --silence-skips \
        "$E2E_TEST" -- --kubeconfig="$PKI/admin.kubeconfig" --provider=skeleton \
        --num-nodes="$(echo "$K8S_NODES" | wc -w)" --kubectl-path="$K8S_BIN/kubectl" --report-dir="$K8S_LOGS/e2e" --dump-logs-on-failure=false \
        >"$K8S_LOGS/e2e.log" 2>&1 || status=$?
    [ -f "$report" ] || { tail -40 "$K8S_LOGS/e2e.log" >&2; return 1; }
    echo "   ginkgo exited with $status; its output: $K8S_LOGS/e2e.log"
}

# Reads the JSON report $1: one line per test in the selection, `PASS|FAIL|SKIP name
# (seconds or reason)`, sorted by name, then `N passed, N failed, N skipped`; the tests
# outside the selection (everything else in e2e.test) are not listed.
e2e_results() {
    local skips
    skips=$(printf '%s\n' "${E2E_SKIPS[@]}")
    python3 - "$1" "$(printf '%s\n' "${E2E_FOCUS[@]}")" "$skips" <<'PY'
import json, re, sys
report, focus, skips = sys.argv[1], sys.argv[2].splitlines(), sys.argv[3].splitlines()
focus = [re.compile(f) for f in focus if f]
rules = [(re.compile(r.split("|")[0]), r.split("|", 1)[1]) for r in skips if r]
lines, counts = [], {"PASS": 0, "FAIL": 0, "SKIP": 0}
suite_failures = []
for suite in json.load(open(report)):
    for spec in suite.get("SpecReports") or []:
        kind = spec.get("LeafNodeType")
        state = spec.get("State")
        failure = (spec.get("Failure") or {}).get("Message", "").strip()
        if kind != "It":
            if state not in ("passed", "skipped"):
                suite_failures.append(f"FAIL {kind}: {failure.splitlines()[0] if failure else state}")
            continue
        name = " ".join(spec.get("ContainerHierarchyTexts") or []) + " " + spec.get("LeafNodeText", "")
        labels = spec.get("LeafNodeLabels") or []
        full = name + "".join(f" [{l}]" for l in labels if f"[{l}]" not in name)
        if not any(f.search(full) for f in focus):
            continue
        if state == "passed":
            secs = spec.get("RunTime", 0) / 1e9
            lines.append(("PASS", name, f"{secs:.0f} s"))
        elif state == "skipped":
            reason = next((why for rule, why in rules if rule.search(full)), None)
            if reason is None:
                reason = "skipped itself: " + (failure.splitlines()[0] if failure else "no reason given")
            lines.append(("SKIP", name, reason))
        else:
            first = failure.splitlines()[0] if failure else state
            lines.append(("FAIL", name, f"{state}: {first}"))
for verdict, name, why in sorted(lines, key=lambda l: l[1]):
    counts[verdict] += 1
    print(f"{verdict} {name} ({why})")
for line in suite_failures:
    print(line)
print(f"{counts['PASS']} passed, {counts['FAIL'] + len(suite_failures)} failed, {counts['SKIP']} skipped")
PY
}
