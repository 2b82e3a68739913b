//! `weft install`: what the chart's init containers run to put the plugin and its conflist
//! on the node, without a shell or `cp` in the image.
//!
//! ```text
//! weft install [--binary-to PATH] [--conflist-from PATH --conflist-to PATH]
//! ```
//!
//! - `--binary-to`: copies this very executable (read through `/proc/self/exe`) to PATH,
//!   mode 0755. The chart installs it as `<cniBinDir>/flannel`, so conflists naming
//!   `flannel` keep working.
//! - `--conflist-from`/`--conflist-to`: checks that the file is a CNI network
//!   configuration list (the checks libcni makes when it loads one: a JSON object with a
//!   `name` and a non-empty `plugins` list whose entries have a `type`), then writes it,
//!   mode 0644. A broken conflist fails the init container, with the reason, instead of
//!   leaving the node with a config that every pod creation trips over.
//!
//! Every file is written to a temporary file in the destination directory, synced, and
//! renamed over the destination, so the runtime never runs or reads a half-written file.
//! The destination directory is created if missing.
//!
//! A CNI runtime runs the plugin with `CNI_COMMAND` set, and the arguments are unused by
//! the protocol, so `main` treats the command line as an install only when `CNI_COMMAND`
//! is unset and the first argument is exactly `install` ([`requested`]).

use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

pub const USAGE: &str = "\
usage: weft install [--binary-to PATH] [--conflist-from PATH --conflist-to PATH]

Installs weft's CNI plugin and its network configuration list on a node (the chart's
init containers run it). Each file is written atomically (temporary file + rename).

  --binary-to PATH      copy this executable to PATH (mode 0755), e.g.
                        /opt/cni/bin/flannel
  --conflist-from PATH  the CNI configuration list to install (checked first)
  --conflist-to PATH    where to write it (mode 0644), e.g.
                        /etc/cni/net.d/10-flannel.conflist
";

/// Whether this command line asks for `install` rather than a CNI command.
pub fn requested(args: &[OsString], cni_command: Option<OsString>) -> bool {
    cni_command.is_none() && args.get(1).is_some_and(|a| a == "install")
}

/// What to install.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Install {
    pub binary_to: Option<PathBuf>,
    pub conflist: Option<(PathBuf, PathBuf)>,
}

/// The parsed command line (the arguments after `install`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Install(Install),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// This executable could not be read.
    #[error("cannot read this executable ({path}): {source}")]
    ReadSelf {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The conflist could not be read.
    #[error("cannot read the conflist {path}: {source}")]
    ReadConflist {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The conflist is not one libcni would load.
    #[error("{path} is not a valid CNI conflist: {reason}")]
    InvalidConflist { path: PathBuf, reason: String },
    /// Writing the destination failed; it is left as it was.
    #[error("cannot install {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses the arguments after `install`: `--flag value` or `--flag=value`.
pub fn parse(args: &[OsString]) -> Result<Parsed, UsageError> {
    let mut binary_to = None;
    let mut conflist_from = None;
    let mut conflist_to = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let text = arg
            .to_str()
            .ok_or_else(|| UsageError(format!("argument {arg:?} is not UTF-8")))?;
        if text == "-h" || text == "--help" {
            return Ok(Parsed::Help);
        }
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) => (name, Some(OsString::from(value))),
            None => (text, None),
        };
        let slot = match name {
            "--binary-to" => &mut binary_to,
            "--conflist-from" => &mut conflist_from,
            "--conflist-to" => &mut conflist_to,
            _ => return Err(UsageError(format!("unknown argument {text:?}"))),
        };
        let value = match inline {
            Some(value) => value,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{name} needs a path")))?,
        };
        if value.is_empty() {
            return Err(UsageError(format!("{name} needs a path, got an empty one")));
        }
        if slot.replace(PathBuf::from(value)).is_some() {
            return Err(UsageError(format!("{name} is given twice")));
        }
    }
    let conflist = match (conflist_from, conflist_to) {
        (Some(from), Some(to)) => Some((from, to)),
        (None, None) => None,
        (Some(_), None) => return Err(UsageError("--conflist-from needs --conflist-to".into())),
        (None, Some(_)) => return Err(UsageError("--conflist-to needs --conflist-from".into())),
    };
    if binary_to.is_none() && conflist.is_none() {
        return Err(UsageError(
            "nothing to install: give --binary-to and/or --conflist-from/--conflist-to".into(),
        ));
    }
    Ok(Parsed::Install(Install {
        binary_to,
        conflist,
    }))
}

