//! scripts/link-hot-first, the linker wrapper of the shipped build (docs/benchmarks.md,
//! "Hot code first"): the listed functions come first in `.text`, in the list's order;
//! names it cannot find are skipped, and a linker other than lld changes nothing; the
//! program links and runs as without it. Most tests link a small program with the real
//! rustc, cc and lld, as the `dist` build does.
//!
//! A list that has decayed (fewer than `WEFT_HOT_MIN_SHARE` percent of its names found)
//! fails the link unless `WEFT_HOT_ALLOW_STALE=1`. Those tests run the wrapper itself on
//! one object with a stand-in for the real linker: the threshold is the wrapper's own
//! logic, and checking it takes milliseconds.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The wrapper's settings; each test sets the ones it wants, whatever the caller's
/// environment holds.
const SETTINGS: [&str; 2] = ["WEFT_HOT_MIN_SHARE", "WEFT_HOT_ALLOW_STALE"];

const PROGRAM: &str = r#"
#[inline(never)] pub fn alpha(x: u64) -> u64 { x.wrapping_mul(3) ^ 0x55 }
#[inline(never)] pub fn beta(x: u64) -> u64 { x.rotate_left(7) + 11 }
#[inline(never)] pub fn gamma<T: std::fmt::Debug>(t: T) -> String { format!("<{t:?}>") }
fn main() {
    let n = std::hint::black_box(5u64);
    println!("{} {} {}", alpha(n), beta(n), gamma(n));
}
"#;

fn wrapper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/link-hot-first")
}

/// Compiles PROGRAM in `dir` with the wrapper as linker, `list` as its hot list and `env`
/// as its settings; `args` are rustc's other options.
fn compile(dir: &Path, args: &[&str], list: &Path, env: &[(&str, &str)]) -> PathBuf {
    std::fs::write(dir.join("prog.rs"), PROGRAM).unwrap();
    let mut rustc = Command::new("rustc");
    for name in SETTINGS {
        rustc.env_remove(name);
    }
    let out = rustc
        .current_dir(dir)
        .args(args)
        .arg("-C")
        .arg(format!("linker={}", wrapper().display()))
        .args(["--crate-name", "prog", "prog.rs"])
        .env("WEFT_HOT_FUNCTIONS", list)
        .envs(env.iter().copied())
        .output()
        .expect("rustc runs");
    assert!(
        out.status.success(),
        "link failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("prog")
}

/// Builds PROGRAM as the `dist` build links weftd (v0 names, the wrapper as linker) with
/// `list` as the hot list, `extra` rustc options and `env` as the wrapper's settings;
/// returns the binary.
fn link_with(dir: &Path, list: &str, extra: &[&str], env: &[(&str, &str)]) -> PathBuf {
    std::fs::write(dir.join("hot.txt"), list).unwrap();
    let args = [&["-O", "-C", "symbol-mangling-version=v0"], extra].concat();
    compile(dir, &args, &dir.join("hot.txt"), env)
}

fn run(binary: &Path) -> String {
    let out = Command::new(binary).output().expect("the program runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The program's own functions (`prog::…`), in address order.
fn own_functions_by_address(binary: &Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-n", "-C", "--defined-only"])
        .arg(binary)
        .output()
        .expect("nm runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .filter(|name| name.starts_with("prog::"))
        .map(String::from)
        .collect()
}

#[test]
fn listed_functions_come_first_in_the_lists_order() {
    let dir = tempfile::tempdir().unwrap();
    // A generic instance is named with its arguments (v0 names), so it can be listed.
    let list = "# a comment line\nprog::gamma::<u64>\nprog::beta\n\nprog::alpha\n";
    let binary = link_with(dir.path(), list, &[], &[]);
    assert_eq!(run(&binary), "90 651 <5>\n");
    let order = own_functions_by_address(&binary);
    assert_eq!(
        order[..3],
        ["prog::gamma::<u64>", "prog::beta", "prog::alpha"],
        "{order:?}"
    );
    // The ordering lld was given: mangled names, one a line, in the list's order.
    let ordering = std::fs::read_to_string(dir.path().join("prog.symbol-order")).unwrap();
    let lines: Vec<&str> = ordering.lines().collect();
    assert_eq!(lines.len(), 3, "{ordering}");
    assert!(lines.iter().all(|l| l.starts_with("_R")), "{ordering}");
    assert!(
        lines[0].contains("5gamma") && lines[2].contains("5alpha"),
        "{ordering}"
    );

    // The reverse list gives the reverse order: the list decides, not the source.
    let dir = tempfile::tempdir().unwrap();
    let binary = link_with(
        dir.path(),
        "prog::alpha\nprog::beta\nprog::gamma::<u64>\n",
        &[],
        &[],
    );
    assert_eq!(
        own_functions_by_address(&binary)[..3],
        ["prog::alpha", "prog::beta", "prog::gamma::<u64>"]
    );
}

/// A stale list, allowed: what cannot be found is skipped, and the link is the plain one.
#[test]
fn names_it_cannot_find_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let list = "weft::gone::function\nprog::delta\n";
    let binary = link_with(dir.path(), list, &[], &[("WEFT_HOT_ALLOW_STALE", "1")]);
    assert_eq!(run(&binary), "90 651 <5>\n");
    let ordering = std::fs::read_to_string(dir.path().join("prog.symbol-order")).unwrap();
    assert_eq!(ordering, "", "nothing to order");
}

#[test]
fn without_a_list_it_is_the_plain_linker() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), &[], &dir.path().join("missing.txt"), &[]);
    assert_eq!(run(&binary), "90 651 <5>\n");
    assert!(!dir.path().join("prog.symbol-order").exists());
}

