//! The CNI protocol's values, shared by `cni` (which reads the invocation and answers it)
//! and `plugin` (which runs the commands): the command and its `CNI_*` environment, error
//! objects with the spec's well-known codes, and how each module's error maps to one.
//!
//! They live apart from `cni` so that imports go one way: `cni` calls `plugin`, and both
//! use these types; neither `plugin` nor this module needs anything from `cni`.

use crate::delegate::DelegateError;
use crate::exec;
use crate::netconf::NetConfError;
use crate::subnet_env::LoadError;
use serde::Serialize;

/// The spec's well-known error codes (and the generic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodingFailure = 6,
    InvalidNetworkConfig = 7,
    TryAgainLater = 11,
    Generic = 999,
}

/// A CNI error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The error object as printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        };
        pretty(&wire)
    }
}

/// How a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// weft's own error.
    Error(CniError),
    /// The delegate's error object and exit status, passed on untouched.
    Relay { stdout: Vec<u8>, status: u8 },
}

impl From<CniError> for Failure {
    fn from(e: CniError) -> Failure {
        Failure::Error(e)
    }
}

/// A netconf field of the wrong type: the config is unusable as written.
impl From<NetConfError> for Failure {
    fn from(e: NetConfError) -> Failure {
        CniError::new(Code::InvalidNetworkConfig, e.to_string()).into()
    }
}

/// flannel returns these as generic errors (999); they are configuration errors.
impl From<DelegateError> for Failure {
    fn from(e: DelegateError) -> Failure {
        CniError::new(Code::InvalidNetworkConfig, e.to_string()).into()
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Failure {
        let code = match e {
            // weftd will write it: the runtime should retry, which it does anyway.
            LoadError::NotYetWritten { .. } => Code::TryAgainLater,
            LoadError::Io { .. } => Code::IoFailure,
            LoadError::Missing { .. } | LoadError::Invalid(_) => Code::Generic,
        };
        CniError::new(code, e.to_string()).into()
    }
}

impl From<exec::ExecError> for Failure {
    /// A delegate's own error object is relayed with its exit status; anything else
    /// becomes a generic error.
    fn from(e: exec::ExecError) -> Failure {
        match e {
            exec::ExecError::Failed(f) if f.has_error_json() => Failure::Relay {
                status: f
                    .status
                    .and_then(|s| u8::try_from(s).ok())
                    .filter(|s| *s != 0)
                    .unwrap_or(1),
                stdout: f.stdout,
            },
            other => CniError::new(Code::Generic, other.to_string()).into(),
        }
    }
}

/// The commands of spec 1.0.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
}

/// What the environment says about the invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_PATH`, where delegates are looked up.
    pub cni_path: String,
}

impl CmdArgs {
    /// Reads the `CNI_*` variables. An empty variable counts as missing, as in libcni.
    pub fn from_env(getenv: &dyn Fn(&str) -> Option<String>) -> Result<CmdArgs, CniError> {
        let var = |name| getenv(name).unwrap_or_default();
        let command = match var("CNI_COMMAND").as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "" => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    "required env variables [CNI_COMMAND] missing",
                ));
            }
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("unknown CNI_COMMAND: {other}"),
                ));
            }
        };
        let args = CmdArgs {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            cni_path: var("CNI_PATH"),
        };
        if command != Command::Version {
            let missing: Vec<&str> = [
                ("CNI_CONTAINERID", &args.container_id, true),
                // DEL must work after the namespace is gone.
                ("CNI_NETNS", &args.netns, command != Command::Del),
                ("CNI_IFNAME", &args.ifname, true),
                ("CNI_PATH", &args.cni_path, true),
            ]
            .into_iter()
            .filter(|(_, value, required)| *required && value.is_empty())
            .map(|(name, _, _)| name)
            .collect();
            if !missing.is_empty() {
                let msg = format!("required env variables [{}] missing", missing.join(","));
                return Err(CniError::new(Code::InvalidEnvironment, msg));
            }
        }
        Ok(args)
    }
}

/// JSON with libcni's four-space indentation.
fn pretty(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serialising plain strings and numbers into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out.push(b'\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_json_shape() {
        let e = CniError::new(Code::TryAgainLater, "later");
        assert_eq!(
            String::from_utf8(e.to_json("0.3.1")).unwrap(),
            "{\n    \"cniVersion\": \"0.3.1\",\n    \"code\": 11,\n    \"msg\": \"later\"\n}\n"
        );
        let e = e.with_details("why");
        assert!(
            String::from_utf8(e.to_json("1.0.0"))
                .unwrap()
                .contains("\"details\": \"why\"")
        );
    }
}
