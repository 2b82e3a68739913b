//! weftd's command line: flannel's validation, clear errors, `FLANNELD_*` variables.

use std::process::Command;

fn weftd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .args(args)
        .env_remove("NODE_NAME")
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .env_remove("KUBERNETES_SERVICE_HOST")
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

/// Kubernetes mode fails fast, naming the value, on what no retry can fix: the static
/// config, the annotation prefix, the API address, the node name.
#[test]
fn kube_mode_static_errors_name_the_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    let conf_flag = format!("--net-config-path={}", conf.display());
    let kube = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--kube-subnet-mgr", conf_flag.as_str()];
        args.extend_from_slice(extra);
        weftd(&args, env)
    };
    let (code, out) = kube(&[], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("failed to read net conf: {}", conf.display())),
        "{out}"
    );

    std::fs::write(&conf, r#"{"Network": 5}"#).unwrap();
    let (code, out) = kube(&[], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("error parsing subnet config") && out.contains("field Network"),
        "{out}"
    );

    std::fs::write(
        &conf,
        r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    let (code, out) = kube(&["--kube-annotation-prefix=org"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "--kube-annotation-prefix=\"org\": prefix must be in a format: fqdn/[0-9a-z-_]*"
        ),
        "{out}"
    );
    let (code, out) = kube(&["--kube-api-url=not a url"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("--kube-api-url=\"not a url\": not a URL"),
        "{out}"
    );

    let (code, out) = kube(&["--kube-api-url=http://127.0.0.1:9"], &[]);
    assert_eq!(code, 1);
    assert!(
        out.contains("env variables POD_NAME and POD_NAMESPACE must be set"),
        "{out}"
    );
    let (code, out) = kube(&[], &[("NODE_NAME", "n1")]);
    assert_eq!(code, 1);
    assert!(
        out.contains("no Kubernetes API to talk to: not running in a pod"),
        "{out}"
    );
}

/// Flags weftd accepts but does not act on yet are named in a startup warning, before
/// anything can fail (here: the deliberately bad --healthz-ip).
#[test]
fn version_flag() {
    let (code, out) = weftd(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("weftd"), "{out}");
}

#[test]
fn a_fatal_error_is_printed_once_with_its_cause() {
    let (code, out) = weftd(
        &[
            "--etcd-endpoints=http://127.0.0.1:9",
            "--etcd-cafile=/nonexistent/weft-ca.pem",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    let fatal: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(fatal.len(), 1, "{out}");
    assert!(
        fatal[0].ends_with(
            "cannot read etcd TLS file /nonexistent/weft-ca.pem: No such file or directory \
             (os error 2)"
        ),
        "{out}"
    );
}
