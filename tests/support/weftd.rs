//! The real weftd binary, run inside a network namespace with its log in a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub struct Weftd {
    child: Option<Child>,
    pub log_file: PathBuf,
    /// Where this process's part of the (shared, appended) log file starts.
    log_start: usize,
    pub subnet_file: PathBuf,
}

impl Weftd {
    /// Starts `weftd` in `netns` with `args`; `--subnet-file` is set to `dir/subnet.env`.
    pub fn start(netns: &str, dir: &Path, args: &[&str]) -> Weftd {
        Self::start_with_env(netns, dir, args, &[])
    }

    pub fn start_with_env(netns: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Weftd {
        Self::start_via(&["ip", "netns", "exec", netns], dir, args, env)
    }

    /// Starts weftd through `launcher` (e.g. `nsenter --target <pid> --mount --net --`,
    /// to run it in a node's own mount namespace too).
    pub fn start_via(launcher: &[&str], dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Weftd {
        std::fs::create_dir_all(dir).expect("weftd dir");
        let subnet_file = dir.join("subnet.env");
        // Benchmarks may compare against another build (scripts/bench.sh --baseline).
        let binary = std::env::var("WEFT_BENCH_WEFTD")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_weftd").to_string());
        let mut cmd = Command::new(launcher[0]);
        cmd.args(&launcher[1..])
            .arg(&binary)
            .arg(format!("--subnet-file={}", subnet_file.display()))
            .args(args)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied());
        Self::spawn(cmd, &dir.join("weftd.log"), subnet_file)
    }

    /// Starts weftd as `cmd` says (e.g. in a container's root, see `container`), its
    /// output appended to `log_file`; `subnet_file` is where, seen from the test, it
    /// writes subnet.env.
    pub fn spawn(mut cmd: Command, log_file: &Path, subnet_file: PathBuf) -> Weftd {
        let log_start = std::fs::metadata(log_file).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("cannot start weftd");
        Weftd {
            child: Some(child),
            log_file: log_file.to_owned(),
            log_start,
            subnet_file,
        }
    }

    /// This process's log (a restarted weftd appends to the same file).
    pub fn log(&self) -> String {
        let all = std::fs::read(&self.log_file).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.log_start..).unwrap_or_default()).into_owned()
    }

    /// Waits until the log contains `needle`; panics with the log otherwise.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let found =
            super::wait_for_result(needle, limit, || self.log().contains(needle).then_some(()));
        assert!(
            found.is_some(),
            "weftd never logged {needle:?} within {limit:?}; log:\n{}",
            self.log()
        );
    }

    /// Counts the log lines containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// The subnet.env contents once written.
    pub fn wait_subnet_env(&self, limit: Duration) -> String {
        let found = super::wait_for_result("subnet.env", limit, || {
            std::fs::read_to_string(&self.subnet_file).ok()
        });
        found.unwrap_or_else(|| {
            panic!(
                "weftd never wrote {}; log:\n{}",
                self.subnet_file.display(),
                self.log()
            )
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("weftd not running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = super::wait_for_result("weftd to exit", Duration::from_secs(10), || {
            child.try_wait().ok().flatten()
        });
        match status {
            Some(status) => status,
            None => {
                let _ = child.kill();
                panic!(
                    "weftd did not exit within 10 s of SIGTERM; log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Waits for weftd to exit by itself (e.g. on a fatal config error).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("weftd not running");
        let status =
            super::wait_for_result("weftd to exit", limit, || child.try_wait().ok().flatten());
        status
            .unwrap_or_else(|| panic!("weftd still running after {limit:?}; log:\n{}", self.log()))
    }
}

/// How much of a weftd's log a failing test prints: the end, where the failure is.
const LOG_TAIL_ON_FAILURE: usize = 150;

impl Drop for Weftd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that failed while this weftd ran prints what it logged: a CI run keeps
        // no files, and a timeout's message alone does not say why a pass never came.
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!(
                "---- the last {} lines of {} ----\n{}",
                tail.len(),
                self.log_file.display(),
                tail.join("\n")
            );
        }
    }
}
