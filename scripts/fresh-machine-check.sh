#!/usr/bin/env bash
# Manual tier (minutes, not part of CI): the README's two commands on a fresh Debian machine.
#
# A fresh clone passes on a developer's machine even when it would fail on a new one,
# because of packages installed by hand long ago. This script builds a minimal Debian
# bookworm root filesystem with debootstrap (once; cached in $WEFT_FRESH_ROOT, default
# /var/cache/weft-fresh-root) and, for each run, puts a throwaway overlay on top of it,
# bind-mounts the host's Rust toolchain (read-only) and a fresh `git clone` of this
# repository's HEAD into it, and runs `./scripts/demo.sh` then `./scripts/test.sh` there
# with chroot, printing each command's result and duration.
#
#   ./scripts/fresh-machine-check.sh            as root (a container, a cloud image, CI)
#   ./scripts/fresh-machine-check.sh --as-user  as a user with sudo (the run installs sudo
#                                               and adds user `dev` before the commands)
#   ./scripts/fresh-machine-check.sh --vagrant  the Vagrant tier's install step instead
#                                               (`scripts/vagrant-test.sh --install-only`), on
#                                               a root that carries a newer qemu-utils (a
#                                               backport), as this machine kind's image does
#
# Safety: every mount lives in a private mount and PID namespace (unshare) that dies with
# the run, so nothing can stay mounted; the toolchain is bound read-only; the cached root is
# never deleted, and a run's directory only after /proc/mounts shows nothing under it.
# Set WEFT_FRESH_KEEP=1 to keep the run's directory (the clone, target/, the overlay).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/common.sh

CACHE=${WEFT_FRESH_ROOT:-/var/cache/weft-fresh-root}
BASE=$CACHE/bookworm # debootstrap's output; never changed after it is complete
RUN=$CACHE/run       # this run: overlay layers, the merged root, the clone, logs
SUITE=bookworm
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
USER_PATH=/usr/local/bin:/usr/bin:/bin

