//! The README's first command, `./scripts/demo.sh`, runs binaries out of target/: its one
//! `cargo build` line must build every one of them. (It once built only the root package,
//! so the demo stopped at the CNI plugin on a fresh clone.) Pure: reads the script and asks
//! `cargo metadata` which package has which binary.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

#[path = "support/workspace.rs"]
mod workspace;
use workspace::Workspace;

/// The script's lines with `\` continuations joined and comment lines dropped.
fn logical_lines(script: &str) -> Vec<String> {
    script
        .replace("\\\n", " ")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(String::from)
        .collect()
}

/// The binaries a `cargo build ...` command line builds, and whether in release mode.
fn built_by(line: &str, ws: &Workspace) -> (BTreeSet<String>, bool) {
    let args: Vec<&str> = line
        .split("cargo build")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        // The command ends at the first shell operator or redirection.
        .take_while(|a| !a.contains(['|', '&', ';', '>', '<', ')']))
        .collect();
    let mut packages = BTreeSet::new();
    let (mut workspace, mut release, mut all_bins, mut any_target_flag) =
        (false, false, false, false);
    let mut named_bins = BTreeSet::new();
    let mut excluded = BTreeSet::new();
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (args[i], None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| {
                    i += 1;
                    args.get(i).map(|s| s.to_string())
                })
                .unwrap_or_default()
        };
        match flag {
            "--workspace" | "--all" => workspace = true,
            "--release" => release = true,
            "-p" | "--package" => {
                packages.insert(value());
            }
            f if f.starts_with("-p") && f.len() > 2 => {
                packages.insert(f[2..].to_string());
            }
            "--exclude" => {
                excluded.insert(value());
            }
            "--bins" | "--all-targets" => {
                all_bins = true;
                any_target_flag = true;
            }
            "--bin" => {
                named_bins.insert(value());
                any_target_flag = true;
            }
            "--lib" | "--examples" | "--tests" | "--benches" => any_target_flag = true,
            "--example" | "--test" | "--bench" => {
                value();
                any_target_flag = true;
            }
            "--profile" if value() == "release" => release = true,
            "--features" | "-F" | "--target" | "--target-dir" | "-j" | "--jobs"
            | "--manifest-path" | "--message-format" | "--config" | "-Z" => {
                value();
            }
            _ => {}
        }
        i += 1;
    }
    let selected: BTreeSet<String> = if workspace {
        ws.members
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !excluded.contains(n))
            .collect()
    } else if !packages.is_empty() {
        packages
    } else {
        ws.default_members.iter().cloned().collect()
    };
    let mut bins = BTreeSet::new();
    for (_, package_bins) in ws.members.iter().filter(|(n, _)| selected.contains(n)) {
        for bin in package_bins {
            if all_bins || !any_target_flag || named_bins.contains(bin) {
                bins.insert(bin.clone());
            }
        }
    }
    (bins, release)
}

/// Checks that the script's `cargo build` lines build every binary it runs from target/
/// (`target/debug/<name>` or `$TARGET_DIR/debug/<name>`). Returns the binaries it runs.
fn check(script: &str, ws: &Workspace) -> Result<BTreeSet<String>, String> {
    let used_re = Regex::new(r"(?:target|TARGET_DIR\}?)/(debug|release)/([A-Za-z0-9_-]+)").unwrap();
    let lines = logical_lines(script);
    let builds: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("cargo build"))
        .map(|l| (l, built_by(l, ws)))
        .collect();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for line in &lines {
        for c in used_re.captures_iter(line) {
            let (profile, bin) = (&c[1], &c[2]);
            used.insert(bin.to_string());
            let release = profile == "release";
            if !builds
                .iter()
                .any(|(_, (bins, r))| *r == release && bins.contains(bin))
            {
                problems.push(format!(
                    "runs {profile}/{bin}, which no `cargo build` line builds"
                ));
            }
        }
    }
    if builds.is_empty() {
        problems.push("has no `cargo build` line".into());
    }
    if problems.is_empty() {
        return Ok(used);
    }
    for (line, (bins, _)) in &builds {
        problems.push(format!("(`{}` builds {bins:?})", line.trim()));
    }
    Err(problems.join("\n"))
}

#[test]
fn demo_builds_every_binary_it_runs() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh");
    let script = std::fs::read_to_string(&path).expect("read scripts/demo.sh");
    let used =
        check(&script, &Workspace::load()).unwrap_or_else(|e| panic!("scripts/demo.sh:\n{e}"));
    // The demo runs the daemon and the CNI plugin; if this set shrinks, the regex above
    // probably stopped recognising how the script names them.
    assert_eq!(
        used,
        BTreeSet::from(["weft".to_string(), "weftd".to_string()])
    );
}

#[test]
fn the_check_rejects_build_lines_that_miss_a_binary() {
    let ws = Workspace::load();
    let script = |build: &str| {
        format!(
            "#!/bin/bash\n{build}\nWEFTD=$(pwd)/target/debug/weftd\nCNI=$(pwd)/target/debug/weft\n\"$CNI\"\n"
        )
    };
    // The line that shipped: the root package only, so no CNI plugin.
    let err = check(&script("cargo build --locked --bins 2>&1 | tail -1"), &ws).unwrap_err();
    assert!(err.contains("debug/weft,"), "{err}");
    assert!(!err.contains("debug/weftd,"), "{err}");
    let err = check(&script("as_builder cargo build --locked -p weft-cni"), &ws).unwrap_err();
    assert!(err.contains("debug/weftd,"), "{err}");
    assert!(check(&script("cargo build --release --workspace --bins"), &ws).is_err());
    assert!(check(&script("echo no build"), &ws).is_err());
    for good in [
        "cargo build --workspace --bins",
        "cargo build --locked -p weft -p weft-cni",
        "cargo build --all \\\n    --bins",
        "cargo build --package=weft -pweft-cni 2>&1 | tail -1",
    ] {
        check(&script(good), &ws).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}