/// `--symbol-ordering-file` is lld's: a link through another linker (GNU ld here, the
/// default before Rust 1.90) must not be handed it.
#[test]
fn another_linker_gets_no_ordering() {
    let dir = tempfile::tempdir().unwrap();
    let bfd = ["-C", "link-arg=-fuse-ld=bfd"];
    let binary = link_with(dir.path(), "prog::alpha\n", &bfd, &[]);
    assert_eq!(run(&binary), "90 651 <5>\n");
    assert!(!dir.path().join("prog.symbol-order").exists());
}

/// Proc macros are linked as shared libraries through the same linker: left alone.
#[test]
fn shared_libraries_get_no_ordering() {
    let dir = tempfile::tempdir().unwrap();
    link_with(
        dir.path(),
        "prog::alpha\n",
        &["--crate-type", "cdylib"],
        &[],
    );
    let library = dir.path().join("libprog.so");
    assert!(library.exists(), "no shared library built");
    assert!(!dir.path().join("libprog.so.symbol-order").exists());
}

/// What the wrapper did with one link: its exit status, its stderr, and the arguments the
/// linker behind it got (`None`: the linker never ran).
struct Guarded {
    status: Option<i32>,
    stderr: String,
    linker_args: Option<String>,
}

/// Runs the wrapper as rustc runs it for weftd (lld, an output, an object) with `list` as
/// the hot list and `env` as its settings, and a stand-in linker that only records its
/// arguments. The object defines `hot_0` to `hot_9` (C names: nothing to demangle).
fn guard(list: &[&str], env: &[(&str, &str)]) -> Guarded {
    guard_linking("prog", list, env)
}

/// The wrapper alone, linking `output` from one C object with a stand-in linker.
fn guard_linking(output: &str, list: &[&str], env: &[(&str, &str)]) -> Guarded {
    let dir = tempfile::tempdir().unwrap();
    let source = (0..10).map(|i| format!("void hot_{i}(void) {{}}\n"));
    std::fs::write(dir.path().join("hot.c"), source.collect::<String>()).unwrap();
    let cc = Command::new("cc")
        .current_dir(dir.path())
        .args(["-c", "hot.c", "-o", "hot.o"])
        .status()
        .expect("cc runs");
    assert!(cc.success());
    let recorder = dir.path().join("linker");
    std::fs::write(&recorder, "#!/bin/sh\necho \"$@\" >\"$0.args\"\n").unwrap();
    std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("hot.txt"), list.join("\n") + "\n").unwrap();

    let mut wrapper = Command::new(wrapper());
    for name in SETTINGS {
        wrapper.env_remove(name);
    }
    let out = wrapper
        .current_dir(dir.path())
        .args(["-fuse-ld=lld", "-o", output, "hot.o"])
        .env("WEFT_HOT_FUNCTIONS", dir.path().join("hot.txt"))
        .env("WEFT_LINKER", &recorder)
        .envs(env.iter().copied())
        .output()
        .expect("the wrapper runs");
    Guarded {
        status: out.status.code(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        linker_args: std::fs::read_to_string(dir.path().join("linker.args")).ok(),
    }
}

