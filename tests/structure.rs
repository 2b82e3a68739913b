//! The structure docs/design.md describes, kept from decaying silently:
//! - no function in the daemon (`src/`) or the kernel side (`backend/src/`) is longer than
//!   80 lines, outside test modules;
//! - no import circle between the files of any crate: a file (with the files of its own
//!   submodules, which are part of it) never imports, through any chain, from a file that
//!   imports from it.
//!
//! Both read the source as text (`fn` lines and brace depth; `crate::` and `super::`
//! paths), which is enough for rustfmt-formatted code; a test below checks the readers on
//! known input, so a reader that finds nothing fails instead of passing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FUNCTION_LINES: usize = 80;
const CRATES: [&str; 7] = [
    "src",
    "lease/src",
    "subnet/src",
    "backend/src",
    "rules/src",
    "cni/src",
    "testkit/src",
];

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A line without its string literals and `//` comment, for counting braces.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => in_string = !in_string,
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            '\'' if !in_string => {
                // A char literal ('{', '\n'): skip it; a lifetime ('a) is left alone.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') || rest.chars().nth(1) == Some('\'') {
                    for skipped in chars.by_ref() {
                        if skipped == '\'' {
                            break;
                        }
                    }
                }
            }
            _ if !in_string => out.push(c),
            _ => {}
        }
    }
    out
}

/// The non-test part of a file: everything before `#[cfg(test)]` + `mod`.
fn non_test_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|next| next.trim_start().starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

/// (name, first line, length in lines) of each function with a body.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines = non_test_lines(text);
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let mut depth = 0i32;
        let mut opened = false;
        for (offset, later) in lines[start..].iter().enumerate() {
            let code = code_of(later);
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && code.trim_end().ends_with(';') {
                break; // a declaration without a body (a trait method)
            }
            if opened && depth <= 0 {
                found.push((name.clone(), start + 1, offset + 1));
                break;
            }
        }
    }
    found
}

fn function_name(line: &str) -> Option<String> {
    let code = code_of(line);
    let mut words = code.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let modifier = word.starts_with("pub")
            || ["const", "async", "unsafe", "extern", "default"].contains(&word);
        if word == "fn" {
            let name = words.next()?;
            let end = name.find(['(', '<']).unwrap_or(name.len());
            return Some(name[..end].to_string());
        }
        if !modifier {
            return None;
        }
    }
    None
}

#[test]
fn no_function_in_the_daemon_or_the_kernel_side_is_longer_than_80_lines() {
    let mut long = Vec::new();
    let mut counted = 0;
    for dir in ["src", "backend/src"] {
        for file in rust_files(&workspace().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for (name, line, length) in functions(&text) {
                counted += 1;
                if length > MAX_FUNCTION_LINES {
                    let path = file.strip_prefix(workspace()).unwrap().display();
                    long.push(format!("{path}:{line} {name}: {length} lines"));
                }
            }
        }
    }
    assert!(
        counted > 300,
        "only {counted} functions found: the reader is broken"
    );
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (split them):\n{}",
        long.join("\n")
    );
}

/// A file's module path inside its crate: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`;
/// `lib.rs` and `main.rs` are the root (empty).
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The modules a file names through `crate::` and `super::` paths (its own submodules
/// and ancestors excluded: they are one unit with it).
fn imports(
    module: &[String],
    text: &str,
    modules: &BTreeSet<Vec<String>>,
) -> BTreeSet<Vec<String>> {
    let mut named = BTreeSet::new();
    for line in non_test_lines(text) {
        let code = code_of(line);
        for (at, _) in code
            .match_indices("crate::")
            .chain(code.match_indices("super::"))
        {
            let before = code[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `weft_crate::`, not `crate::`
            }
            let path = path_at(&code[at..]);
            let mut target: Vec<String> = if path[0] == "crate" {
                Vec::new()
            } else {
                module.to_vec()
            };
            let mut rest = path.as_slice();
            if rest[0] == "crate" {
                rest = &rest[1..];
            }
            while rest.first().is_some_and(|p| p == "super") {
                target.pop();
                rest = &rest[1..];
            }
            // The longest module the path names (the rest are items).
            for part in rest {
                let mut longer = target.clone();
                longer.push(part.clone());
                if !modules.contains(&longer) {
                    break;
                }
                target = longer;
            }
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                named.insert(target);
            }
        }
    }
    named
}

/// `crate::a::b::{C, d}` → `["crate", "a", "b"]` (the path up to a brace or a non-name).
fn path_at(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for part in text.split("::") {
        let name: String = part
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            break;
        }
        let whole = name.len() == part.len();
        parts.push(name);
        if !whole {
            break;
        }
    }
    parts
}

/// Every module involved in a circle of the graph (strongly connected, more than one).
fn circles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    let reaches = |from: &Vec<String>| {
        let mut seen = BTreeSet::new();
        let mut pending = vec![from.clone()];
        while let Some(module) = pending.pop() {
            for next in graph.get(&module).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    pending.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<_, _> = graph.keys().map(|m| (m.clone(), reaches(m))).collect();
    let mut found: Vec<Vec<Vec<String>>> = Vec::new();
    for module in graph.keys() {
        let members: Vec<Vec<String>> = graph
            .keys()
            .filter(|other| {
                *other == module
                    || (reach[module].contains(*other) && reach[*other].contains(module))
            })
            .cloned()
            .collect();
        if members.len() > 1 && !found.contains(&members) {
            found.push(members);
        }
    }
    found
}

fn import_graph(root: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = rust_files(root);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(root, f)).collect();
    files
        .iter()
        .map(|file| {
            let module = module_of(root, file);
            let text = std::fs::read_to_string(file).unwrap();
            let named = imports(&module, &text, &modules);
            (module, named)
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let mut problems = Vec::new();
    let mut edges = 0;
    for dir in CRATES {
        let graph = import_graph(&workspace().join(dir));
        edges += graph.values().map(BTreeSet::len).sum::<usize>();
        for circle in circles(&graph) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            problems.push(format!("{dir}: {}", names.join(" <-> ")));
        }
    }
    assert!(
        edges > 100,
        "only {edges} imports found: the reader is broken"
    );
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readers_see_functions_imports_and_circles() {
    let text = "pub async fn one(x: u8) -> u8 {\n    let s = \"}\";\n    if x > 0 { x } else { 1 }\n}\n\
                fn declared(&self);\n\
                pub(crate) fn two<T>() {\n    let c = '{';\n}\n\
                #[cfg(test)]\nmod tests {\n    fn hidden() {}\n}\n";
    assert_eq!(
        functions(text),
        vec![("one".to_string(), 1, 4), ("two".to_string(), 6, 3)]
    );
    let modules: BTreeSet<Vec<String>> = [
        vec![],
        vec!["a".into()],
        vec!["b".into()],
        vec!["a".into(), "c".into()],
    ]
    .into_iter()
    .collect();
    let named = imports(
        &["a".to_string(), "c".to_string()],
        "use crate::b::{X, y};\nuse super::Z;\nlet q = other_crate::b::W;\n",
        &modules,
    );
    assert_eq!(named, [vec!["b".to_string()]].into_iter().collect());
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = [
        (
            vec!["a".to_string()],
            [vec!["b".to_string()]].into_iter().collect(),
        ),
        (
            vec!["b".to_string()],
            [vec!["a".to_string()]].into_iter().collect(),
        ),
        (
            vec!["c".to_string()],
            [vec!["a".to_string()]].into_iter().collect(),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        circles(&graph),
        vec![vec![vec!["a".to_string()], vec!["b".to_string()]]]
    );
}
