# Sourced by the scripts in this directory: running as root (through sudo when the user is
# not root), and building as the user who owns the checkout.

# ip, bridge and sysctl live in sbin directories, which a user's PATH (kept through sudo)
# may lack.
for dir in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$dir:"*) ;; *) PATH=$PATH:$dir ;; esac
done
unset dir

# Re-runs the calling script as root when it is not: through sudo if sudo exists, keeping
# the caller's Rust toolchain (sudo resets PATH and HOME) and the few variables the scripts
# read. Without sudo it says how to run it instead. Usage: become_root "$0" "$@"
become_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    local script name
    script=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
    name=$(basename "$1")
    shift
    if ! command -v sudo >/dev/null 2>&1; then
        echo "$name: needs root (it installs packages and creates network namespaces)," >&2
        echo "$name: you are not root and sudo is not installed. Run it from a root shell" >&2
        echo "$name: that has Rust on its PATH: $script${*:+ $*}" >&2
        exit 1
    fi
    echo "$name: not root, re-running through sudo" >&2
    local keep=(PATH="$PATH" CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}" RUSTUP_HOME="${RUSTUP_HOME:-$HOME/.rustup}")
    local var
    for var in CARGO_TARGET_DIR CI RUST_LOG WEFT_DEMO_NO_CLEANUP WEFT_FRESH_ROOT WEFT_FRESH_MIRROR \
        WEFT_HOT_ALLOW_STALE WEFT_HOT_MIN_SHARE \
        WEFT_K8S_VERSION WEFT_K8S_CACHE WEFT_K8S_LOGS WEFT_K8S_KEEP WEFT_K8S_TIMEOUT WEFT_K8S_COREDNS_VERSION WEFT_E2E_PROCS; do
        [ -n "${!var+x}" ] && keep+=("$var=${!var}")
    done
    exec sudo env "${keep[@]}" "$script" "$@"
}

# Where cargo puts its output.
TARGET_DIR=${CARGO_TARGET_DIR:-$(pwd)/target}

# Runs a command (cargo) as the user who ran the script through sudo, when that user owns
# the checkout, so that target/ and ~/.cargo stay theirs. As plain root: just runs it.
as_builder() {
    if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ] && [ "$(stat -c %u .)" = "$SUDO_UID" ]; then
        local home
        home=$(getent passwd "$SUDO_UID" | cut -d: -f6)
        setpriv --reuid="$SUDO_UID" --regid="${SUDO_GID:-$SUDO_UID}" --init-groups \
            env HOME="${home:-$HOME}" USER="${SUDO_USER:-}" "$@"
    else
        "$@"
    fi
}

# Gives files that root created in the target directory back to the sudo user (cargo test
# runs as root, and may have to write there).
return_target_dir() {
    if [ -n "${SUDO_UID:-}" ] && [ "${SUDO_UID}" != 0 ] && [ -d "$TARGET_DIR" ] \
        && [ "$(stat -c %u "$TARGET_DIR")" = "$SUDO_UID" ]; then
        chown -R --from=0 "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$TARGET_DIR"
    fi
}

# The shipped build of weftd (Cargo.toml's `dist` profile), into $TARGET_DIR/dist/weftd:
# v0 symbol names and scripts/link-hot-first as the linker, which places the functions
# of scripts/weftd-hot-functions.txt first, and relative relocations packed (RELR, glibc
# 2.36+) instead of a 0.5 MB table read at every start (docs/benchmarks.md, "Hot code
# first"). The Containerfile builds the same way. Runs as the builder (see as_builder).
DIST_RUSTFLAGS="-C symbol-mangling-version=v0 -C link-arg=-Wl,-z,pack-relative-relocs"
dist_build() {
    as_builder env RUSTFLAGS="$DIST_RUSTFLAGS" \
        CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER="$(pwd)/scripts/link-hot-first" \
        cargo build --profile dist --locked --bin weftd "$@"
}