# ---------------------------------------------------------------------------------------
# Inside `unshare --mount --pid --fork --propagation private`: mount, run, report.
if [ "${1:-}" = --inner ]; then
    trap 'exit 130' INT TERM # we are PID 1 of the namespace: signals need a handler
    M=$RUN/root
    mount -t overlay weft-fresh -o "lowerdir=$BASE,upperdir=$RUN/upper,workdir=$RUN/work" "$M"
    mount -t proc proc "$M/proc"
    mount --rbind /sys "$M/sys"
    mount --rbind /dev "$M/dev"
    mount -t tmpfs -o mode=0755 tmpfs "$M/run"
    mkdir -p "$M/run/netns" "$M/run/lock"
    # The host's network setup, as a machine on this network would have it: its resolver,
    # its hostname (sudo looks it up) and its site-local CA certificates (an HTTPS proxy's;
    # the ca-certificates package, which setup.sh installs, picks them up).
    cp /etc/resolv.conf "$M/etc/resolv.conf"
    [ -e "$M/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$M/etc/hosts"
    grep -qw "$(hostname)" "$M/etc/hosts" || printf '127.0.1.1\t%s\n' "$(hostname)" >>"$M/etc/hosts"
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$M/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$M/usr/local/share/ca-certificates/"
    fi

    in_root() { chroot "$M" /usr/bin/env -i PATH=$SYSTEM_PATH LANG=C.UTF-8 "$@"; }
    if [ "$AS_USER" = true ]; then
        start=$(date +%s)
        in_root bash -c 'export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq && apt-get install -y -qq --no-install-recommends sudo >/dev/null
            useradd -m -s /bin/bash dev
            echo "dev ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/dev && chmod 0440 /etc/sudoers.d/dev'
        echo "== machine setup: sudo installed, user dev may use it ($(($(date +%s) - start)) s)"
        HOMEDIR=/home/dev
        OWNER=$(in_root id -u dev):$(in_root id -g dev)
    else
        HOMEDIR=/root
        OWNER=0:0
    fi
    mkdir -p "$M$HOMEDIR/.rustup" "$M$HOMEDIR/.cargo/bin" "$M$HOMEDIR/weft"
    chown "$OWNER" "$M$HOMEDIR/.cargo"
    chown -R "$OWNER" "$RUN/weft"
    for pair in "$RUSTUP_DIR:$HOMEDIR/.rustup" "$CARGO_BIN_DIR:$HOMEDIR/.cargo/bin"; do
        mount --bind "${pair%%:*}" "$M${pair#*:}"
        mount -o remount,bind,ro "$M${pair#*:}"
        if touch "$M${pair#*:}/.weft-write-probe" 2>/dev/null; then
            rm -f "$M${pair#*:}/.weft-write-probe"
            echo "fresh-machine-check: $M${pair#*:} is writable; refusing to go on" >&2
            exit 1
        fi
    done
    mount --bind "$RUN/weft" "$M$HOMEDIR/weft"

    echo "== mounted in the private namespace (gone when it ends):"
    grep -F " $M" /proc/mounts | sed "s| $M| <root>|" |
        awk '$2 !~ "^<root>/(sys|dev)/" { split($4, o, ","); printf "   %s (%s, %s)\n", $2, $3, o[1] }'
    : >"$RUN/logs/summary"
    commands=(./scripts/demo.sh ./scripts/test.sh)
    if [ "$MODE" = vagrant ]; then
        # What the image of this machine kind carries: a qemu-utils newer than the
        # release's (from bookworm-backports), whose Breaks stop the release's
        # qemu-system-x86 from installing next to it. The backports list is gone
        # afterwards, as on the image.
        start=$(date +%s)
        in_root bash -c "export DEBIAN_FRONTEND=noninteractive
            echo 'deb $MIRROR $SUITE-backports main' >/etc/apt/sources.list.d/backports.list
            apt-get update -qq && apt-get install -y -qq --no-install-recommends -t $SUITE-backports qemu-utils >/dev/null
            rm /etc/apt/sources.list.d/backports.list && apt-get update -qq"
        echo "== machine setup: qemu-utils $(in_root dpkg-query -W -f '${Version}' qemu-utils) from $SUITE-backports ($(($(date +%s) - start)) s)"
        commands=("./scripts/vagrant-test.sh --install-only")
    fi
    for command in "${commands[@]}"; do
        echo
        echo "== [$MODE] $command"
        start=$(date +%s.%N)
        set +e
        if [ "$AS_USER" = true ]; then
            chroot --userspec="$OWNER" "$M" /usr/bin/env -i HOME=/home/dev USER=dev LOGNAME=dev \
                PATH=/home/dev/.cargo/bin:$USER_PATH LANG=C.UTF-8 TERM=dumb \
                /bin/bash -c "cd ~/weft && $command" </dev/null 2>&1 | tee "$RUN/logs/${command##*/}.log"
        else
            chroot "$M" /usr/bin/env -i HOME=/root USER=root LOGNAME=root \
                PATH=/root/.cargo/bin:$SYSTEM_PATH LANG=C.UTF-8 TERM=dumb \
                /bin/bash -c "cd ~/weft && $command" </dev/null 2>&1 | tee "$RUN/logs/${command##*/}.log"
        fi
        status=${PIPESTATUS[0]}
        set -e
        seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%d", e - s + 0.5 }')
        result=ok
        [ "$status" -eq 0 ] || result="FAILED (exit $status)"
        last=$(grep -E '^weft: [0-9]+ passed|^vagrant-test: ' "$RUN/logs/${command##*/}.log" | tail -1 || true)
        printf '%s\t%s\t%dm%02ds\t%s\n' "$command" "$result" $((seconds / 60)) $((seconds % 60)) "$last" \
            >>"$RUN/logs/summary"
    done

    # A clean run leaves no process and no network namespace behind. (The kernel kills
    # any leftover process when this PID 1 exits; this only reports them.)
    for p in "$M"/proc/[0-9]*; do
        pid=${p##*/}
        [ "$pid" = 1 ] || [ "$pid" = "$BASHPID" ] && continue
        read -r comm 2>/dev/null <"$p/comm" || continue
        echo "leftover process: $comm ($pid)" >>"$RUN/logs/leftovers"
    done
    for ns in "$M"/run/netns/*; do
        [ -e "$ns" ] && echo "leftover network namespace: ${ns##*/}" >>"$RUN/logs/leftovers"
    done
    exit 0
fi

# ---------------------------------------------------------------------------------------
# Outside: prerequisites, the cached root, a fresh run directory and clone, the summary.
become_root scripts/fresh-machine-check.sh "$@"
case "${1:-}" in
    "") AS_USER=false MODE=root ;;
    --as-user) AS_USER=true MODE="user with sudo" ;;
    --vagrant) AS_USER=false MODE=vagrant ;;
    *) echo "usage: $0 [--as-user | --vagrant]" >&2; exit 2 ;;
esac