/// Installs what `install` asks for, the conflist first (it is checked, so a bad one
/// stops everything before anything is written). Returns one line per installed file.
pub fn run(install: &Install, self_exe: &Path) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    if let Some((from, to)) = &install.conflist {
        let text = fs::read(from).map_err(|source| InstallError::ReadConflist {
            path: from.clone(),
            source,
        })?;
        check_conflist(&text).map_err(|reason| InstallError::InvalidConflist {
            path: from.clone(),
            reason,
        })?;
        write_atomically(to, &text, 0o644).map_err(|source| InstallError::Write {
            path: to.clone(),
            source,
        })?;
        done.push(format!(
            "installed {} from {}",
            to.display(),
            from.display()
        ));
    }
    if let Some(to) = &install.binary_to {
        let binary = fs::read(self_exe).map_err(|source| InstallError::ReadSelf {
            path: self_exe.to_owned(),
            source,
        })?;
        write_atomically(to, &binary, 0o755).map_err(|source| InstallError::Write {
            path: to.clone(),
            source,
        })?;
        done.push(format!(
            "installed {} ({} bytes)",
            to.display(),
            binary.len()
        ));
    }
    Ok(done)
}

/// The checks libcni makes when it loads a conflist (`ConfListFromBytes`), so that a
/// config the runtime would refuse is refused here, at install time.
pub fn check_conflist(bytes: &[u8]) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("not a JSON object (a conflist is an object with \"name\" and \"plugins\")")?;
    match object.get("name") {
        Some(serde_json::Value::String(name)) if !name.is_empty() => {}
        Some(serde_json::Value::String(_)) | None => return Err("no name".into()),
        Some(other) => return Err(format!("\"name\" must be a string, got {other}")),
    }
    if let Some(version) = object.get("cniVersion").filter(|v| !v.is_string()) {
        return Err(format!("\"cniVersion\" must be a string, got {version}"));
    }
    let plugins = match object.get("plugins") {
        Some(serde_json::Value::Array(plugins)) if !plugins.is_empty() => plugins,
        Some(serde_json::Value::Array(_)) | None => {
            return Err(
                "no plugins in list (is this a single network config rather than a \
                        conflist?)"
                    .into(),
            );
        }
        Some(other) => return Err(format!("\"plugins\" must be a list, got {other}")),
    };
    for (index, plugin) in plugins.iter().enumerate() {
        match plugin.get("type") {
            Some(serde_json::Value::String(kind)) if !kind.is_empty() => {}
            _ => return Err(format!("plugin {index} has no \"type\": {plugin}")),
        }
    }
    Ok(())
}

