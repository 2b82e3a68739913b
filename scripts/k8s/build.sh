# Sourced by scripts/k8s-test.sh: builds (or takes from the cache) what the real-cluster
# tier runs, with no image registry: Kubernetes' components from the k8s.io/kubernetes Go
# module, the sandbox (pause) image, the test image (agnhost and busybox), CoreDNS's and
# kube-network-policies' images from their Go modules, and weft's image from the
# repository's Containerfile, on local base images.
#
# Everything goes to $K8S_CACHE (default /var/cache/weft-k8s), keyed by version, so a
# second run rebuilds nothing but weft's image (and that only when the sources changed:
# buildah reuses its layers).

K8S_VERSION=${WEFT_K8S_VERSION:-v1.34.4}
K8S_CACHE=${WEFT_K8S_CACHE:-/var/cache/weft-k8s}
K8S_BIN=$K8S_CACHE/bin-$K8S_VERSION
# Component binaries the tier runs (kubectl too, at the cluster's version).
K8S_COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl"
# CoreDNS, for Service names (the version kubeadm installs with this release).
COREDNS_VERSION=${WEFT_K8S_COREDNS_VERSION:-v1.12.1}
COREDNS_IMAGE=localhost/coredns:$COREDNS_VERSION
# kube-network-policies, the NetworkPolicy sidecar the chart adds with netpol.enabled
# (flannel's netpol). The chart's default image is v1.0.0; the Go module proxy serves
# v0.7.0 and v0.8.0 only (v1.0.0: "not available"), so the tier builds v0.8.0. Its tag
# gets "-xt-nfqueue" when the kernel cannot queue packets from nftables (netpol_variant).
NETPOL_MODULE=sigs.k8s.io/kube-network-policies
NETPOL_VERSION=v0.8.0
NETPOL_IMAGE_REPOSITORY=localhost/kube-network-policies
NETPOL_IMAGE_TAG=$NETPOL_VERSION
# Image names. The sandbox image is the name containerd's CRI config asks for.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
TEST_IMAGE=localhost/weft-k8s-test:$K8S_VERSION
WEFT_IMAGE_REPOSITORY=localhost/weft
WEFT_IMAGE_TAG=k8s-test
# The Containerfile's base images, made here with debootstrap (its ARGs name them).
BASE_DEBIAN=localhost/weft-base/debian:bookworm-slim
BASE_RUST=localhost/weft-base/rust:1-bookworm
IMAGES_DIR=$K8S_CACHE/images

go_env() {
    export GOPATH=$K8S_CACHE/gopath GOMODCACHE=$K8S_CACHE/gopath/pkg/mod
    export GOCACHE=$K8S_CACHE/gocache GOFLAGS=-modcacherw GOTOOLCHAIN=local
}

# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl
# from k8s.io/kubernetes at $K8S_VERSION, and agnhost (test/images/agnhost, the e2e test
# image's binary). The module replaces its staging modules with local paths, so `go
# install ...@version` is refused: a go.mod of our own requires it and replaces each
# staging module with its published v0 version (the list is the module's own replace
# block).
build_components() {
    if [ -f "$K8S_BIN/.complete" ]; then
        echo "== Kubernetes $K8S_VERSION components: cached in $K8S_BIN"
        return
    fi
    command -v go >/dev/null || { echo "k8s-test.sh: go not found (the polyglot machine has Go 1.26)" >&2; exit 1; }
    go_env
    local src=$K8S_CACHE/build-$K8S_VERSION module
    mkdir -p "$K8S_BIN.partial"
    echo "== building Kubernetes $K8S_VERSION components from the Go module (cold, with CoreDNS: ~8 min)"
    module=$(k8s_module "$src")
    local packages=() command
    for command in $K8S_COMMANDS; do packages+=("k8s.io/kubernetes/cmd/$command"); done
    packages+=(k8s.io/kubernetes/test/images/agnhost)
    # go's "downloading ..." lines (hundreds) go to a log; shown when the build fails.
    (cd "$src" && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags="-s -w$(k8s_version_stamp)" -o "$K8S_BIN.partial/" "${packages[@]}") \
        >"$K8S_CACHE/go-build.log" 2>&1 || { tail -30 "$K8S_CACHE/go-build.log" >&2; exit 1; }
    # The sandbox's one process: pause.c from the same module, static (build/pause/Makefile).
    gcc -Os -Wall -Werror -static -DVERSION="$K8S_VERSION-weft" -o "$K8S_BIN.partial/pause" \
        "$module/build/pause/linux/pause.c"
    touch "$K8S_BIN.partial/.complete"
    rm -rf "$K8S_BIN"
    mv "$K8S_BIN.partial" "$K8S_BIN"
}

