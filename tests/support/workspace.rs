//! The workspace's members and their binary targets, from `cargo metadata` (offline).
//! Included by path by the pure tests that check scripts against the binaries.
#![allow(dead_code)] // each including test uses part of it

use serde_json::Value;
use std::process::Command;

/// The workspace's packages as `cargo metadata` reports them.
pub struct Workspace {
    /// (package name, its binary targets), for every member.
    pub members: Vec<(String, Vec<String>)>,
    /// Package names `cargo build` selects without `-p` or `--workspace`.
    pub default_members: Vec<String>,
}

impl Workspace {
    pub fn load() -> Self {
        let output = Command::new(env!("CARGO"))
            .args([
                "metadata",
                "--no-deps",
                "--offline",
                "--format-version",
                "1",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(
            output.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let meta: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
        let ids = |key: &str| -> Vec<String> {
            meta[key]
                .as_array()
                .unwrap_or(&Vec::new())
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        };
        let (member_ids, default_ids) =
            (ids("workspace_members"), ids("workspace_default_members"));
        let mut members = Vec::new();
        let mut default_members = Vec::new();
        for package in meta["packages"].as_array().expect("packages") {
            let id = package["id"].as_str().unwrap_or_default().to_string();
            if !member_ids.contains(&id) {
                continue;
            }
            let name = package["name"].as_str().expect("package name").to_string();
            let bins = package["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
                .map(|t| t["name"].as_str().expect("target name").to_string())
                .collect();
            if default_ids.contains(&id) {
                default_members.push(name.clone());
            }
            members.push((name, bins));
        }
        Workspace {
            members,
            default_members,
        }
    }

    /// Every binary target of the members.
    pub fn binaries(&self) -> std::collections::BTreeSet<String> {
        self.members
            .iter()
            .flat_map(|(_, bins)| bins.iter().cloned())
            .collect()
    }
}
