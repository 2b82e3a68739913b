//! Whole invocations: `cni::run` with any stdin and any `CNI_*` environment.
//!
//! Confinement, so that these tests cannot run a real delegate or touch the machine:
//! - `run` reads the environment only through the `getenv` given to it, and here that
//!   answers from the generated values, never from the process environment;
//! - `CNI_PATH` only ever names an empty directory (or paths under it that do not exist),
//!   and plugin names cannot contain `/`, so no delegate is ever found or executed;
//! - a stdin that decodes as a network configuration has `subnetFile`, `dataDir` and
//!   `subnetFileWaitSeconds` replaced (in any letter case) by a file and a directory
//!   inside the test's temporary directory and no wait; stdin that does not decode
//!   never reaches the configuration, so it is passed on unchanged.
//!
//! After the run the test checks that the empty directory is still empty.

use super::{NETCONF_FIELDS, VALID_ENVS, env_file, valid_netconfs};
use crate::cni::run;
use crate::netconf::Fields;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use weft_testkit::{Outcome, check, json, text};

/// The keys that name files or make the plugin wait.
const CONFINED_KEYS: &[&str] = &["subnetFile", "dataDir", "subnetFileWaitSeconds"];

/// The temporary directory of one test: an empty `bin/`, `data/` and `subnet.env`.
struct Sandbox {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    data: PathBuf,
    subnet_env: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        Sandbox {
            bin,
            data: dir.path().join("data"),
            subnet_env: dir.path().join("subnet.env"),
            _dir: dir,
        }
    }

    /// `stdin` with its file and wait settings pointed into the sandbox, if it decodes as
    /// a configuration; unchanged otherwise. Repeated keys and their order are kept.
    fn confine(&self, stdin: Vec<u8>) -> Vec<u8> {
        let Ok(fields) = Fields::parse(&stdin) else {
            return stdin;
        };
        let path = |p: &Path| Value::String(p.display().to_string());
        let entries = fields
            .entries()
            .iter()
            .filter(|(k, _)| !CONFINED_KEYS.iter().any(|c| k.eq_ignore_ascii_case(c)))
            .cloned()
            .chain([
                ("subnetFile".to_string(), path(&self.subnet_env)),
                ("dataDir".to_string(), path(&self.data)),
                ("subnetFileWaitSeconds".to_string(), Value::from(0)),
            ]);
        let members: Vec<String> = entries
            .map(|(k, v)| format!("{}:{v}", Value::String(k)))
            .collect();
        format!("{{{}}}", members.join(",")).into_bytes()
    }

    /// `CNI_PATH` values: the empty directory, paths under it that do not exist, empty
    /// entries.
    fn cni_paths(&self) -> BoxedStrategy<String> {
        let bin = self.bin.display().to_string();
        let entry = prop_oneof![
            Just(bin.clone()),
            "[a-z0-9.]{0,6}".prop_map(move |name| format!("{bin}/missing-{name}")),
            Just(String::new()),
        ];
        prop::collection::vec(entry, 1..4)
            .prop_map(|entries| entries.join(":"))
            .boxed()
    }
}

/// One invocation's environment; `None` is an unset variable.
#[derive(Debug, Clone)]
struct Invocation {
    env: HashMap<&'static str, String>,
    stdin: Vec<u8>,
    subnet_env: Option<Vec<u8>>,
}

fn optional(value: BoxedStrategy<String>) -> BoxedStrategy<Option<String>> {
    prop_oneof![12 => value.prop_map(Some), 1 => Just(None)].boxed()
}

