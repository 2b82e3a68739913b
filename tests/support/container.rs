//! Runs a process the way a container runtime (or a node's CNI runtime) runs it, inside a
//! test node's network namespace, with its own root filesystem: a tmpfs in a private mount
//! namespace that holds only
//! - the host's `/usr` (and the `/bin`, `/lib`, ... links into it), read-only, standing for
//!   the base image's C library and tools (Debian bookworm-slim with iptables and nftables,
//!   which the host has too) and the node's system tools;
//! - `/proc`, `/sys` (the network namespace's) and `/dev`;
//! - the [`Mount`]s given: the image's files and the pod's volumes at their mountPaths, or a
//!   node's directories.
//!
//! So the process sees exactly the paths a manifest gives it, and nothing outside the
//! mounted test directories is written. The root and every mount vanish with the process's
//! mount namespace; nothing needs cleaning up.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One path inside the root: `source` (a directory or file on the test host) at `target`.
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

impl Mount {
    pub fn rw(source: impl Into<PathBuf>, target: &str) -> Mount {
        Mount {
            source: source.into(),
            target: target.to_string(),
            read_only: false,
        }
    }

    pub fn ro(source: impl Into<PathBuf>, target: &str) -> Mount {
        Mount {
            read_only: true,
            ..Mount::rw(source, target)
        }
    }
}

/// The PATH of Debian images.
pub const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the root and execs argv[0] in it (`chroot` resolves it inside the root).
const ENTER_ROOT: &str = r#"
set -eu
root=$1; shift
mount -t tmpfs -o mode=0755 weft-test-root "$root"
for top in bin sbin lib lib32 lib64 libx32; do
    if [ -L "/$top" ]; then
        ln -s "$(readlink "/$top")" "$root/$top"
    elif [ -d "/$top" ]; then
        mkdir "$root/$top"; mount --rbind "/$top" "$root/$top"; mount -o remount,bind,ro "$root/$top"
    fi
done
mkdir -m 1777 "$root/tmp"
while [ "$1" != "--" ]; do
    mode=$1; source=$2; target=$root$3; shift 3
    if [ -d "$source" ]; then
        mkdir -p "$target"
    else
        mkdir -p "$(dirname "$target")"; [ -e "$target" ] || : > "$target"
    fi
    mount --rbind "$source" "$target"
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$target"; fi
done
shift
exec chroot "$root" "$@"
"#;

/// `argv` run in `netns` with a root made of the system parts and `mounts`, the
/// environment being exactly `env` plus the image's PATH. `scratch` is an empty
/// directory on the test host used as the mount point of the root (it stays empty).
pub fn command(
    netns: &str,
    scratch: &Path,
    mounts: &[Mount],
    argv: &[String],
    env: &[(String, String)],
) -> Command {
    std::fs::create_dir_all(scratch).expect("root mount point");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns])
        .args(["unshare", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", ENTER_ROOT, "enter-root"])
        .arg(scratch);
    let system = [
        Mount::ro("/usr", "/usr"),
        Mount::rw("/proc", "/proc"),
        Mount::rw("/sys", "/sys"),
        Mount::rw("/dev", "/dev"),
    ];
    for mount in system.iter().chain(mounts) {
        assert!(
            mount.source.exists(),
            "{} (for {}) does not exist",
            mount.source.display(),
            mount.target
        );
        assert!(mount.target.starts_with('/'), "{}", mount.target);
        cmd.arg(if mount.read_only { "ro" } else { "rw" })
            .arg(&mount.source)
            .arg(&mount.target);
    }
    cmd.arg("--").args(argv);
    cmd.env_clear().env("PATH", IMAGE_PATH);
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}
