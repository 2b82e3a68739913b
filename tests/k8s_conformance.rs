//! The conformance tier (scripts/k8s-conformance.sh, scripts/k8s/e2e.sh) runs Kubernetes'
//! own e2e tests on the real cluster; it takes most of an hour, so nothing runs it on
//! every change. This test (no root, seconds) keeps it consistent:
//! - the images the harness builds are exactly the committed list of what e2e asks for
//!   (scripts/k8s/e2e-images.txt), that list is for the cluster's release and, when the
//!   k8s.io/kubernetes module is in the tier's cache, is what that release's image manifest
//!   names; every node imports them;
//! - the result list in docs/testing.md ("Conformance") is what the selection selects:
//!   every listed test matches a focus expression; a test listed as run matches no skip
//!   rule; a test skipped by a rule gives that rule's reason; the counts add up; and, with
//!   the module cached, every [sig-network] conformance test of the release is listed.

mod support;

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use support::chart;
use support::k8s_tier::tier;

fn lines(command: &str) -> Vec<String> {
    tier(command).lines().map(str::to_string).collect()
}

/// ID → image, from the committed list.
fn committed_images() -> BTreeMap<String, String> {
    lines("e2e_images")
        .iter()
        .map(|l| {
            let (id, image) = l.split_once(' ').expect("ID image");
            (id.to_string(), image.to_string())
        })
        .collect()
}

/// The Kubernetes release the list was made for (its `# version` line).
fn list_version() -> String {
    let text = std::fs::read_to_string(chart::repo().join("scripts/k8s/e2e-images.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# version "))
        .expect("a `# version` line in e2e-images.txt")
        .trim()
        .to_string()
}

/// The k8s.io/kubernetes module at the tier's version in the tier's cache, if a run has
/// downloaded it.
fn cached_module() -> Option<PathBuf> {
    let cache = std::env::var("WEFT_K8S_CACHE").unwrap_or_else(|_| "/var/cache/weft-k8s".into());
    let dir = PathBuf::from(cache).join(format!(
        "gopath/pkg/mod/k8s.io/kubernetes@{}",
        tier("echo $K8S_VERSION").trim()
    ));
    dir.is_dir().then_some(dir)
}

#[test]
fn the_harness_builds_exactly_the_committed_images_for_the_clusters_release() {
    assert_eq!(
        list_version(),
        tier("echo $K8S_VERSION").trim(),
        "e2e-images.txt was made for another release than the cluster's"
    );
    let committed = committed_images();
    let built: BTreeMap<String, String> = lines("e2e_built_images")
        .iter()
        .map(|l| {
            let (id, image) = l.split_once(' ').unwrap();
            (id.to_string(), image.to_string())
        })
        .collect();
    assert_eq!(
        built, committed,
        "the images e2e.sh builds (left) differ from the list e2e asks for (right)"
    );
    for id in ["Agnhost", "BusyBox", "JessieDnsutils", "Nginx", "Pause"] {
        assert!(committed.contains_key(id), "{id} is not in e2e-images.txt");
    }
}

#[test]
fn every_node_imports_the_e2e_images() {
    let archives = lines("for i in $(e2e_images | awk '{print $2}'); do e2e_archive $i; done");
    let extra = archives.join(" ");
    let imported: BTreeSet<String> =
        tier(&format!("EXTRA_IMAGE_ARCHIVES='{extra}' image_archives"))
            .split_whitespace()
            .map(str::to_string)
            .collect();
    for archive in &archives {
        assert!(imported.contains(archive), "nodes do not import {archive}");
    }
    // Distinct images, distinct archives.
    assert_eq!(
        archives.iter().collect::<BTreeSet<_>>().len(),
        archives.len(),
        "{archives:?}"
    );
    // The run passes the archives on to the nodes (node_daemons_up imports image_archives).
    let script = std::fs::read_to_string(chart::repo().join("scripts/k8s/e2e.sh")).unwrap();
    assert!(script.contains("export EXTRA_IMAGE_ARCHIVES"));
}

