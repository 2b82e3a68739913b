//! Scrapes weftd's `/metrics` from inside a node namespace and parses it with the
//! Prometheus project's own Python parser (`prometheus_client.parser`), so the tests check
//! the exposition against a real implementation of the text format, not against ours.
//!
//! The parser is pip-installed once into [`PY_DIR`] (outside the repository), pinned, and
//! reused; the install is serialized with `flock` across test processes. A machine
//! without python3, pip or access to PyPI fails the test with the reason.

use super::netns::Netns;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const PY_DIR: &str = "/var/cache/weft-test-py";
pub const PROMETHEUS_CLIENT: &str = "prometheus-client==0.26.0";

/// Installs the parser unless it is there (idempotent).
pub fn ensure_parser() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let marker = Path::new(PY_DIR).join("prometheus_client/parser.py");
        if marker.exists() {
            return;
        }
        std::fs::create_dir_all(PY_DIR).unwrap_or_else(|e| panic!("cannot create {PY_DIR}: {e}"));
        let output = Command::new("flock")
            .arg(format!("{PY_DIR}.lock"))
            .args(["python3", "-m", "pip", "install", "--quiet"])
            .args(["--disable-pip-version-check", "--no-warn-script-location"])
            .args(["--target", PY_DIR, PROMETHEUS_CLIENT])
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 -m pip (needs python3 and pip): {e}"));
        assert!(
            output.status.success() && marker.exists(),
            "cannot install Python's {PROMETHEUS_CLIENT} into {PY_DIR} with `python3 -m pip \
             install --target`; these tests need python3, pip and PyPI: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": family.name, "type": family.type,
                "samples": [[s.name, s.labels, s.value] for s in family.samples]})
print(json.dumps(out))
"#;

/// One sample as the Python parser read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Family name (as the parser names it: counters without `_total`) → type.
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses `text` with `prometheus_client.parser`; panics with the parser's error.
    pub fn parse(text: &str) -> Scrape {
        ensure_parser();
        let mut child = Command::new("python3")
            .args(["-c", PARSE])
            .env("PYTHONPATH", PY_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "prometheus_client.parser rejected the scrape: {}\n{text}",
            String::from_utf8_lossy(&output.stderr)
        );
        let families: Value = serde_json::from_slice(&output.stdout).expect("parser output");
        let mut scrape = Scrape::default();
        for family in families.as_array().unwrap() {
            scrape.types.insert(
                family["name"].as_str().unwrap().to_string(),
                family["type"].as_str().unwrap().to_string(),
            );
            for s in family["samples"].as_array().unwrap() {
                scrape.samples.push(Sample {
                    name: s[0].as_str().unwrap().to_string(),
                    labels: s[1]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect(),
                    value: s[2].as_f64().unwrap(),
                });
            }
        }
        scrape
    }

    /// Samples named `name` carrying (at least) `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample `name{labels...}`; panics when there is none or several.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    /// The sum of the samples `name{labels...}`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// GETs `/metrics` on weftd's health port (8081 in tests) inside `ns` and parses it.
pub fn scrape(ns: &Netns) -> Scrape {
    let (code, body) = ns
        .http_get("http://127.0.0.1:8081/metrics")
        .expect("an answer from /metrics");
    assert_eq!(code, 200, "{body}");
    Scrape::parse(&body)
}
