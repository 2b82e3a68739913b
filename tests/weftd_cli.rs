//! weftd's command line: flannel's validation, clear errors, `FLANNELD_*` variables.

use std::process::Command;

fn weftd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .output()
        .expect("run weftd");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn renew_margin_out_of_range_is_rejected_with_its_value() {
    let (code, out) = weftd(&["-subnet-lease-renew-margin=0"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("--subnet-lease-renew-margin=0: must be between 1 and 1439 minutes"),
        "{out}"
    );
    let (code, out) = weftd(&[], &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "1440")]);
    assert_eq!(code, 1);
    assert!(out.contains("--subnet-lease-renew-margin=1440"), "{out}");
}

#[test]
fn env_applies_only_when_the_flag_is_absent() {
    // The flag wins over the variable: 30 is valid, so weftd gets past validation and
    // fails later on the (deliberately) bad --healthz-ip instead.
    let (code, out) = weftd(
        &[
            "--subnet-lease-renew-margin=30",
            "--healthz-port=1",
            "--healthz-ip=nope",
        ],
        &[("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "5000")],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("--healthz-ip=nope: not an IP address"),
        "{out}"
    );
    assert!(out.contains("subnet_lease_renew_margin: 30"), "{out}");
}

#[test]
fn bad_flag_values_name_the_flag() {
    let (code, out) = weftd(&["--iface-regex=(unclosed"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("--iface-regex=(unclosed: not a valid regular expression"),
        "{out}"
    );
    let (code, out) = weftd(&["-public-ip=300.1.1.1"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("--public-ip=300.1.1.1: not an IPv4 address"),
        "{out}"
    );
    let (code, out) = weftd(&["--healthz-port=eighty"], &[]);
    assert_eq!(code, 2, "usage errors exit 2: {out}");
    assert!(out.contains("--healthz-port"), "{out}");
}

#[test]
fn kube_mode_is_refused_clearly_until_it_exists() {
    let (code, out) = weftd(&["--kube-subnet-mgr"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("--kube-subnet-mgr: the Kubernetes subnet manager is not available"),
        "{out}"
    );
}

#[test]
fn version_flag() {
    let (code, out) = weftd(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("weftd"), "{out}");
}
