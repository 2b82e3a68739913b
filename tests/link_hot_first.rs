//! scripts/link-hot-first, the linker wrapper of the shipped build (docs/benchmarks.md,
//! "Hot code first"): the listed functions come first in `.text`, in the list's order;
//! names it cannot find, or a linker other than lld, change nothing; the program links
//! and runs as without it. Each test links a small program with the real rustc, cc and
//! lld, as the `dist` build does.

use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Compiles PROGRAM in `dir` with the wrapper as linker and `list` as its hot list;
/// `args` are rustc's other options.
fn compile(dir: &Path, args: &[&str], list: &Path) -> PathBuf {
    std::fs::write(dir.join("prog.rs"), PROGRAM).unwrap();
    let out = Command::new("rustc")
        .current_dir(dir)
        .args(args)
        .arg("-C")
        .arg(format!("linker={}", wrapper().display()))
        .args(["--crate-name", "prog", "prog.rs"])
        .env("WEFT_HOT_FUNCTIONS", list)
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
/// `list` as the hot list and `extra` rustc options; returns the binary.
fn link_with(dir: &Path, list: &str, extra: &[&str]) -> PathBuf {
    std::fs::write(dir.join("hot.txt"), list).unwrap();
    let args = [&["-O", "-C", "symbol-mangling-version=v0"], extra].concat();
    compile(dir, &args, &dir.join("hot.txt"))
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
    let binary = link_with(dir.path(), list, &[]);
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
    );
    assert_eq!(
        own_functions_by_address(&binary)[..3],
        ["prog::alpha", "prog::beta", "prog::gamma::<u64>"]
    );
}

#[test]
fn names_it_cannot_find_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let binary = link_with(dir.path(), "weft::gone::function\nprog::delta\n", &[]);
    assert_eq!(run(&binary), "90 651 <5>\n");
    let ordering = std::fs::read_to_string(dir.path().join("prog.symbol-order")).unwrap();
    assert_eq!(ordering, "", "nothing to order");
}

#[test]
fn without_a_list_it_is_the_plain_linker() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile(dir.path(), &[], &dir.path().join("missing.txt"));
    assert_eq!(run(&binary), "90 651 <5>\n");
    assert!(!dir.path().join("prog.symbol-order").exists());
}

/// `--symbol-ordering-file` is lld's: a link through another linker (GNU ld here, the
/// default before Rust 1.90) must not be handed it.
#[test]
fn another_linker_gets_no_ordering() {
    let dir = tempfile::tempdir().unwrap();
    let bfd = ["-C", "link-arg=-fuse-ld=bfd"];
    let binary = link_with(dir.path(), "prog::alpha\n", &bfd);
    assert_eq!(run(&binary), "90 651 <5>\n");
    assert!(!dir.path().join("prog.symbol-order").exists());
}

/// Proc macros are linked as shared libraries through the same linker: left alone.
#[test]
fn shared_libraries_get_no_ordering() {
    let dir = tempfile::tempdir().unwrap();
    link_with(dir.path(), "prog::alpha\n", &["--crate-type", "cdylib"]);
    let library = dir.path().join("libprog.so");
    assert!(library.exists(), "no shared library built");
    assert!(!dir.path().join("libprog.so.symbol-order").exists());
}
