//! The real-cluster and conformance tiers' shell libraries (scripts/k8s/), read by the
//! tests that keep those slow tiers consistent without running them.

use std::process::Command;

/// The tier's scripts, each checked with `bash -n`.
pub const SCRIPTS: [&str; 7] = [
    "scripts/k8s-test.sh",
    "scripts/k8s/build.sh",
    "scripts/k8s/cluster.sh",
    "scripts/k8s/checks.sh",
    "scripts/k8s/tier.sh",
    "scripts/k8s-conformance.sh",
    "scripts/k8s/e2e.sh",
];

/// Runs `command` in bash with every library of the tier sourced (they only define
/// variables and functions), from the repository's root, with the tier's defaults (the
/// caller's WEFT_K8S_VERSION and WEFT_K8S_CACHE removed); returns its standard output.
pub fn tier(command: &str) -> String {
    let script = format!(
        ". scripts/k8s/build.sh && . scripts/k8s/cluster.sh && . scripts/k8s/tier.sh && \
         . scripts/k8s/checks.sh && . scripts/k8s/e2e.sh && {command}"
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(super::chart::repo())
        .env_remove("WEFT_K8S_VERSION")
        .env_remove("WEFT_K8S_CACHE")
        .output()
        .expect("bash");
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}
