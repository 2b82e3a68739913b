//! The plugin binary's CNI protocol behaviour, with no network namespaces: VERSION, error
//! objects for bad configs and a missing or incomplete subnet.env, and the delegate
//! contract (environment, stdin, saved config, relayed result and errors) checked with a
//! stand-in delegate script.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Call, cni_error, mode, write_subnet_env};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

const SUBNET_ENV: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

/// The stock conflist's flannel entry, as the runtime passes it, with test paths.
fn stock_config(dir: &Path, extra: &str) -> String {
    format!(
        r#"{{"cniVersion":"0.3.1","name":"cbr0","type":"flannel",
            "subnetFile":"{dir}/subnet.env","dataDir":"{dir}/data"{extra},
            "delegate":{{"hairpinMode":true,"isDefaultGateway":true}}}}"#,
        dir = dir.display()
    )
}

#[test]
fn version_lists_1_0_0_and_the_older_versions() {
    let out = Call::new("VERSION").run("");
    out.assert_success();
    assert_eq!(
        out.json(),
        serde_json::json!({"cniVersion":"1.0.0",
            "supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]})
    );
}

#[test]
fn works_when_installed_as_flannel() {
    let dir = tempfile::tempdir().unwrap();
    let flannel = dir.path().join("flannel");
    std::os::unix::fs::symlink(common::PLUGIN, &flannel).unwrap();
    let call = Call {
        binary: flannel.to_str().unwrap(),
        ..Call::new("VERSION")
    };
    let out = call.run("");
    out.assert_success();
    assert_eq!(out.json()["supportedVersions"][5], "1.0.0");
}

#[test]
fn a_name_in_the_delegate_is_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    write_subnet_env(&dir.path().join("subnet.env"), SUBNET_ENV);
    let config = format!(
        r#"{{"cniVersion":"0.3.1","name":"cbr0","type":"flannel","dataDir":"{}/data",
            "subnetFile":"{}/subnet.env","delegate":{{"name":"other"}}}}"#,
        dir.path().display(),
        dir.path().display()
    );
    let out = Call::new("ADD").run(&config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.json(),
        cni_error(
            "0.3.1",
            7,
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
        )
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing may be saved for a refused config"
    );
}

#[test]
fn malformed_configs_give_cni_errors() {
    let out = Call::new("ADD").run("{\"name\":");
    assert_eq!(out.status.code(), Some(1));
    let json = out.json();
    assert_eq!(
        (json["cniVersion"].as_str(), json["code"].as_u64()),
        (Some("1.0.0"), Some(6))
    );
    assert!(
        json["msg"]
            .as_str()
            .unwrap()
            .starts_with("error unmarshall network config: "),
        "{json}"
    );

    let out = Call::new("ADD").run(r#"{"cniVersion":"0.3.1","type":"flannel"}"#);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.json(), cni_error("1.0.0", 7, "missing network name"));

    let out = Call::new("ADD").run(r#"{"cniVersion":"0.3.1","name":"cbr0","delegate":[]}"#);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.json(),
        cni_error(
            "0.3.1",
            7,
            "failed to load netconf: delegate must be an object, not an array"
        )
    );

    let out = Call {
        netns: "",
        ..Call::new("ADD")
    }
    .run(r#"{"cniVersion":"0.3.1","name":"cbr0"}"#);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.json(),
        cni_error("1.0.0", 4, "required env variables [CNI_NETNS] missing")
    );
}

#[test]
fn a_missing_subnet_env_is_waited_for_then_explained() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = Call::new("ADD").run(&stock_config(dir.path(), r#","subnetFileWaitSeconds":0.3"#));
    let elapsed = start.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let msg = format!(
        "failed to load flannel 'subnet.env' file: open {}/subnet.env: no such file or directory \
         (waited 300ms). weftd has not leased a subnet on this node yet: it writes this file once \
         it holds the node's lease and has set up the node's network. To find out why not, read \
         the log of weftd on this node and query its /readyz endpoint (served on --healthz-port), \
         which gives the reason it is not ready",
        dir.path().display()
    );
    assert_eq!(out.json(), cni_error("0.3.1", 11, &msg));
    assert!(
        elapsed >= Duration::from_millis(300),
        "returned after {elapsed:?}, before the wait ended"
    );
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn an_incomplete_subnet_env_keeps_flannels_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subnet.env");
    write_subnet_env(
        &path,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n",
    );
    let out = Call::new("ADD").run(&stock_config(dir.path(), ""));
    assert_eq!(out.status.code(), Some(1));
    let msg = format!(
        "failed to load flannel 'subnet.env' file: {} is missing FLANNEL_MTU, FLANNEL_IPMASQ. \
         Check the flannel pod log for this node.",
        path.display()
    );
    assert_eq!(out.json(), cni_error("0.3.1", 999, &msg));
}

#[test]
fn a_missing_delegate_binary_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    write_subnet_env(&dir.path().join("subnet.env"), SUBNET_ENV);
    let out = Call {
        cni_path: "/nonexistent-cni-a:/nonexistent-cni-b",
        ..Call::new("ADD")
    }
    .run(&stock_config(dir.path(), ""));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.json(),
        cni_error(
            "0.3.1",
            999,
            r#"failed to delegate add: failed to find plugin "bridge" in path [/nonexistent-cni-a /nonexistent-cni-b]"#
        )
    );
}