/// `found` names of the object, then unknown ones up to ten names in all.
fn list_finding(found: usize) -> Vec<String> {
    (0..10)
        .map(|i| {
            if i < found {
                format!("hot_{i}")
            } else {
                format!("weft::renamed::function_{i}")
            }
        })
        .collect()
}

fn as_strs(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// A build script (cargo links it through the same linker when no `--target` is given,
/// as in the Containerfile) is not weftd: passed through, no order, no guard.
#[test]
fn build_scripts_pass_through_unordered_and_unguarded() {
    let list = list_finding(1);
    let g = guard_linking("build_script_build-0123abcd", &as_strs(&list), &[]);
    assert_eq!(g.status, Some(0), "{}", g.stderr);
    assert!(!g.stderr.contains("link-hot-first"), "{}", g.stderr);
    let args = g.linker_args.expect("the linker ran");
    assert!(!args.contains("--symbol-ordering-file"), "{args}");
}

/// The guard against a list that decays as code is renamed or moved: it fails the link,
/// and says by how much, why it matters and what to run.
#[test]
fn a_list_mostly_not_found_fails_the_link_and_says_what_to_do() {
    let list = list_finding(1);
    let g = guard(&as_strs(&list), &[]);
    assert_eq!(g.status, Some(1), "{}", g.stderr);
    assert_eq!(g.linker_args, None, "the link must not happen");
    for expected in [
        "link-hot-first: 1 of 10 listed functions found\n",
        "error: only 1 of the 10 functions listed in ",
        "(10%) are in the objects being linked; at least 90% (WEFT_HOT_MIN_SHARE) should be",
        "resident memory grows",
        "regenerate the list with scripts/hot-functions.sh",
        "set WEFT_HOT_ALLOW_STALE=1",
    ] {
        assert!(g.stderr.contains(expected), "{expected:?} in {}", g.stderr);
    }
}

/// WEFT_HOT_ALLOW_STALE=1: the same words as a warning, and the link goes ahead ordered by
/// what was found.
#[test]
fn allow_stale_warns_and_links_with_what_was_found() {
    let list = list_finding(1);
    let g = guard(&as_strs(&list), &[("WEFT_HOT_ALLOW_STALE", "1")]);
    assert_eq!(g.status, Some(0), "{}", g.stderr);
    assert!(
        g.stderr.contains("warning: only 1 of the 10 functions")
            && g.stderr.contains("scripts/hot-functions.sh")
            && !g.stderr.contains("error"),
        "{}",
        g.stderr
    );
    let args = g.linker_args.expect("the linker ran");
    assert!(
        args.starts_with("-fuse-ld=lld -o prog hot.o -Wl,--symbol-ordering-file="),
        "{args}"
    );
}

/// The share is of the listed names, against WEFT_HOT_MIN_SHARE (90 unless set); reaching
/// it exactly is enough. Every ordered link says how many it found.
#[test]
fn the_threshold_is_a_share_of_the_listed_names() {
    for (found, min_share, passes) in [
        (10, None, true),
        (9, None, true),
        (8, None, false),
        (5, Some("50"), true),
        (4, Some("50"), false),
        (0, Some("0"), true),
        (9, Some("100"), false),
        (10, Some("100"), true),
    ] {
        let list = list_finding(found);
        let env: Vec<(&str, &str)> = min_share
            .map(|share| ("WEFT_HOT_MIN_SHARE", share))
            .into_iter()
            .collect();
        let g = guard(&as_strs(&list), &env);
        let case = format!("{found} of 10 found, minimum {min_share:?}: {}", g.stderr);
        assert_eq!(g.status == Some(0), passes, "{case}");
        assert_eq!(g.linker_args.is_some(), passes, "{case}");
        let count = format!("link-hot-first: {found} of 10 listed functions found\n");
        assert!(g.stderr.starts_with(&count), "{case}");
    }
}

/// A setting that is not a percentage is refused, rather than read as 0 (no guard at all).
#[test]
fn a_bad_minimum_share_is_refused() {
    let list = list_finding(10);
    for bad in ["50%", "abc", "101", "-1", "0.5"] {
        let g = guard(&as_strs(&list), &[("WEFT_HOT_MIN_SHARE", bad)]);
        assert_eq!(g.status, Some(2), "{bad}: {}", g.stderr);
        assert!(
            g.stderr
                .contains("WEFT_HOT_MIN_SHARE must be a whole percentage, 0 to 100"),
            "{bad}: {}",
            g.stderr
        );
        assert_eq!(g.linker_args, None, "{bad}");
    }
}
