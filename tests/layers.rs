//! The layer rule of ARCHITECTURE.md, checked: every top-level module of `src/` uses
//! only the modules below it in [`LAYERS`], never one above.
//!
//! The test reads the sources (no parsing beyond paths): in each file it finds every
//! path into the crate (`crate::x`, `crate::{x, y::z}`, and `super::` chains that
//! climb to the crate root) and maps it to the top-level module it names; a name
//! re-exported at the root (`crate::Resolver`) is mapped through `lib.rs`'s `pub use`
//! lines to the module that defines it. Comments and each file's unit-test module
//! (`#[cfg(test)] mod tests`, inline or in a `tests.rs` / `*_tests.rs` file, which may
//! build a whole `Resolver`) are left out.
//!
//! Moving or adding a top-level module means updating [`LAYERS`] (a module missing
//! from it fails the test by name) and ARCHITECTURE.md's drawing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, from the top layer to the bottom one. A module
/// may use the modules after it in this list, never those before it.
const LAYERS: &[&str] = &[
    "guide", // documentation only: uses nothing
    "integrations",
    "resolver",
    "watch",
    "call",
    "cache",
    "select",
    // The writer checks addresses by the endpoint layer's default address policy;
    // nothing below `select` uses it.
    "register",
    "endpoint",
    "discover",
    // The leaves: `metrics` records through `stats` and names `error` kinds;
    // `stats` pads its counters with `util`.
    "metrics",
    "stats",
    "util",
    "error",
];

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root_names = root_reexports(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);

    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {src:?}",
        files.len()
    );
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        let Some(own) = path.first() else {
            continue; // lib.rs: the root re-exports every layer
        };
        if own == "bin" {
            continue; // the CLI is a crate of its own, above every module
        }
        let stem = rel.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem == "tests" || stem.ends_with("_tests") {
            // A unit-test module in a file of its own (`#[cfg(test)] #[path =
            // "x_tests.rs"] mod tests;`), left out as an inline one is.
            continue;
        }
        let own_rank = rank(own).unwrap_or_else(|| {
            panic!("module `{own}` ({rel:?}) is not in LAYERS: add it where it belongs")
        });
        let text = library_code(&fs::read_to_string(file).unwrap());
        for (line, name) in crate_paths(&text, path.len()) {
            let target = if rank(&name).is_some() {
                name.clone()
            } else if let Some(module) = root_names.get(&name) {
                module.clone()
            } else {
                panic!("{rel:?}:{line}: `crate::{name}` is neither a module in LAYERS nor a root re-export");
            };
            checked += 1;
            if target != *own && rank(&target).unwrap() < own_rank {
                violations.push(format!(
                    "{}:{line}: `{own}` uses `{name}` (in `{target}`, a layer above)",
                    rel.display()
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: is the scan broken?"
    );
    assert!(
        violations.is_empty(),
        "imports from a higher layer (see LAYERS and ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

/// The scanner itself, on the forms it must see and the ones it must skip.
#[test]
fn scanner_finds_paths_and_skips_comments_and_tests() {
    let text = library_code(
        "use crate::{cache::Cache, call::{a, b}, Error};\n\
         // use crate::resolver::Resolver;\n\
         /// [`Resolver`](crate::Resolver)\n\
         fn f() -> crate::util::X { super::super::watch::y() }\n\
         #[cfg(test)]\n\
         mod tests {\n    use crate::Resolver;\n}\n",
    );
    let found: Vec<(usize, String)> = crate_paths(&text, 2);
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["cache", "call", "Error", "util", "watch"]);
    assert_eq!(found[3].0, 4, "line numbers count from 1");
    let shared =
        library_code("#[cfg(test)]\npub(super) mod tests {\n    use crate::Resolver;\n}\n");
    assert!(
        crate_paths(&shared, 2).is_empty(),
        "a shared test module is skipped too"
    );
    // One `super` from a second-level file stays inside its own folder.
    assert!(crate_paths("use super::x;", 2).is_empty());
    assert_eq!(crate_paths("use super::x;", 1), [(1, "x".to_owned())]);

    let roots = root_reexports(
        "pub use cache::pacing::RateLimit;\n#[cfg(feature = \"tower\")]\n\
         pub use integrations::tower::{\n    BoxError, Failover as F,\n};\n",
    );
    assert_eq!(roots["RateLimit"], "cache");
    assert_eq!(roots["BoxError"], "integrations");
    assert_eq!(roots["F"], "integrations");
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `cache/mod.rs` → `[cache]`, `cache/key.rs` → `[cache, key]`, `stats.rs` → `[stats]`,
/// `lib.rs` → `[]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The file without comments and without its unit-test module, line breaks kept.
fn library_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]"
            && lines
                .peek()
                // `mod tests`, or with a visibility (`pub(super) mod tests`) when a
                // sibling's tests share its helpers.
                .is_some_and(|next| next.split_whitespace().any(|w| w == "mod"))
        {
            break;
        }
        // A `//` inside a string (a URL) also cuts the line: harmless, paths into
        // the crate do not follow a string on the same line.
        out.push_str(line.split("//").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

/// Every path into the crate that leaves the file's own top-level module, as (line,
/// first name under the root). `depth` is the length of the file's module path, so
/// that a chain of that many `super::` reaches the root.
fn crate_paths(text: &str, depth: usize) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let word_start = i == 0 || !is_ident(bytes[i - 1]);
        let after = if !word_start {
            None
        } else if let Some(r) = rest.strip_prefix("crate::") {
            Some(r)
        } else if rest.starts_with("super::") {
            let mut r = rest;
            let mut n = 0;
            while let Some(next) = r.strip_prefix("super::") {
                r = next;
                n += 1;
            }
            (n == depth).then_some(r)
        } else {
            None
        };
        let Some(after) = after else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let at = text.len() - after.len();
        let line = text[..at].matches('\n').count() + 1;
        if let Some(group) = after.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                if let Some(name) = first_ident(item) {
                    let item_at = at + 1 + (item.as_ptr() as usize - group.as_ptr() as usize);
                    let line = text[..item_at].matches('\n').count() + 1;
                    found.push((line, name));
                }
            }
            i = at + 1 + end;
        } else {
            if let Some(name) = first_ident(after) {
                found.push((line, name));
            }
            i = at;
        }
    }
    found
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn first_ident(s: &str) -> Option<String> {
    let s = s.trim_start();
    let end = s.bytes().position(|b| !is_ident(b)).unwrap_or(s.len());
    let name = &s[..end];
    (!name.is_empty() && name != "self").then(|| name.to_owned())
}

/// The index of the `}` closing a group whose `{` was just before `s`.
fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// The items of a `{a, b::{c, d}, e}` group, split at its own commas.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items.into_iter().filter(|i| !i.trim().is_empty()).collect()
}

/// Root names from `lib.rs`'s `pub use module::...;` lines: name → module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let lib = library_code(lib);
    for stmt in lib.split("pub use ").skip(1) {
        let stmt = &stmt[..stmt.find(';').unwrap_or(stmt.len())];
        let Some(module) = first_ident(stmt) else {
            continue;
        };
        let items: Vec<&str> = match stmt.find('{') {
            Some(open) => split_top_level(&stmt[open + 1..stmt.rfind('}').unwrap_or(stmt.len())]),
            None => vec![stmt],
        };
        for item in items {
            let item = item.trim();
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item.rsplit("::").next().unwrap_or(item),
            };
            names.insert(name.to_owned(), module.clone());
        }
    }
    names
}
