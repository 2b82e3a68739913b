//! Running the delegate plugin the way libcni's `invoke` package does: look it up by name in
//! `CNI_PATH`, run it with this process's environment (so every `CNI_*` variable reaches it)
//! and `CNI_COMMAND` set, the config on stdin; collect stdout, pass stderr on.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a delegate could not be found or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no plugin name provided")]
    NoName,
    /// A name with a `/` could point anywhere; libcni refuses it too.
    #[error("invalid plugin name: {0}")]
    InvalidName(String),
    #[error("no paths provided")]
    NoPaths,
    #[error("failed to find plugin {plugin:?} in path [{}]", .paths.join(" "))]
    NotFound { plugin: String, paths: Vec<String> },
    #[error("failed to run {}: {cause}", .path.display())]
    Spawn { path: PathBuf, cause: io::Error },
    /// The delegate ran and exited non-zero.
    #[error("{0}")]
    Failed(Failure),
}

/// A delegate that exited non-zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its exit status, `None` if a signal killed it.
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Failure {
    /// Whether stdout holds a CNI error object, which is then relayed as is.
    pub fn has_error_json(&self) -> bool {
        serde_json::from_slice::<serde_json::Value>(&self.stdout)
            .is_ok_and(|v| v.get("code").is_some_and(serde_json::Value::is_u64))
    }
}

impl std::fmt::Display for Failure {
    /// libcni's texts for a plugin that failed without a usable error object.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        };
        if self.stdout.is_empty() && self.stderr.is_empty() {
            write!(f, "netplugin failed with no error message: {status}")
        } else if self.stdout.is_empty() {
            write!(
                f,
                "netplugin failed: {:?}",
                String::from_utf8_lossy(&self.stderr)
            )
        } else {
            write!(
                f,
                "netplugin failed but error parsing its diagnostic message {:?}: {status}",
                String::from_utf8_lossy(&self.stdout)
            )
        }
    }
}

/// Finds `plugin` in the colon-separated `cni_path` (libcni's `FindInPath`: the first
/// regular file of that name). Empty entries are skipped rather than meaning the current
/// directory.
pub fn find_in_path(plugin: &str, cni_path: &str) -> Result<PathBuf, ExecError> {
    if plugin.is_empty() {
        return Err(ExecError::NoName);
    }
    if plugin.contains('/') {
        return Err(ExecError::InvalidName(plugin.to_owned()));
    }
    let dirs: Vec<&str> = cni_path.split(':').filter(|d| !d.is_empty()).collect();
    if dirs.is_empty() {
        return Err(ExecError::NoPaths);
    }
    dirs.iter()
        .map(|dir| Path::new(dir).join(plugin))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file()))
        .ok_or_else(|| ExecError::NotFound {
            plugin: plugin.to_owned(),
            paths: dirs.iter().map(|d| (*d).to_owned()).collect(),
        })
}

/// Runs the plugin at `path` for `command` with `stdin`; its stdout on success.
///
/// There is no timeout: the runtime that called weft bounds the whole operation, and
/// killing a delegate half-way through ADD would leave more behind than letting it finish.
pub fn run(path: &Path, command: &str, stdin: &[u8]) -> Result<Vec<u8>, ExecError> {
    let spawn_err = |cause| ExecError::Spawn {
        path: path.to_owned(),
        cause,
    };
    // libcni retries "text file busy" (a plugin binary being replaced right now).
    let mut attempts = 0;
    let mut child = loop {
        let spawned = Command::new(path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 5 => {
                attempts += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            other => break other.map_err(spawn_err)?,
        }
    };
    // Feed stdin from another thread so a plugin that writes before reading all its input
    // cannot deadlock against us.
    let feeder = child.stdin.take().map(|mut pipe| {
        let input = stdin.to_vec();
        std::thread::spawn(move || {
            // A plugin that exits without reading stdin closes the pipe: not our error.
            let _ = pipe.write_all(&input);
        })
    });
    let output = child.wait_with_output().map_err(spawn_err)?;
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    // Pass the delegate's diagnostics on (libcni does too); stdout is reserved for results.
    if !output.stderr.is_empty() {
        let _ = io::stderr().write_all(&output.stderr);
    }
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(ExecError::Failed(Failure {
            status: output.status.code(),
            stdout: output.stdout,
            stderr: output.stderr,
        }))
    }
}

const ETXTBSY: i32 = 26;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn finds_the_first_regular_file_in_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("bridge")).unwrap(); // a directory does not count
        let found = script(b.path(), "bridge", "exit 0");
        let cni_path = format!("{}::{}", a.path().display(), b.path().display());
        assert_eq!(find_in_path("bridge", &cni_path).unwrap(), found);
    }

    #[test]
    fn lookup_errors_use_libcnis_wording() {
        assert_eq!(
            find_in_path("nope", "/nonexistent-a:/nonexistent-b")
                .unwrap_err()
                .to_string(),
            r#"failed to find plugin "nope" in path [/nonexistent-a /nonexistent-b]"#
        );
        assert_eq!(
            find_in_path("", "/x").unwrap_err().to_string(),
            "no plugin name provided"
        );
        assert_eq!(
            find_in_path("../../bin/sh", "/x").unwrap_err().to_string(),
            "invalid plugin name: ../../bin/sh"
        );
        assert_eq!(
            find_in_path("bridge", ":").unwrap_err().to_string(),
            "no paths provided"
        );
    }

    #[test]
    fn runs_with_command_env_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(dir.path(), "echoer", r#"printf '%s|' "$CNI_COMMAND"; cat"#);
        assert_eq!(run(&plugin, "ADD", b"{\"a\":1}").unwrap(), b"ADD|{\"a\":1}");
    }

    #[test]
    fn a_failure_keeps_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = script(
            dir.path(),
            "failer",
            r#"echo '{"code":7,"msg":"no"}'; echo oops >&2; exit 3"#,
        );
        let Err(ExecError::Failed(failure)) = run(&plugin, "DEL", b"{}") else {
            panic!("expected a failure");
        };
        assert_eq!(failure.status, Some(3));
        assert_eq!(failure.stdout, b"{\"code\":7,\"msg\":\"no\"}\n");
        assert_eq!(failure.stderr, b"oops\n");
        assert!(failure.has_error_json());
    }

    #[test]
    fn failure_texts_without_an_error_object() {
        let f = |stdout: &[u8], stderr: &[u8]| Failure {
            status: Some(1),
            stdout: stdout.into(),
            stderr: stderr.into(),
        };
        assert_eq!(
            f(b"", b"").to_string(),
            "netplugin failed with no error message: exit status 1"
        );
        assert_eq!(f(b"", b"bad\n").to_string(), r#"netplugin failed: "bad\n""#);
        assert_eq!(
            f(b"garbage", b"").to_string(),
            r#"netplugin failed but error parsing its diagnostic message "garbage": exit status 1"#
        );
        assert!(!f(b"garbage", b"").has_error_json());
        assert!(!f(br#"{"msg":"x"}"#, b"").has_error_json());
    }
}
