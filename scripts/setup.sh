#!/usr/bin/env bash
# Checks for everything that building weft, the demo and the test suite use, by looking
# for the thing itself (a command, a file, a header that compiles), and installs what is
# missing with apt-get (Debian/Ubuntu). Anything still missing afterwards is reported by
# name, with the command that fixes it. Idempotent; installs need root.
#
#   ./scripts/setup.sh          what the test suite needs (everything)
#   ./scripts/setup.sh demo     what the demo needs (no rustfmt/clippy)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

mode=${1:-test}
case "$mode" in test | demo) ;; *) echo "usage: $0 [test|demo]" >&2; exit 2 ;; esac

scratch=$(mktemp -d /tmp/weft-setup.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# protoc finds its well-known types (google/protobuf/*.proto) next to itself, as
# etcd-client's build script needs them. Debian ships them in libprotobuf-dev.
protoc_includes() {
    command -v protoc >/dev/null 2>&1 || return 1
    printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\n' >"$scratch/probe.proto"
    protoc -I "$scratch" --include_imports -o "$scratch/probe.pb" "$scratch/probe.proto" >/dev/null 2>&1
}
# ring and other build scripts compile C; rustc links through cc.
c_compiler() {
    command -v cc >/dev/null 2>&1 || return 1
    printf '#include <stdio.h>\nint main(void) { return puts("") < 0; }\n' >"$scratch/probe.c"
    cc "$scratch/probe.c" -o "$scratch/probe" >/dev/null 2>&1
}
have() { local c; for c in "$@"; do type -P "$c" >/dev/null || return 1; done; }
cni_plugins() { [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ]; }
# Quiet: a check's output would be taken for a missing entry.
python_pip() { python3 -m pip --version >/dev/null 2>&1; }

# What | how to check | Debian package. Who uses it is in the comment.
checks=(
    "etcd|have etcd|etcd-server"                        # demo, tests
    "etcdctl|have etcdctl|etcd-client"                  # demo, tests
    "protoc|have protoc|protobuf-compiler"              # build (etcd-client)
    "protoc's include files (google/protobuf/descriptor.proto)|protoc_includes|libprotobuf-dev"
    "a C compiler with libc headers (cc)|c_compiler|gcc libc6-dev" # build (ring), linking
    "CA certificates (/etc/ssl/certs/ca-certificates.crt)|test -s /etc/ssl/certs/ca-certificates.crt|ca-certificates" # cargo downloads
    "CNI plugins bridge and host-local in /usr/lib/cni|cni_plugins|containernetworking-plugins"
    "ip and bridge|have ip bridge|iproute2"             # demo, tests
    "ping|have ping|iputils-ping"                       # demo, tests
    "curl|have curl|curl"                               # demo, tests (/readyz)
    "openssl|have openssl|openssl"                      # tests (TLS certificates)
    "sysctl and kill|have sysctl kill|procps"           # demo, tests
    "prlimit, setpriv|have prlimit setpriv|util-linux"  # tests, scripts
    "python3 with pip|python_pip|python3 python3-pip" # tests (chart tools, metrics parser)
    "iptables, iptables-legacy, iptables-nft|have iptables iptables-legacy iptables-nft|iptables" # traffic rules, tests
    "nft|have nft|nftables"                             # traffic rules (nftables mode), tests
    "ethtool|have ethtool|ethtool"                      # tests (the VXLAN device's offload, read back)
    "wg|have wg|wireguard-tools"                        # tests (the wireguard backend's devices, read back; a flannel-shaped node)
    "tcpdump|have tcpdump|tcpdump"                      # tests (what crosses the underlay with wireguard)
    "iperf3|have iperf3|iperf3"                         # scripts/bench.sh wireguard
)

missing() {
    local entry what check
    for entry in "${checks[@]}"; do
        IFS='|' read -r what check _ <<<"$entry"
        eval "$check" || echo "$entry"
    done
}

todo=$(missing)
if [ -n "$todo" ]; then
    packages=$(cut -d'|' -f3 <<<"$todo" | tr '\n' ' ')
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: missing: $(cut -d'|' -f1 <<<"$todo" | paste -sd, | sed 's/,/, /g')"
        become_root scripts/setup.sh "$@"
    fi
    if command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: installing ${packages% }"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || echo "setup.sh: apt-get update failed; trying the install anyway" >&2
        # Its exit status decides nothing: the checks below do.
        apt-get install -y -qq --no-install-recommends $packages >"$scratch/apt.log" 2>&1 ||
            { echo "setup.sh: apt-get install failed:" >&2; tail -5 "$scratch/apt.log" >&2; }
    fi
    todo=$(missing)
    if [ -n "$todo" ]; then
        echo "setup.sh: still missing (install it, then run the command again):" >&2
        while IFS='|' read -r what _ package; do
            echo "  - $what: apt-get install $package" >&2
        done <<<"$todo"
        exit 1
    fi
fi

# Debian's etcd-server package starts a system etcd where systemd runs; weft's tests and
# demo start their own etcd instances and never use it.

# Rust: not a package. Under sudo, the caller's toolchain comes through PATH/CARGO_HOME.
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: cargo not found. weft needs Rust >= 1.89:" >&2
    echo "  curl https://sh.rustup.rs -sSf | sh   (then open a new shell)" >&2
    if [ -n "${SUDO_USER:-}" ]; then
        echo "  If Rust is installed for $SUDO_USER: run the script without sudo; it calls sudo itself" >&2
        echo "  and keeps your toolchain." >&2
    fi
    exit 1
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "$rust_minor" -lt 89 ]; then
    echo "setup.sh: $(rustc --version) is too old; weft needs Rust >= 1.89: rustup update stable" >&2
    exit 1
fi
if [ "$mode" = test ]; then
    for component in rustfmt:fmt clippy:clippy; do
        cargo "${component#*:}" --version >/dev/null 2>&1 || {
            echo "setup.sh: cargo ${component#*:} not found: rustup component add ${component%:*}" >&2
            exit 1
        }
    done
fi
# boringtun: a userspace WireGuard (not a Debian package), for the wireguard backend's
# tests on kernels without WireGuard (weftd's --wireguard-userspace). BSD-3-Clause; a
# test tool, not part of weft's binaries.
BORINGTUN_VERSION=0.7.1
if [ "$mode" = test ] && ! /usr/local/bin/boringtun-cli --version 2>/dev/null | grep -q "$BORINGTUN_VERSION"; then
    if [ "$(id -u)" -ne 0 ]; then
        become_root scripts/setup.sh "$@"
    fi
    echo "setup.sh: installing boringtun-cli $BORINGTUN_VERSION into /usr/local/bin (cargo install)"
    cargo install --quiet --locked --root /usr/local --version "$BORINGTUN_VERSION" boringtun-cli ||
        { echo "setup.sh: cargo install boringtun-cli failed" >&2; exit 1; }
fi
echo "setup.sh: everything weft's ${mode/test/test suite} needs is here ($(rustc --version | cut -d' ' -f1-2))"