/// A stand-in `bridge` that records what it was given and answers as told by marker files.
fn fake_bridge(dir: &Path) {
    let script = r#"#!/bin/sh
here=$(dirname "$0")
cat > "$here/stdin.$CNI_COMMAND"
env | grep '^CNI_' | sort > "$here/env.$CNI_COMMAND"
if [ -e "$here/fail" ]; then
  printf '{"cniVersion":"0.3.1","code":11,"msg":"delegate says later","details":"d"}'
  echo "bridge stderr" >&2
  exit 3
fi
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.3.1","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.244.1.2/24"}]}'
fi
"#;
    let path = dir.join("bridge");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_delegate_gets_the_saved_config_and_its_answers_are_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    fake_bridge(&bin);
    write_subnet_env(&dir.path().join("subnet.env"), SUBNET_ENV);
    let config = stock_config(dir.path(), "");
    let call = |command| Call {
        container_id: "ctr-1",
        netns: "/var/run/netns/pod-x",
        cni_path: bin.to_str().unwrap(),
        ..Call::new(command)
    };
    let saved = dir.path().join("data/ctr-1");

    // ADD: the delegate gets flannel's exact bytes, which are saved too, and its result is
    // printed as it printed it.
    let out = call("ADD").run(&config);
    out.assert_success();
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        r#"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.244.1.2/24"}]}"#
    );
    let expected = r#"{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#;
    assert_eq!(
        std::fs::read_to_string(bin.join("stdin.ADD")).unwrap(),
        expected
    );
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), expected);
    assert_eq!(mode(&saved), 0o600);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    let env = std::fs::read_to_string(bin.join("env.ADD")).unwrap();
    for line in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=ctr-1",
        "CNI_IFNAME=eth0",
        "CNI_NETNS=/var/run/netns/pod-x",
        &format!("CNI_PATH={}", bin.display()),
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} not in the delegate's env:\n{env}"
        );
    }

    // A failing DEL: the delegate's error object and exit status are relayed untouched,
    // and the saved config stays for the retry.
    std::fs::write(bin.join("fail"), "").unwrap();
    let out = call("DEL").run(&config);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8(out.stdout.clone()).unwrap(),
        r#"{"cniVersion":"0.3.1","code":11,"msg":"delegate says later","details":"d"}"#
    );
    assert!(
        out.stderr.contains("bridge stderr"),
        "the delegate's stderr is passed on: {}",
        out.stderr
    );
    assert!(saved.exists());

    // DEL succeeds: the delegate gets the saved bytes, the file goes, nothing is printed.
    std::fs::remove_file(bin.join("fail")).unwrap();
    let out = call("DEL").run(&config);
    out.assert_success();
    assert!(out.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(bin.join("stdin.DEL")).unwrap(),
        expected
    );
    assert!(
        std::fs::read_to_string(bin.join("env.DEL"))
            .unwrap()
            .contains("CNI_COMMAND=DEL\n")
    );
    assert!(!saved.exists());

    // DEL again: nothing saved, success without calling the delegate.
    std::fs::remove_file(bin.join("stdin.DEL")).unwrap();
    call("DEL").run(&config).assert_success();
    assert!(!bin.join("stdin.DEL").exists());

    // A failing ADD is relayed the same way; the config is saved first so DEL can undo.
    std::fs::write(bin.join("fail"), "").unwrap();
    let out = call("ADD").run(&config);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.json()["msg"], "delegate says later");
    assert!(saved.exists());
}

#[test]
fn del_with_an_unusable_saved_config_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("ctr-2"), "{truncated").unwrap();
    let call = Call {
        container_id: "ctr-2",
        cni_path: "/nonexistent",
        ..Call::new("DEL")
    };
    let out = call.run(&stock_config(dir.path(), ""));
    out.assert_success();
    assert!(out.stdout.is_empty());
    assert!(!data.join("ctr-2").exists());
}

#[test]
fn check_validates_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = stock_config(dir.path(), "").replace("0.3.1", "1.0.0");
    Call::new("CHECK").run(&config).assert_success();
    let out = Call::new("CHECK").run(&stock_config(dir.path(), ""));
    assert_eq!(
        out.json(),
        cni_error("0.3.1", 1, "config version does not allow CHECK")
    );
}
