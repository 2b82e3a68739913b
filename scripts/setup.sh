#!/usr/bin/env bash
# Installs what building and testing weft needs on Debian (bookworm): etcd, protoc (for
# etcd-client's build), the CNI plugins, iproute2, curl, iptables and nftables (nftables
# is only recommended by iptables, and recommends are not installed). Idempotent; needs
# root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs packages and the tests create network namespaces)" >&2
    exit 1
fi

packages=(etcd-server etcd-client protobuf-compiler containernetworking-plugins iproute2 iputils-ping curl openssl ca-certificates gcc libc6-dev iptables nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's etcd-server package starts a system etcd where systemd runs; weft's tests and
# demo start their own etcd instances and never use it.

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: cargo not found. weft needs Rust >= 1.89 (install it with rustup)." >&2
    exit 1
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "$rust_minor" -lt 89 ]; then
    echo "setup.sh: $(rustc --version) is too old; weft needs Rust >= 1.89" >&2
    exit 1
fi
