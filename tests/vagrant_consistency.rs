//! The multi-VM tier (tests/vagrant/Vagrantfile, scripts/vagrant-test.sh) is too slow for
//! CI, so nothing runs it on every change. This pure test keeps it in step with the
//! binaries: the names it copies into the VMs are the workspace's binary targets, every
//! weftd flag it passes exists in `weftd --help`, and the script and the Vagrantfile agree
//! on the addresses, the node names, the plugin name and the subnet file.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use regex::Regex;

#[path = "support/workspace.rs"]
mod workspace;
use workspace::Workspace;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every binary target of the workspace's members.
fn workspace_binaries() -> BTreeSet<String> {
    Workspace::load().binaries()
}

fn weftd_help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--help")
        .output()
        .expect("run weftd --help");
    assert!(output.status.success(), "weftd --help failed");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

/// The one capture of `pattern` in `text`.
fn capture(text: &str, pattern: &str) -> String {
    Regex::new(pattern)
        .unwrap()
        .captures(text)
        .unwrap_or_else(|| panic!("no match for {pattern}"))[1]
        .to_string()
}

#[test]
fn the_vagrantfile_copies_the_workspace_binaries() {
    let vagrantfile = read("tests/vagrant/Vagrantfile");
    let bins = workspace_binaries();
    let sources: Vec<String> = Regex::new(r#"source: File\.join\(BIN_DIR, "([^"]+)"\)"#)
        .unwrap()
        .captures_iter(&vagrantfile)
        .map(|c| c[1].to_string())
        .collect();
    assert_eq!(sources, ["weftd", "weft"], "the daemon and the CNI plugin");
    for name in &sources {
        assert!(
            bins.contains(name),
            "{name} is not a binary target: {bins:?}"
        );
        // Each copied file is installed from /tmp/<name>.
        assert!(
            vagrantfile.contains(&format!("install -m 755 /tmp/{name} ")),
            "{name}"
        );
    }
    // The default binary directory is the release build the README tells users to run.
    assert!(vagrantfile.contains(r#""target", "release""#));
}

#[test]
fn every_weftd_flag_in_the_vagrantfile_exists() {
    let vagrantfile = read("tests/vagrant/Vagrantfile");
    let help = weftd_help();
    let args = capture(&vagrantfile, r#"WEFTD_ARGS = "([^"\n]+)""#);
    let flags: Vec<&str> = Regex::new(r"--[a-z0-9-]+")
        .unwrap()
        .find_iter(&args)
        .map(|m| m.as_str())
        .collect();
    assert!(flags.contains(&"--etcd-endpoints"), "{args}");
    // No --iface: choosing the private network is what the tier tests.
    assert!(!args.contains("--iface"), "{args}");
    let listed = |flag: &str| {
        Regex::new(&format!(r"(?m)^\s+(-\w, )?{flag}(\[?=| |$)"))
            .unwrap()
            .is_match(&help)
    };
    for flag in flags {
        assert!(listed(flag), "weftd --help has no {flag}:\n{help}");
    }
    // The check can fail: a prefix of a real flag or an invented one is not listed.
    assert!(!listed("--ip-mas") && !listed("--no-such-flag"));
    // The unit runs the installed daemon.
    assert!(vagrantfile.contains("ExecStart=/usr/local/bin/weftd #{WEFTD_ARGS}"));
}

#[test]
fn the_script_and_the_vagrantfile_agree() {
    let vagrantfile = read("tests/vagrant/Vagrantfile");
    let script = read("scripts/vagrant-test.sh");
    let help = weftd_help();
    let bins = workspace_binaries();

    // The build line builds every binary it then checks for, in release.
    let build = capture(&script, r"(?m)^as_builder (cargo build [^\n]+)$");
    for flag in ["--release", "--workspace", "--bins", "--locked"] {
        assert!(build.contains(flag), "{build}");
    }
    assert!(script.contains("BIN_DIR=$TARGET_DIR/release"));
    let checked: Vec<String> = Regex::new(r#"-x "\$BIN_DIR/([a-z-]+)""#)
        .unwrap()
        .captures_iter(&script)
        .map(|c| c[1].to_string())
        .collect();
    assert_eq!(checked, ["weftd", "weft"]);
    assert!(checked.iter().all(|b| bins.contains(b)));

    // Addresses and names.
    assert_eq!(
        capture(&vagrantfile, r#"PRIVATE_NET = "([0-9.]+)""#),
        capture(&script, r"(?m)^PRIVATE_NET=([0-9.]+)$")
    );
    assert!(vagrantfile.contains(r##"ip = "#{PRIVATE_NET}.#{10 + i}""##));
    assert!(script.contains(r##"ip_of() { echo "$PRIVATE_NET.$((10 + $1))"; }"##));
    assert!(vagrantfile.contains(r##"ETCD_IP = "#{PRIVATE_NET}.11""##));
    assert!(vagrantfile.contains(r##"config.vm.define "weft#{i}""##));
    assert!(script.contains(r#""weft$n" sudo bash -c"#));
    for env in [
        "WEFT_VAGRANT_OFFLINE",
        "WEFT_BIN_DIR",
        "WEFT_VAGRANT_NODES",
        "WEFT_BACKEND",
    ] {
        assert!(
            vagrantfile.contains(&format!("ENV[\"{env}\"]"))
                || vagrantfile.contains(&format!("ENV.fetch(\"{env}\"")),
            "{env}"
        );
        assert!(script.contains(&format!("{env}=")), "{env}");
    }
    // The box name and the offline files the Vagrantfile boots.
    assert!(vagrantfile.contains(r#"config.vm.box = "weft/debian12""#));
    assert!(script.contains("--name weft/debian12"));
    for file in ["vmlinuz", "initrd.img"] {
        assert!(vagrantfile.contains(&format!(r#"File.join(OFFLINE, "{file}")"#)));
        assert!(script.contains(&format!("$CACHE/{file}")));
        assert!(read("tests/vagrant/build-box.sh").contains(&format!(r#""$B/{file}""#)));
    }

    // The CNI plugin is installed as flannel, and the pods' netconf asks for flannel.
    assert!(vagrantfile.contains("/usr/lib/cni/flannel"));
    assert!(script.contains(r#""type":"flannel""#));
    assert!(script.contains("CNI_PATH=/usr/lib/cni /usr/lib/cni/flannel"));

    // The script reads the subnet file weftd writes by default (the unit passes no
    // --subnet-file).
    assert!(
        help.contains("[default: /run/flannel/subnet.env]"),
        "{help}"
    );
    assert!(script.contains("/run/flannel/subnet.env"));
    assert!(!vagrantfile.contains("--subnet-file"));

    // Every backend the scenario runs is one weftd implements, and the MTU it waits for
    // is the private network's 1500 less that backend's overhead.
    let backends = capture(&script, r"(?m)^for backend in ([a-z -]+); do$");
    assert_eq!(backends, "vxlan host-gw wireguard");
    let implemented = capture(&help, r"implemented: ([a-z, -]+)\.");
    for backend in backends.split(' ') {
        assert!(implemented.split(", ").any(|b| b == backend), "{backend}");
    }
    for (backend, overhead) in [
        ("vxlan", weft_backend::vxlan::OVERHEAD_V4),
        ("wireguard", weft_backend::wireguard::OVERHEAD),
    ] {
        let line = format!("{backend}) mtu={} ;;", 1500 - overhead);
        assert!(script.contains(&line), "{line}");
    }

    // The etcd keys are flannel's.
    assert!(help.contains("[default: /coreos.com/network]"), "{help}");
    assert!(vagrantfile.contains("/coreos.com/network/config"));
    assert!(script.contains("/coreos.com/network/subnets/"));
}

#[test]
fn the_tier_stays_out_of_the_default_test_run() {
    let test_sh = read("scripts/test.sh");
    assert!(
        !test_sh.contains("vagrant"),
        "scripts/test.sh must not run the VM tier"
    );
}
