//! `weft install`, run as the chart's init containers run it: the plugin copies itself and
//! a checked conflist into place; a broken conflist fails with the reason and changes
//! nothing; and a CNI runtime (which always sets `CNI_COMMAND`) can never trigger it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{COMMAND_TIMEOUT, Call, PLUGIN, mode, run_bounded};
use std::path::Path;
use std::process::Command;

const CONFLIST: &str = r#"{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

/// Runs the plugin binary with `args` and no CNI variables at all, as an init container
/// (whose environment has none) does.
fn weft(args: &[&str], cni_command: Option<&str>) -> common::Output {
    let mut cmd = Command::new(PLUGIN);
    cmd.args(args);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CNI_") {
            cmd.env_remove(var);
        }
    }
    if let Some(command) = cni_command {
        cmd.env("CNI_COMMAND", command);
    }
    run_bounded(cmd, b"", COMMAND_TIMEOUT)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn install_copies_the_plugin_and_the_conflist_and_the_copy_is_a_working_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("kube-flannel/cni-conf.json");
    std::fs::create_dir_all(from.parent().unwrap()).unwrap();
    std::fs::write(&from, CONFLIST).unwrap();
    // The destination directories do not exist yet (a fresh node).
    let binary = dir.path().join("opt/cni/bin/flannel");
    let conflist = dir.path().join("etc/cni/net.d/10-flannel.conflist");
    // An older plugin is replaced.
    std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
    std::fs::write(&binary, b"old plugin").unwrap();

    let out = weft(
        &[
            "install",
            "--binary-to",
            s(&binary),
            "--conflist-from",
            s(&from),
            &format!("--conflist-to={}", s(&conflist)),
        ],
        None,
    );
    out.assert_success();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("installed {}", binary.display()))
            && stdout.contains(&format!("installed {}", conflist.display())),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        std::fs::read(PLUGIN).unwrap()
    );
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(std::fs::read_to_string(&conflist).unwrap(), CONFLIST);
    assert_eq!(mode(&conflist), 0o644);
    for installed_dir in [binary.parent().unwrap(), conflist.parent().unwrap()] {
        let names: Vec<_> = std::fs::read_dir(installed_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "temporary files left: {names:?}");
    }

    // The installed copy answers the runtime as the plugin does.
    let mut call = Call::new("VERSION");
    let binary_path = binary.to_str().unwrap().to_owned();
    call.binary = &binary_path;
    let version = call.run("");
    version.assert_success();
    assert_eq!(version.json()["supportedVersions"][5], "1.0.0");
}

#[test]
fn a_broken_conflist_fails_with_the_reason_and_leaves_the_node_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let from = dir.path().join("cni-conf.json");
    let conflist = dir.path().join("10-flannel.conflist");
    let binary = dir.path().join("flannel");
    std::fs::write(&conflist, CONFLIST).unwrap();
    for (broken, reason) in [
        (
            r#"{"name":"cbr0","plugins":[{"type":"flannel"},]}"#,
            "not JSON",
        ),
        (r#"{"name":"cbr0","type":"flannel"}"#, "no plugins in list"),
        (
            r#"{"name":"cbr0","plugins":[{"delegate":{}}]}"#,
            "plugin 0 has no \"type\"",
        ),
    ] {
        std::fs::write(&from, broken).unwrap();
        let out = weft(
            &[
                "install",
                "--binary-to",
                s(&binary),
                "--conflist-from",
                s(&from),
                "--conflist-to",
                s(&conflist),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{broken}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "weft install: error: {} is not a valid CNI conflist: {reason}",
                from.display()
            )),
            "{broken}: {}",
            out.stderr
        );
        assert_eq!(std::fs::read_to_string(&conflist).unwrap(), CONFLIST);
        assert!(!binary.exists());
    }

    let missing = dir.path().join("missing.json");
    let out = weft(
        &[
            "install",
            "--conflist-from",
            s(&missing),
            "--conflist-to",
            s(&conflist),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains(&format!("cannot read the conflist {}", missing.display())),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_exit_2_with_the_usage() {
    for args in [
        &["install"][..],
        &["install", "--binary-to"],
        &["install", "--conflist-from", "/x"],
        &["install", "--frobnicate"],
    ] {
        let out = weft(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("usage: weft install"), "{}", out.stderr);
    }
    let help = weft(&["install", "--help"], None);
    help.assert_success();
    assert!(String::from_utf8_lossy(&help.stdout).starts_with("usage: weft install"));
}

#[test]
fn a_cni_runtime_never_triggers_install() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("flannel");
    let install = ["install", "--binary-to", s(&target)];

    // With CNI_COMMAND set (to anything, even empty) the arguments are ignored: this is a
    // CNI call, answered as one.
    let version = weft(&install, Some("VERSION"));
    version.assert_success();
    assert_eq!(version.json()["cniVersion"], "1.0.0");
    let add = weft(&install, Some("ADD"));
    assert!(!add.status.success());
    assert!(add.json()["code"].is_u64(), "a CNI error object");
    let empty = weft(&install, Some(""));
    assert!(String::from_utf8_lossy(&empty.stdout).is_empty());
    assert!(empty.stderr.contains("CNI plugin weft"), "{}", empty.stderr);

    // Without CNI_COMMAND, only an exact first argument `install` installs.
    for args in [
        &["installx", "--binary-to", s(&target)][..],
        &["--binary-to", s(&target), "install"],
        &["INSTALL", "--binary-to", s(&target)],
    ] {
        let out = weft(args, None);
        out.assert_success();
        assert!(out.stderr.contains("CNI plugin weft"), "{}", out.stderr);
    }
    assert!(!target.exists(), "nothing was installed");
}