fn invocations(sandbox: &Sandbox) -> impl Strategy<Value = Invocation> + use<> {
    let command = prop_oneof![
        12 => select(&["ADD", "ADD", "ADD", "DEL", "CHECK", "VERSION"][..]).prop_map(str::to_string),
        1 => select(&["", "add", "GC", "STATUS", "ADD "][..]).prop_map(str::to_string),
        1 => text::string(),
    ];
    let container_id =
        prop_oneof![6 => "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,16}".boxed(), 1 => text::string()];
    let netns = prop_oneof![4 => Just("/var/run/netns/x".to_string()), 1 => text::string()];
    let ifname = prop_oneof![
        12 => Just("eth0".to_string()),
        1 => "[a-z0-9]{14,17}".boxed(),
        1 => text::string(),
    ];
    let subnet_env = prop_oneof![
        4 => select(VALID_ENVS).prop_map(|e| Some(e.as_bytes().to_vec())),
        1 => Just(None),
        1 => env_file().prop_map(Some),
    ];
    (
        (
            optional(command.boxed()),
            optional(container_id.boxed()),
            optional(netns.boxed()),
            optional(ifname.boxed()),
            optional(sandbox.cni_paths()),
        ),
        prop_oneof![
            1 => json::bytes(valid_netconfs(), NETCONF_FIELDS),
            2 => json::near(valid_netconfs(), NETCONF_FIELDS).prop_map(|v| v.to_string().into_bytes()),
            1 => select(valid_netconfs()).prop_map(|v| v.to_string().into_bytes()),
        ],
        subnet_env,
    )
        .prop_map(|((command, id, netns, ifname, path), stdin, subnet_env)| {
            let env = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", path),
            ]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value?)))
            .collect();
            Invocation {
                env,
                stdin,
                subnet_env,
            }
        })
}

/// The error code of an error object, as a tally label.
fn code_label(code: u64) -> Outcome {
    match code {
        1 => "code 1",
        4 => "code 4",
        5 => "code 5",
        6 => "code 6",
        7 => "code 7",
        11 => "code 11",
        999 => "code 999",
        _ => "another code",
    }
}

#[test]
fn prop_cni_invocation_answers_or_fails_cleanly() {
    let sandbox = Sandbox::new();
    let tally = check(invocations(&sandbox), |invocation| {
        match &invocation.subnet_env {
            Some(content) => std::fs::write(&sandbox.subnet_env, content).unwrap(),
            None => {
                let _ = std::fs::remove_file(&sandbox.subnet_env);
            }
        }
        let stdin = sandbox.confine(invocation.stdin.clone());
        let env = &invocation.env;
        let response = run(&|name| env.get(name).cloned(), &mut stdin.as_slice());
        let command = env.get("CNI_COMMAND").map_or("", String::as_str);
        match response.status {
            0 if command.is_empty() => Ok("about"),
            0 if command == "VERSION" => {
                let answer: Value = serde_json::from_slice(&response.stdout).unwrap();
                prop_assert!(answer["supportedVersions"].is_array());
                Ok("version")
            }
            0 => {
                // Success without a delegate: DEL with nothing to undo, or CHECK. An ADD
                // that succeeded would mean a delegate ran.
                prop_assert!(command == "DEL" || command == "CHECK", "{command:?}");
                prop_assert!(response.stdout.is_empty());
                Ok("ok")
            }
            1 => {
                let error: Value = serde_json::from_slice(&response.stdout)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {response:?}")))?;
                prop_assert!(error["cniVersion"].is_string() && error["msg"].is_string());
                let msg = error["msg"].as_str().unwrap_or_default();
                if msg.starts_with("failed to delegate add: failed to find plugin") {
                    return Ok("ADD reached the delegate lookup");
                }
                let code = error["code"].as_u64();
                prop_assert!(code.is_some(), "{error}");
                Ok(code_label(code.unwrap_or_default()))
            }
            // Only a delegate's own failure is relayed with another status.
            other => Err(TestCaseError::fail(format!("status {other}: {response:?}"))),
        }
    });
    let bin = std::fs::read_dir(&sandbox.bin).unwrap().count();
    assert_eq!(bin, 0, "something was written to the plugin directory");
    tally.assert_seen(&[
        "about",
        "version",
        "ok",
        "code 1",
        "code 4",
        "code 6",
        "code 7",
        "code 11",
        "code 999",
        "ADD reached the delegate lookup",
    ]);
}