# Refuses to delete a directory while anything is mounted under it.
safe_remove() {
    if grep -qF " $1" /proc/mounts; then
        echo "fresh-machine-check: something is mounted under $1; not deleting it:" >&2
        grep -F " $1" /proc/mounts >&2
        exit 1
    fi
    rm -rf --one-file-system "$1"
}

# The Rust toolchain to lend the root: rustup's proxies and toolchains.
CARGO_BIN_DIR=$(dirname "$(command -v cargo 2>/dev/null || echo /nonexistent/cargo)")
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
if [ ! -x "$CARGO_BIN_DIR/rustup" ] || [ ! -d "$RUSTUP_DIR/toolchains" ]; then
    echo "fresh-machine-check: needs a rustup toolchain (cargo on PATH next to rustup, and" >&2
    echo "\$RUSTUP_HOME or ~/.rustup); found cargo in '$CARGO_BIN_DIR', rustup home '$RUSTUP_DIR'" >&2
    exit 1
fi

missing=()
for tool in debootstrap unshare chroot git; do type -P "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} on this machine"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
grep -qw overlay /proc/filesystems || { echo "fresh-machine-check: the kernel has no overlayfs" >&2; exit 1; }

mkdir -p "$CACHE"
chmod 0700 "$CACHE"
exec 9>"$CACHE/lock"
flock -n 9 || { echo "fresh-machine-check: another run holds $CACHE/lock" >&2; exit 1; }

# The Debian mirror this machine uses (deb822 or one-line format).
MIRROR=${WEFT_FRESH_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }')}
MIRROR=${MIRROR:-$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR=${MIRROR%/}

if [ ! -d "$BASE" ]; then
    [ -e "$BASE.partial" ] && safe_remove "$BASE.partial"
    echo "== debootstrap --variant=minbase $SUITE from $MIRROR (once; cached in $BASE)"
    start=$(date +%s)
    unshare --mount --propagation private -- \
        debootstrap --variant=minbase "$SUITE" "$BASE.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    # What a fresh image lists: the release, its updates and security updates.
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s-security %s-security main\n' \
        "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" >"$BASE.partial/etc/apt/sources.list"
    mv "$BASE.partial" "$BASE"
    echo "   done in $(($(date +%s) - start)) s"
else
    echo "== cached root filesystem: $BASE ($(cat "$BASE/etc/debian_version") minbase)"
fi

[ -e "$RUN" ] && safe_remove "$RUN"
mkdir -p "$RUN/upper" "$RUN/work" "$RUN/root" "$RUN/logs"
COMMIT=$(git rev-parse HEAD)
git clone -q --no-hardlinks "$(pwd)" "$RUN/weft"
git -C "$RUN/weft" checkout -q --detach "$COMMIT"
[ -z "$(git status --porcelain)" ] || echo "   note: uncommitted changes are not checked (the clone is of HEAD)"
echo "== fresh clone of ${COMMIT:0:7} ($(git log -1 --format=%s "$COMMIT" | cut -c1-60))"

export RUN BASE AS_USER MODE RUSTUP_DIR CARGO_BIN_DIR SYSTEM_PATH USER_PATH MIRROR SUITE
set +e
unshare --mount --pid --fork --propagation private -- bash "$(pwd)/scripts/fresh-machine-check.sh" --inner
inner=$?
set -e

left=$(grep -cF " $RUN" /proc/mounts || true)
echo
echo "== fresh-machine-check: Debian $(cat "$BASE/etc/debian_version") minbase, as $MODE, weft ${COMMIT:0:7} (the commit cloned; HEAD may have moved since)"
failed=0
if [ -s "$RUN/logs/summary" ]; then
    while IFS=$'\t' read -r command result duration last; do
        printf '   %-18s %-18s %7s   %s\n' "$command" "$result" "$duration" "$last"
        [ "$result" = ok ] || failed=1
    done <"$RUN/logs/summary"
else
    echo "   the run stopped before the commands (exit $inner)"
    failed=1
fi
[ -s "$RUN/logs/leftovers" ] && sed 's/^/   /' "$RUN/logs/leftovers"
echo "   mounts left behind on this machine: $left"
[ "$inner" -eq 0 ] || failed=1

logs=$CACHE/logs/$(date +%Y%m%d-%H%M%S)-${MODE// /-}
mkdir -p "$logs"
cp "$RUN"/logs/* "$logs"/
echo "   logs: $logs"
if [ "${WEFT_FRESH_KEEP:-}" = 1 ]; then
    echo "   kept: $RUN"
else
    safe_remove "$RUN"
fi
exit "$failed"