# Makes directory $1 a module that builds k8s.io/kubernetes at $K8S_VERSION: a go.mod that
# requires it and replaces each staging module with its published v0 version (the list is
# the module's own replace block). Prints the downloaded module's directory.
k8s_module() {
    local src=$1 minor=${K8S_VERSION#v1.} module
    mkdir -p "$src"
    module=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [ -d "$module" ] || { echo "k8s-test.sh: cannot download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    {
        printf 'module weft.test/k8s-build\n\ngo 1.24\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
        sed -n '/^replace (/,/^)/p' "$module/go.mod" | awk -v v="v0.$minor" '/=>/ { print "\t" $1 " => " $1 " " v }'
        printf ')\n'
    } >"$src/go.mod"
    echo "$module"
}

# The -X flags that stamp the version the binaries report (kubectl version, the Node's
# kubeletVersion, e2e.test's), as Kubernetes' own build does (hack/lib/version.sh).
k8s_version_stamp() {
    local minor=${K8S_VERSION#v1.} stamp="" package
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        stamp+=" -X $package.gitVersion=$K8S_VERSION -X $package.gitMajor=1"
        stamp+=" -X $package.gitMinor=${minor%%.*} -X $package.gitTreeState=clean"
    done
    echo "$stamp"
}

# CoreDNS from its Go module (github.com/coredns/coredns, main package at the root).
build_coredns() {
    local dir=$K8S_CACHE/coredns-$COREDNS_VERSION
    if [ -f "$dir/.complete" ]; then
        echo "== CoreDNS $COREDNS_VERSION: cached in $dir"
        return
    fi
    go_env
    echo "== building CoreDNS $COREDNS_VERSION from its Go module"
    mkdir -p "$dir"
    CGO_ENABLED=0 GOBIN="$dir" go install -trimpath -ldflags="-s -w" "github.com/coredns/coredns@$COREDNS_VERSION" \
        >"$K8S_CACHE/coredns-build.log" 2>&1 || { tail -30 "$K8S_CACHE/coredns-build.log" >&2; exit 1; }
    touch "$dir/.complete"
}

# Whether this kernel runs nftables' `queue` statement (CONFIG_NFT_QUEUE), which
# kube-network-policies uses to hand a connection's first packet to its userspace verdict:
# tried in a throwaway network namespace (its table goes with it).
kernel_has_nft_queue() {
    local ns=wk-nft-probe status=0
    ip netns add "$ns" || return 1
    echo 'table inet weft-probe { chain c { type filter hook postrouting priority 0; queue num 100 bypass; }; }' |
        ip netns exec "$ns" nft -f - >/dev/null 2>&1 || status=1
    ip netns del "$ns"
    return $status
}

# Which kube-network-policies the tier builds, setting NETPOL_IMAGE_TAG: the module as
# published or, on a kernel without nftables' queue statement (no CONFIG_NFT_QUEUE and no
# module to load, as on the project's machine), the module with that one statement
# replaced by the x_tables NFQUEUE target, through nft_compat
# (CONFIG_NETFILTER_XT_TARGET_NFQUEUE). Unchanged, the sidecar's rules go to the kernel
# as one batch, which the queue expression fails whole ("netlink receive: no such file or
# directory"): no table, nothing enforced. Its policy logic is untouched: only how a
# packet reaches its queue differs.
netpol_variant() {
    if kernel_has_nft_queue; then
        NETPOL_IMAGE_TAG=$NETPOL_VERSION
    else
        NETPOL_IMAGE_TAG=$NETPOL_VERSION-xt-nfqueue
    fi
}

# The function netpol_patch adds to the module's package: nftables' `queue num N
# [bypass]` as `xt target NFQUEUE` (struct xt_NFQ_info_v3 as the target's info).
NETPOL_XT_NFQUEUE_GO='package networkpolicy

// Added by weft'"'"'s scripts/k8s/build.sh: this kernel lacks nftables'"'"' queue expression
// (CONFIG_NFT_QUEUE), so packets reach the queue through x_tables'"'"' NFQUEUE target
// (revision 3) and nft_compat instead.

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

func xtNFQueue(num uint16, bypass bool) expr.Any {
	// struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }, padded to XT_ALIGN.
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	if bypass {
		binary.NativeEndian.PutUint16(info[4:], 1) // NFQ_FLAG_BYPASS
	}
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}
'

# Applies the x_tables NFQUEUE change to the module's source in directory $1; fails if a
# queue expression is left (a version whose code no longer matches).
netpol_patch() {
    local package=$1/pkg/networkpolicy
    printf '%s' "$NETPOL_XT_NFQUEUE_GO" >"$package/xt_nfqueue.go"
    perl -0pi -e 's/&expr\.Queue\{Num: uint16\(c\.config\.QueueID\)\}\n\tif c\.config\.FailOpen \{\n\t\tqueue\.Flag = expr\.QueueFlagBypass\n\t\}/xtNFQueue(uint16(c.config.QueueID), c.config.FailOpen)/g' \
        "$package/controller.go"
    perl -pi -e 's/&expr\.Queue\{Num: uint16\(n\.nfQueueID\), Flag: expr\.QueueFlagBypass\}/xtNFQueue(uint16(n.nfQueueID), true)/' \
        "$package/dnsagent.go"
    if grep -rn 'expr\.Queue' --include='*.go' --exclude='*_test.go' "$1"; then
        echo "k8s-test.sh: $NETPOL_MODULE@$NETPOL_VERSION: the NFQUEUE change no longer applies (above)" >&2
        return 1
    fi
}

# kube-network-policies from its Go module (main package ./cmd, which the module's own
# Dockerfile builds as /bin/netpol, what the chart runs), in the variant netpol_variant
# chose. It speaks nftables over netlink itself (google/nftables): no nft tool needed.
build_netpol() {
    netpol_variant
    local dir=$K8S_CACHE/kube-network-policies-$NETPOL_IMAGE_TAG
    if [ -f "$dir/.complete" ]; then
        echo "== kube-network-policies $NETPOL_IMAGE_TAG: cached in $dir"
        return
    fi
    go_env
    echo "== building kube-network-policies $NETPOL_IMAGE_TAG from its Go module"
    local module src=$K8S_CACHE/build-netpol-$NETPOL_IMAGE_TAG
    module=$(cd "$K8S_CACHE" && go mod download -json "$NETPOL_MODULE@$NETPOL_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    [ -d "$module" ] || { echo "k8s-test.sh: cannot download $NETPOL_MODULE@$NETPOL_VERSION" >&2; exit 1; }
    rm -rf "$src" "$dir"
    cp -r "$module" "$src"
    chmod -R u+w "$src"
    [ "$NETPOL_IMAGE_TAG" = "$NETPOL_VERSION" ] || netpol_patch "$src" || exit 1
    mkdir -p "$dir"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$dir/netpol" ./cmd) \
        >"$K8S_CACHE/netpol-build.log" 2>&1 || { tail -30 "$K8S_CACHE/netpol-build.log" >&2; exit 1; }
    rm -rf "$src"
    touch "$dir/.complete"
}

# The Debian mirror this machine's apt uses (deb822 or one-line format).
debian_mirror() {
    local mirror
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    echo "${mirror:-http://deb.debian.org/debian}"
}

image_present() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# Commits the root filesystem in directory $1 as image $2.
commit_rootfs() {
    local container
    container=$(buildah from scratch)
    buildah copy --quiet "$container" "$1" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$container"
    buildah commit --quiet "$container" "$2" >/dev/null
    buildah rm "$container" >/dev/null
}

# The Containerfile's two bases, made locally: Debian bookworm (debootstrap minbase, this
# machine's mirror and apt sources) and, on it, a Rust toolchain (this machine's, copied:
# rustup cannot download one here) with gcc and libc headers, as in the official image.
build_base_images() {
    if ! image_present "$BASE_DEBIAN"; then
        echo "== base image $BASE_DEBIAN (debootstrap, once)"
        local root=$K8S_CACHE/rootfs-bookworm
        rm -rf "$root.partial"
        debootstrap --variant=minbase bookworm "$root.partial" "$(debian_mirror)" >"$K8S_CACHE/debootstrap.log" 2>&1 ||
            { tail -20 "$K8S_CACHE/debootstrap.log" >&2; exit 1; }
        rm -rf "$root.partial/var/cache/apt/archives/"*.deb "$root.partial/var/lib/apt/lists/"*
        commit_rootfs "$root.partial" "$BASE_DEBIAN"
        rm -rf "$root.partial"
    fi
    if ! image_present "$BASE_RUST"; then
        echo "== base image $BASE_RUST (this machine's Rust toolchain, once)"
        local toolchain
        toolchain=$(rustc --print sysroot)
        local container
        container=$(buildah from "$BASE_DEBIAN")
        buildah run --isolation chroot "$container" -- sh -ec \
            'apt-get update -qq && apt-get install -y -qq --no-install-recommends gcc libc6-dev ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*'
        buildah copy --quiet "$container" "$toolchain" /usr/local/rust >/dev/null
        buildah config --env CARGO_HOME=/usr/local/cargo \
            --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            "$container"
        buildah commit --quiet "$container" "$BASE_RUST" >/dev/null
        buildah rm "$container" >/dev/null
    fi
}

# An image from the files in directory $1 (an entrypoint $3), as $2.
image_from_dir() {
    local container
    container=$(buildah from scratch)
    buildah copy --quiet "$container" "$1" / >/dev/null
    buildah config --entrypoint "$3" "$container"
    buildah commit --quiet "$container" "$2" >/dev/null
    buildah rm "$container" >/dev/null
}

# Saves image $2, with entrypoint $3, made of what `$4 DIR` puts in an empty directory,
# as the docker archive $1 (for `ctr images import`); once.
archive_image() {
    local archive=$1 image=$2 entrypoint=$3 fill=$4
    [ -f "$archive" ] && return
    local dir=$archive.root
    rm -rf "$dir" && mkdir -p "$dir"
    "$fill" "$dir"
    image_from_dir "$dir" "$image" "$entrypoint"
    buildah push --quiet "$image" "docker-archive:$archive:$image"
    rm -rf "$dir"
}

fill_pause() { cp "$K8S_BIN/pause" "$1/pause"; }

# agnhost (the e2e test server and client) and busybox for ping and a shell. (busybox's
# wget and nc crash here: a static glibc binary cannot load NSS to look up an address;
# the checks use agnhost's /dial instead.)
fill_test() {
    mkdir -p "$1/bin" "$1/tmp"
    cp "$K8S_BIN/agnhost" "$1/agnhost"
    cp /bin/busybox "$1/bin/busybox"
    local applet
    for applet in sh ping sleep cat hostname; do ln -s busybox "$1/bin/$applet"; done
}

fill_coredns() { cp "$K8S_CACHE/coredns-$COREDNS_VERSION/coredns" "$1/coredns"; }

# The chart's sidecar runs /bin/netpol; as in the module's own image (distroless/static),
# the static binary and /tmp.
fill_netpol() {
    mkdir -p "$1/bin" "$1/tmp"
    cp "$K8S_CACHE/kube-network-policies-$NETPOL_IMAGE_TAG/netpol" "$1/bin/netpol"
}

# The docker archives of the images every node's containerd imports.
image_archives() {
    echo "$IMAGES_DIR/pause.tar" "$IMAGES_DIR/test-$K8S_VERSION.tar" \
        "$IMAGES_DIR/coredns-$COREDNS_VERSION.tar" "$IMAGES_DIR/netpol-$NETPOL_IMAGE_TAG.tar" \
        "$IMAGES_DIR/weft.tar" ${EXTRA_IMAGE_ARCHIVES:-}
}

# The sandbox image (pause), the test image, CoreDNS's, kube-network-policies', and weft's
# image from the Containerfile, each saved as a docker archive.
build_images() {
    mkdir -p "$IMAGES_DIR"
    build_base_images
    archive_image "$IMAGES_DIR/pause.tar" "$PAUSE_IMAGE" '["/pause"]' fill_pause
    archive_image "$IMAGES_DIR/test-$K8S_VERSION.tar" "$TEST_IMAGE" '["/agnhost"]' fill_test
    archive_image "$IMAGES_DIR/coredns-$COREDNS_VERSION.tar" "$COREDNS_IMAGE" '["/coredns"]' fill_coredns
    archive_image "$IMAGES_DIR/netpol-$NETPOL_IMAGE_TAG.tar" "$NETPOL_IMAGE_REPOSITORY:$NETPOL_IMAGE_TAG" \
        '["/bin/netpol"]' fill_netpol
    # weft's image: the users' recipe, the repository's Containerfile, on the local bases.
    # The host's cargo registry is lent to the build stage so crates are not fetched again.
    echo "== weft's image from Containerfile (buildah; compiling weftd takes ~5 min when the sources changed)"
    local started=$SECONDS
    mkdir -p "${CARGO_HOME:-$HOME/.cargo}/registry"
    buildah bud --isolation chroot --layers --quiet \
        --build-arg BUILD_IMAGE="$BASE_RUST" --build-arg RUNTIME_IMAGE="$BASE_DEBIAN" \
        --volume "${CARGO_HOME:-$HOME/.cargo}/registry:/usr/local/cargo/registry" \
        -t "$WEFT_IMAGE_REPOSITORY:$WEFT_IMAGE_TAG" -f Containerfile . >"$K8S_CACHE/weft-image.log" 2>&1 ||
        { tail -30 "$K8S_CACHE/weft-image.log" >&2; echo "k8s-test.sh: weft's image did not build (log: $K8S_CACHE/weft-image.log)" >&2; exit 1; }
    # Crates the build fetched into a sudo user's registry are theirs again.
    if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
        chown -R --from=0 "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "${CARGO_HOME:-$HOME/.cargo}/registry"
    fi
    rm -f "$IMAGES_DIR/weft.tar"
    buildah push --quiet "$WEFT_IMAGE_REPOSITORY:$WEFT_IMAGE_TAG" \
        "docker-archive:$IMAGES_DIR/weft.tar:$WEFT_IMAGE_REPOSITORY:$WEFT_IMAGE_TAG"
    echo "   weft's image built in $((SECONDS - started)) s"
}
