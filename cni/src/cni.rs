//! The CNI protocol side (spec 1.0.0, accepting the older versions kubelets still send):
//! one invocation from `CNI_*` environment and stdin to stdout and exit status, the version
//! rules and the checks every command starts with. The commands themselves are in
//! `plugin`; the values both use (command, error objects and codes) in `protocol`.
//!
//! The checks and their wording follow libcni's `skel` package, which flannel's plugin (and
//! the bridge and host-local plugins) are built on, so runtimes and people see the same
//! errors from weft as from them.

use crate::netconf::{Fields, Header};
use crate::plugin;
use crate::protocol::{CmdArgs, CniError, Code, Command, Failure};
use serde::Serialize;
use std::io::Read;

/// The spec versions weft speaks, oldest first.
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The version weft reports for itself and uses when the config's is unknown.
pub const LATEST_VERSION: &str = "1.0.0";

/// CNI's rule for container IDs and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`. It
/// also keeps the container ID a plain file name under `dataDir`.
pub fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// libcni's `ValidateInterfaceName` (the kernel's rules).
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        "interface name is empty"
    } else if name.len() > 15 {
        return Err(
            CniError::new(Code::InvalidEnvironment, "interface name is too long")
                .with_details("interface name should be less than 16 characters"),
        );
    } else if name == "." || name == ".." {
        "interface name is . or .."
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        "interface name contains / or : or whitespace characters"
    } else {
        return Ok(());
    };
    Err(CniError::new(Code::InvalidEnvironment, problem))
}

/// What the process does when done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: u8,
}

