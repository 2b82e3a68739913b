//! Helpers for running the built plugin as a container runtime would: `CNI_*` variables in
//! the environment, the network configuration on stdin, stdout and exit status read back.
//! Every wait is bounded; network namespaces are deleted by a drop guard.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_weft");
/// Where Debian's containernetworking-plugins puts bridge and host-local.
pub const SYSTEM_CNI_PATH: &str = "/usr/lib/cni";
/// The longest any single command may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

const CNI_VARS: [&str; 8] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_NETNS_OVERRIDE",
    "CNI_IFNAME_OVERRIDE",
];

#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }

    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout: {}\nstderr: {}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }
}

/// Runs `cmd` with `stdin`, killing it and failing the test after `timeout`.
pub fn run_bounded(cmd: Command, stdin: &[u8], timeout: Duration) -> Output {
    let output = weft_testkit::process::run_bounded(cmd, stdin, timeout);
    Output {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// One plugin invocation, as kubelet's runtime makes it.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub cni_path: &'a str,
    /// Run inside this network namespace (`ip netns exec`), as if on that node.
    pub in_netns: Option<&'a str>,
    /// Run this binary instead of the built one (e.g. a copy named `flannel`).
    pub binary: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str) -> Call<'a> {
        Call {
            command,
            container_id: "weft-test-container",
            netns: "/var/run/netns/none",
            ifname: "eth0",
            cni_path: SYSTEM_CNI_PATH,
            in_netns: None,
            binary: PLUGIN,
        }
    }

    pub fn run(&self, config: &str) -> Output {
        let mut cmd = match self.in_netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, self.binary]);
                cmd
            }
            None => Command::new(self.binary),
        };
        for var in CNI_VARS {
            cmd.env_remove(var);
        }
        for (var, value) in [
            ("CNI_COMMAND", self.command),
            ("CNI_CONTAINERID", self.container_id),
            ("CNI_NETNS", self.netns),
            ("CNI_IFNAME", self.ifname),
            ("CNI_PATH", self.cni_path),
        ] {
            if !value.is_empty() {
                cmd.env(var, value);
            }
        }
        run_bounded(cmd, config.as_bytes(), COMMAND_TIMEOUT)
    }
}

/// A CNI error object as weft prints it.
pub fn cni_error(version: &str, code: u32, msg: &str) -> serde_json::Value {
    serde_json::json!({"cniVersion": version, "code": code, "msg": msg})
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name no other test (or test run) uses at the same time.
pub fn unique_name() -> String {
    format!(
        "wc-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// A network namespace that is deleted when dropped, also when the test panics.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates a namespace. These tests need root: failing to create one fails the test
    /// loudly rather than skipping it.
    pub fn new() -> Netns {
        let name = unique_name();
        let out = run_bounded(ip(&["netns", "add", &name]), b"", COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed ({}): {}. The integration tests need root and \
             iproute2 to create network namespaces; they do not skip.",
            out.status,
            out.stderr.trim()
        );
        Netns { name }
    }

    /// The path the runtime would pass as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n <ns> -j <args>`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-n", self.name.as_str(), "-j"];
        all.extend_from_slice(args);
        let out = run_bounded(ip(&all), b"", COMMAND_TIMEOUT);
        out.assert_success();
        out.json()
    }

    /// Whether `ip -n <ns> link show dev <dev>` finds it.
    pub fn has_link(&self, dev: &str) -> bool {
        let out = run_bounded(
            ip(&["-n", &self.name, "link", "show", "dev", dev]),
            b"",
            COMMAND_TIMEOUT,
        );
        out.status.success()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = run_bounded(ip(&["netns", "del", &self.name]), b"", COMMAND_TIMEOUT);
        if !out.status.success() {
            eprintln!(
                "warning: `ip netns del {}` failed: {}",
                self.name,
                out.stderr.trim()
            );
        }
    }
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Writes subnet.env as weftd does: to a temporary file, then renamed into place.
pub fn write_subnet_env(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The mode bits of a file or directory.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}