/// The image each ID of the manifest names with the default registries: reads
/// `configs[ID] = Config{list.Registry, "name", "version"}` and the initRegistry block of
/// test/utils/image/manifest.go.
fn manifest_images(manifest: &str) -> BTreeMap<String, String> {
    let registry = Regex::new(r#"(?m)^\s*(\w+Registry):\s*"([^"]+)","#).unwrap();
    let registries: BTreeMap<&str, &str> = registry
        .captures_iter(manifest)
        .map(|c| (c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str()))
        .collect();
    let config =
        Regex::new(r#"configs\[(\w+)\] = Config\{list\.(\w+), "([^"]+)", "([^"]+)"\}"#).unwrap();
    config
        .captures_iter(manifest)
        .map(|c| {
            let registry = registries
                .get(&c[2])
                .unwrap_or_else(|| panic!("registry {} not in initRegistry", &c[2]));
            (c[1].to_string(), format!("{registry}/{}:{}", &c[3], &c[4]))
        })
        .collect()
}

#[test]
fn the_committed_list_is_the_e2e_manifest_of_that_release() {
    let Some(module) = cached_module() else {
        eprintln!("k8s.io/kubernetes is not in the tier's cache: the manifest is not compared");
        return;
    };
    let manifest = std::fs::read_to_string(module.join("test/utils/image/manifest.go")).unwrap();
    let wanted = manifest_images(&manifest);
    assert!(wanted.len() > 20, "{wanted:?}");
    for (id, image) in committed_images() {
        assert_eq!(
            wanted.get(&id),
            Some(&image),
            "e2e-images.txt: {id} is {image}; the manifest at {} says otherwise",
            list_version()
        );
    }
}

/// A row of the result table in docs/testing.md's Conformance section.
struct Row {
    name: String,
    verdict: String,
    detail: String,
}

fn docs_section() -> String {
    let docs = std::fs::read_to_string(chart::repo().join("docs/testing.md")).unwrap();
    let start = docs
        .find("\n## Conformance")
        .expect("docs/testing.md has a `## Conformance` section");
    let rest = &docs[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

fn docs_rows(section: &str) -> Vec<Row> {
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            (cells.len() == 3 && ["PASS", "FAIL", "SKIP"].contains(&cells[1])).then(|| Row {
                name: cells[0].trim_matches('`').to_string(),
                verdict: cells[1].to_string(),
                detail: cells[2].to_string(),
            })
        })
        .collect()
}

#[test]
fn the_documented_results_are_what_the_selection_selects() {
    let focus: Vec<Regex> = lines(r#"printf '%s\n' "${E2E_FOCUS[@]}""#)
        .iter()
        .map(|f| Regex::new(f).unwrap())
        .collect();
    let skips: Vec<(Regex, String)> = lines(r#"printf '%s\n' "${E2E_SKIPS[@]}""#)
        .iter()
        .map(|rule| {
            let (regex, why) = rule.split_once('|').expect("regex|reason");
            // `|` separates the rule's regex from its reason: a regex holding one would
            // be cut short (and the rest taken for the reason).
            assert!(!why.contains('|'), "a skip rule's regex holds `|`: {rule}");
            (Regex::new(regex).unwrap(), why.to_string())
        })
        .collect();
    assert!(focus.len() >= 2 && skips.len() >= 4);
    let section = docs_section();
    for f in lines(r#"printf '%s\n' "${E2E_FOCUS[@]}""#) {
        assert!(
            section.contains(&f),
            "docs' Conformance section does not name the focus {f}"
        );
    }
    let rows = docs_rows(&section);
    assert!(rows.len() >= 45, "only {} result rows in docs", rows.len());
    let mut names = BTreeSet::new();
    for row in &rows {
        assert!(names.insert(row.name.clone()), "listed twice: {}", row.name);
        assert!(
            focus.iter().any(|f| f.is_match(&row.name)),
            "docs list a test the selection does not select: {}",
            row.name
        );
        let rule = skips.iter().find(|(regex, _)| regex.is_match(&row.name));
        match (row.verdict.as_str(), rule) {
            ("SKIP", Some((_, why))) => assert_eq!(&row.detail, why, "{}", row.name),
            ("SKIP", None) => assert!(
                row.detail.starts_with("skipped itself: "),
                "{} is skipped by no rule, and docs do not give the reason it gave",
                row.name
            ),
            (_, Some((_, why))) => panic!(
                "docs say {} ran ({}), but a skip rule excludes it: {why}",
                row.name, row.verdict
            ),
            (_, None) => {}
        }
    }
    let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
    let summary = format!(
        "{} passed, {} failed, {} skipped",
        count("PASS"),
        count("FAIL"),
        count("SKIP")
    );
    assert!(
        section.contains(&summary),
        "docs' Conformance section does not state its table's counts: {summary}"
    );

    // With the module cached: every [sig-network] conformance test of the release is listed.
    let Some(module) = cached_module() else {
        eprintln!("k8s.io/kubernetes is not in the tier's cache: conformance.yaml is not compared");
        return;
    };
    let yaml =
        std::fs::read_to_string(module.join("test/conformance/testdata/conformance.yaml")).unwrap();
    let wanted = conformance_codenames(&yaml);
    assert!(wanted.len() >= 40, "{wanted:?}");
    for name in wanted {
        assert!(
            names.contains(&name),
            "docs do not list the conformance test {name}"
        );
    }
}

/// The `[sig-network]` codenames of conformance.yaml (a codename may wrap onto the next
/// lines, indented).
fn conformance_codenames(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in yaml.lines() {
        if let Some(rest) = line.strip_prefix("  codename: '") {
            current = Some(rest.to_string());
        } else if let Some(text) = current.as_mut() {
            if line.starts_with("    ") {
                text.push(' ');
                text.push_str(line.trim());
            } else {
                let done = current.take().unwrap();
                out.push(done);
                continue;
            }
        }
        if let Some(text) = &current
            && text.ends_with('\'')
        {
            out.push(current.take().unwrap());
        }
    }
    out.into_iter()
        .map(|c| c.trim_end_matches('\'').replace("''", "'"))
        .filter(|c| c.starts_with("[sig-network]"))
        .collect()
}