/// Runs one invocation: `getenv` is the environment, `stdin` the network configuration.
pub fn run(getenv: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Response {
    // Without CNI_COMMAND someone ran the binary by hand: say what it is (as skel does).
    if getenv("CNI_COMMAND").unwrap_or_default().is_empty() {
        let about = format!(
            "CNI plugin weft v{} (flannel-compatible)\nCNI protocol versions supported: {}\n",
            env!("CARGO_PKG_VERSION"),
            SUPPORTED_VERSIONS.join(", ")
        );
        return Response {
            stdout: Vec::new(),
            stderr: about.into_bytes(),
            status: 0,
        };
    }
    let mut version = LATEST_VERSION.to_owned();
    match dispatch(getenv, stdin, &mut version) {
        Ok(stdout) => Response {
            stdout,
            stderr: Vec::new(),
            status: 0,
        },
        Err(Failure::Error(e)) => Response {
            stdout: e.to_json(&version),
            stderr: Vec::new(),
            status: 1,
        },
        Err(Failure::Relay { stdout, status }) => Response {
            stdout,
            stderr: Vec::new(),
            status,
        },
    }
}

/// The common checks, then the command. `version` is set to the config's version once it
/// is known to be one weft speaks, for the error object.
fn dispatch(
    getenv: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version: &mut String,
) -> Result<Vec<u8>, Failure> {
    let args = CmdArgs::from_env(getenv)?;
    if args.command == Command::Version {
        return Ok(version_info());
    }

    let mut input = Vec::new();
    stdin
        .read_to_end(&mut input)
        .map_err(|e| CniError::new(Code::IoFailure, format!("error reading from stdin: {e}")))?;
    let decoding = |e: &dyn std::fmt::Display| {
        CniError::new(
            Code::DecodingFailure,
            format!("error unmarshall network config: {e}"),
        )
    };
    let fields = Fields::parse(&input).map_err(|e| decoding(&e))?;
    let header = Header::from_fields(&fields).map_err(|e| decoding(&e))?;

    if header.name.is_empty() {
        return Err(CniError::new(Code::InvalidNetworkConfig, "missing network name").into());
    }
    if !valid_name(&header.name) {
        let e = CniError::new(
            Code::InvalidNetworkConfig,
            "invalid characters found in network name",
        );
        return Err(e.with_details(header.name).into());
    }
    if !valid_name(&args.container_id) {
        let e = CniError::new(
            Code::InvalidEnvironment,
            "invalid characters in containerID",
        );
        return Err(e.with_details(args.container_id).into());
    }
    validate_ifname(&args.ifname)?;

    // No cniVersion means 0.1.0, the spec's first.
    let config_version = if header.cni_version.is_empty() {
        "0.1.0"
    } else {
        &header.cni_version
    };
    let Some(rank) = SUPPORTED_VERSIONS.iter().position(|v| *v == config_version) else {
        let supported: Vec<String> = SUPPORTED_VERSIONS
            .iter()
            .map(|v| format!("{v:?}"))
            .collect();
        let details = format!(
            "config is {config_version:?}, plugin supports [{}]",
            supported.join(" ")
        );
        return Err(
            CniError::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(details)
                .into(),
        );
    };
    *version = config_version.to_owned();

    match args.command {
        Command::Add => plugin::add(&args, &fields),
        Command::Del => plugin::del(&args, &fields),
        Command::Check => {
            // CHECK arrived with spec 0.4.0.
            let check_since = SUPPORTED_VERSIONS
                .iter()
                .position(|v| *v == "0.4.0")
                .unwrap_or(0);
            if rank < check_since {
                let e = CniError::new(
                    Code::IncompatibleVersion,
                    "config version does not allow CHECK",
                );
                return Err(e.into());
            }
            plugin::check(&args, &fields)
        }
        Command::Version => Ok(version_info()),
    }
}

/// The VERSION answer.
fn version_info() -> Vec<u8> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Info {
        cni_version: &'static str,
        supported_versions: [&'static str; 6],
    }
    let mut out = serde_json::to_vec(&Info {
        cni_version: LATEST_VERSION,
        supported_versions: SUPPORTED_VERSIONS,
    })
    .unwrap_or_default();
    out.push(b'\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn invoke(env: &[(&str, &str)], stdin: &str) -> (serde_json::Value, u8) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        let r = run(&|k| env.get(k).cloned(), &mut stdin.as_bytes());
        let json = serde_json::from_slice(&r.stdout).unwrap_or(serde_json::Value::Null);
        (json, r.status)
    }

    const ENV: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];

    fn env_with(changes: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut env: Vec<_> = ENV
            .iter()
            .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
            .copied()
            .collect();
        env.extend(changes.iter().filter(|(_, v)| !v.is_empty()));
        env
    }

    fn error(code: u32, msg: &str, version: &str) -> serde_json::Value {
        serde_json::json!({"cniVersion": version, "code": code, "msg": msg})
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let (json, status) = invoke(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(status, 0);
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"1.0.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"]})
        );
    }

    #[test]
    fn no_command_prints_about_on_stderr_and_succeeds() {
        let r = run(&|_| None, &mut &b""[..]);
        assert_eq!((r.status, r.stdout.is_empty()), (0, true));
        assert!(
            String::from_utf8(r.stderr)
                .unwrap()
                .contains("CNI protocol versions supported: 0.1.0, ")
        );
    }

    #[test]
    fn missing_environment_is_code_4() {
        let conf = r#"{"cniVersion":"0.3.1","name":"cbr0"}"#;
        let (json, status) = invoke(&env_with(&[("CNI_NETNS", ""), ("CNI_PATH", "")]), conf);
        assert_eq!(status, 1);
        assert_eq!(
            json,
            error(
                4,
                "required env variables [CNI_NETNS,CNI_PATH] missing",
                "1.0.0"
            )
        );
        let (json, _) = invoke(&[("CNI_COMMAND", "DEL")], conf);
        assert_eq!(
            json,
            error(
                4,
                "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing",
                "1.0.0"
            )
        );
        let (json, _) = invoke(&env_with(&[("CNI_COMMAND", "GC")]), conf);
        assert_eq!(json, error(4, "unknown CNI_COMMAND: GC", "1.0.0"));
    }

    #[test]
    fn del_does_not_need_a_netns() {
        // Nothing saved for this container: DEL succeeds without running anything.
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"cbr0","dataDir":"{}"}}"#,
            dir.path().display()
        );
        let env: HashMap<&str, &str> = env_with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")])
            .into_iter()
            .collect();
        let r = run(
            &|k| env.get(k).map(|v| (*v).to_owned()),
            &mut conf.as_bytes(),
        );
        assert_eq!((r.status, r.stdout), (0, Vec::new()));
    }

    #[test]
    fn bad_input_is_decoding_failure_or_invalid_config() {
        let (json, status) = invoke(&ENV, "not json");
        assert_eq!(status, 1);
        assert_eq!(json["code"], 6);
        assert!(
            json["msg"]
                .as_str()
                .unwrap()
                .starts_with("error unmarshall network config: ")
        );
        let (json, _) = invoke(&ENV, r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(json, error(7, "missing network name", "1.0.0"));
        let (json, _) = invoke(&ENV, r#"{"cniVersion":"0.3.1","name":"a b"}"#);
        assert_eq!(json["msg"], "invalid characters found in network name");
        assert_eq!(json["details"], "a b");
        let (json, _) = invoke(
            &ENV,
            r#"{"cniVersion":"0.3.1","name":"cbr0","subnetFile":1}"#,
        );
        assert_eq!(
            json,
            error(
                7,
                "failed to load netconf: subnetFile must be a string, not a number",
                "0.3.1"
            )
        );
    }

    #[test]
    fn container_id_and_ifname_are_validated() {
        let conf = r#"{"cniVersion":"0.3.1","name":"cbr0"}"#;
        let (json, _) = invoke(&env_with(&[("CNI_CONTAINERID", "../etc")]), conf);
        assert_eq!(json["code"], 4);
        assert_eq!(json["msg"], "invalid characters in containerID");
        assert_eq!(json["details"], "../etc");
        for (ifname, msg) in [
            ("a-very-long-interface", "interface name is too long"),
            ("..", "interface name is . or .."),
            (
                "eth0:1",
                "interface name contains / or : or whitespace characters",
            ),
        ] {
            let env: Vec<(&str, &str)> = ENV
                .iter()
                .map(|(k, v)| (*k, if *k == "CNI_IFNAME" { ifname } else { *v }))
                .collect();
            let (json, _) = invoke(&env, conf);
            assert_eq!(
                (json["code"].as_u64(), json["msg"].as_str()),
                (Some(4), Some(msg)),
                "{ifname}"
            );
        }
    }

    #[test]
    fn versions_are_checked() {
        let (json, status) = invoke(&ENV, r#"{"cniVersion":"1.1.0","name":"cbr0"}"#);
        assert_eq!(status, 1);
        assert_eq!(
            json,
            serde_json::json!({"cniVersion":"1.0.0","code":1,"msg":"incompatible CNI versions",
                "details":r#"config is "1.1.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0"]"#})
        );
        let check = env_with(&[("CNI_COMMAND", "CHECK")]);
        let (json, _) = invoke(&check, r#"{"cniVersion":"0.3.1","name":"cbr0"}"#);
        assert_eq!(
            json,
            error(1, "config version does not allow CHECK", "0.3.1")
        );
        let (json, status) = invoke(&check, r#"{"cniVersion":"1.0.0","name":"cbr0"}"#);
        assert_eq!((json, status), (serde_json::Value::Null, 0));
    }

    #[test]
    fn names() {
        for ok in [
            "cbr0",
            "a",
            "0a",
            "a_b.c-d",
            "e3b0c44298fc1c149afbf4c8996fb924",
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "_a", ".a", "-a", "a/b", "a b", "a:b", "..", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