/// Writes `bytes` to a temporary file next to `path`, syncs it, sets `mode` and renames
/// it over `path`; then syncs the directory. On failure the temporary file is removed
/// and `path` is untouched.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".weft-install-{}", std::process::id()));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // Make the rename durable; not every filesystem can sync a directory.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The `install` subcommand's entry: prints what it did or why it failed, and returns
/// the exit status (0 done, 1 failed, 2 usage error).
pub fn main(args: &[OsString]) -> u8 {
    match parse(args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            0
        }
        Ok(Parsed::Install(install)) => match run(&install, Path::new("/proc/self/exe")) {
            Ok(done) => {
                for line in done {
                    println!("weft install: {line}");
                }
                0
            }
            Err(e) => {
                eprintln!("weft install: error: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("weft install: {e}\n\n{USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn install_is_requested_only_without_cni_command_and_as_first_argument() {
        let cmd = args(&["weft", "install", "--binary-to", "/x"]);
        assert!(requested(&cmd, None));
        assert!(!requested(&cmd, Some("ADD".into())));
        assert!(!requested(&cmd, Some("".into())));
        assert!(!requested(&args(&["weft"]), None));
        assert!(!requested(&args(&["weft", "installx"]), None));
        assert!(!requested(&args(&["weft", "--binary-to", "install"]), None));
        assert!(!requested(&args(&["weft", "INSTALL"]), None));
    }

    #[test]
    fn parses_both_forms() {
        let parsed = parse(&args(&[
            "--binary-to",
            "/opt/cni/bin/flannel",
            "--conflist-from=/etc/kube-flannel/cni-conf.json",
            "--conflist-to",
            "/etc/cni/net.d/10-flannel.conflist",
        ]))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed::Install(Install {
                binary_to: Some("/opt/cni/bin/flannel".into()),
                conflist: Some((
                    "/etc/kube-flannel/cni-conf.json".into(),
                    "/etc/cni/net.d/10-flannel.conflist".into()
                )),
            })
        );
        assert_eq!(parse(&args(&["--help"])).unwrap(), Parsed::Help);
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let cases: [(&[&str], &str); 7] = [
            (&[], "nothing to install"),
            (&["--binary-to"], "--binary-to needs a path"),
            (&["--binary-to="], "empty"),
            (&["--bin", "/x"], "unknown argument \"--bin\""),
            (
                &["--conflist-from", "/a"],
                "--conflist-from needs --conflist-to",
            ),
            (
                &["--conflist-to", "/a"],
                "--conflist-to needs --conflist-from",
            ),
            (&["--binary-to", "/a", "--binary-to", "/b"], "given twice"),
        ];
        for (list, wanted) in cases {
            let err = parse(&args(list)).unwrap_err().to_string();
            assert!(err.contains(wanted), "{list:?}: {err}");
        }
    }

    #[test]
    fn conflist_checks_are_libcnis() {
        let good = br#"{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#;
        assert_eq!(check_conflist(good), Ok(()));
        let cases: [(&[u8], &str); 8] = [
            (b"{", "not JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"plugins":[{"type":"flannel"}]}"#, "no name"),
            (br#"{"name":7,"plugins":[]}"#, "\"name\" must be a string"),
            (br#"{"name":"x","plugins":[]}"#, "no plugins in list"),
            (br#"{"name":"x","type":"flannel"}"#, "no plugins in list"),
            (
                br#"{"name":"x","plugins":[{"typ":"flannel"}]}"#,
                "plugin 0 has no \"type\"",
            ),
            (
                br#"{"name":"x","cniVersion":1,"plugins":[{"type":"a"}]}"#,
                "\"cniVersion\"",
            ),
        ];
        for (text, wanted) in cases {
            let err = check_conflist(text).unwrap_err();
            assert!(
                err.contains(wanted),
                "{}: {err}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn writes_atomically_with_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/flannel");
        write_atomically(&path, b"one", 0o755).unwrap();
        write_atomically(&path, b"two", 0o755).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["flannel"]);
    }

    #[test]
    fn a_bad_conflist_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("cni-conf.json");
        let to = dir.path().join("net.d/10-flannel.conflist");
        let binary = dir.path().join("bin/flannel");
        fs::write(&from, br#"{"name":"cbr0","plugins":[{"type":"flannel"},]}"#).unwrap();
        let install = Install {
            binary_to: Some(binary.clone()),
            conflist: Some((from.clone(), to.clone())),
        };
        let err = run(&install, &from).unwrap_err().to_string();
        assert!(
            err.contains("is not a valid CNI conflist: not JSON"),
            "{err}"
        );
        assert!(!to.exists() && !binary.exists());
    }
}
