//! The shape of `src/`, checked: no file imports a file that imports it back (directly or
//! through others), and no file passes the size a reader can hold in mind.
//!
//! Imports are read from the text: every `crate::…`, `super::…` and `self::…` path outside
//! comments and test modules, `use` groups expanded, resolved to the file that defines the
//! module it names (a name `lib.rs` re-exports resolves to the file it comes from). Module
//! declarations (`mod x;`) are not imports. The command's own crate (`src/bin/`) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files allowed past the size limit (data tables): none today.
const LONG_FILES: &[&str] = &[];
/// Lines a file of `src/` may have.
const MAX_LINES: usize = 700;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file, relative to `src/`.
fn files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    walk(&p, out);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(src()).expect("under src").to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(&src(), &mut out);
    out.sort();
    out
}

/// The module path of a file: `engine/check.rs` → `[engine, check]`, `engine/mod.rs` →
/// `[engine]`, `lib.rs` → `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

/// The file of the deepest module named by `path` (from the crate root).
fn file_of(path: &[String]) -> PathBuf {
    let mut best = PathBuf::from("lib.rs");
    let mut dir = PathBuf::new();
    for seg in path {
        let flat = dir.join(format!("{seg}.rs"));
        let folder = dir.join(seg).join("mod.rs");
        if src().join(&flat).is_file() {
            best = flat;
        } else if src().join(&folder).is_file() {
            best = folder;
        } else {
            break;
        }
        dir = dir.join(seg);
    }
    best
}

/// The text of a file without comments and without its test module.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(src().join(file)).expect("read a source file");
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.contains("mod tests")) {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Expand `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &head, out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

/// Every path the code names, `use` groups expanded.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements, groups and all.
    for stmt in code.split(';') {
        let s = stmt.trim();
        let body = s
            .strip_prefix("pub(crate) use ")
            .or_else(|| s.strip_prefix("pub use "))
            .or_else(|| s.strip_prefix("use "));
        if let Some(b) = body {
            expand(b, "", &mut out);
        }
    }
    // Paths in expressions and types.
    let bytes = code.as_bytes();
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let at = from + i;
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            let before = at.checked_sub(1).and_then(|j| bytes.get(j)).copied();
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                out.push(code[at..end].to_string());
            }
            from = end.max(at + root.len());
        }
    }
    out
}

/// The module path (from the crate root) a path names, relative to the module `here`.
fn absolute(path: &str, here: &[String]) -> Option<Vec<String>> {
    let segs: Vec<String> = path
        .split("::")
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().to_string())
        .collect();
    let (first, rest) = segs.split_first()?;
    let mut base = match first.as_str() {
        "crate" => Vec::new(),
        "super" => here.get(..here.len().checked_sub(1)?)?.to_vec(),
        "self" => here.to_vec(),
        _ => return None,
    };
    for s in rest {
        match s.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => base.push(s.clone()),
        }
    }
    Some(base)
}

/// `lib.rs`'s re-exports: name → the module it comes from.
fn reexports() -> BTreeMap<String, Vec<String>> {
    let mut map = BTreeMap::new();
    let mut expanded = Vec::new();
    for stmt in code(Path::new("lib.rs")).split(';') {
        if let Some(b) = stmt.trim().strip_prefix("pub use ") {
            expand(b, "", &mut expanded);
        }
    }
    for p in expanded {
        let segs: Vec<String> = p.split("::").map(|s| s.trim().to_string()).collect();
        if let Some((name, module)) = segs.split_last() {
            map.insert(name.clone(), module.to_vec());
        }
    }
    map
}

/// file → the files it imports.
fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let reexported = reexports();
    let mut g = BTreeMap::new();
    for file in files() {
        if file.to_string_lossy().ends_with("_tests.rs") {
            continue; // test modules kept in files of their own
        }
        let here = module_of(&file);
        let mut deps = BTreeSet::new();
        for p in paths(&code(&file)) {
            let Some(mut abs) = absolute(&p, &here) else {
                continue;
            };
            if let Some(module) = abs.first().and_then(|n| reexported.get(n)) {
                abs = module.clone();
            }
            let target = file_of(&abs);
            if target != file && target != Path::new("lib.rs") {
                deps.insert(target);
            }
        }
        g.insert(file, deps);
    }
    g
}

#[test]
fn no_file_of_src_imports_a_file_that_imports_it_back() {
    let g = graph();
    // A depth-first search; a file met again while on the stack closes a cycle.
    fn visit(
        f: &PathBuf,
        g: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        cycles: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == f) {
            let names: Vec<String> = stack[at..]
                .iter()
                .chain(std::iter::once(f))
                .map(|p| p.display().to_string())
                .collect();
            cycles.push(names.join(" → "));
            return;
        }
        if !done.insert(f.clone()) {
            return;
        }
        stack.push(f.clone());
        for d in g.get(f).into_iter().flatten() {
            visit(d, g, stack, done, cycles);
        }
        stack.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for f in g.keys() {
        visit(f, &g, &mut Vec::new(), &mut done, &mut cycles);
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    // The reader must see the edges it should: the check path reaches the window protocols
    // and the storage, and the engine never imports the store facade.
    let deps = |f: &str| g.get(Path::new(f)).cloned().unwrap_or_default();
    assert!(deps("engine/check.rs").contains(Path::new("window/cell.rs")));
    assert!(deps("store.rs").contains(Path::new("engine/mod.rs")));
    for (f, d) in &g {
        if f.starts_with("engine") || f.starts_with("storage") {
            assert!(
                !d.contains(Path::new("store.rs")),
                "{} imports store.rs",
                f.display()
            );
        }
        if f.starts_with("storage") {
            assert!(
                !d.iter().any(|x| x.starts_with("engine")),
                "{} imports the engine",
                f.display()
            );
        }
    }
}

#[test]
fn no_file_of_src_is_longer_than_a_reader_holds_in_mind() {
    let long: Vec<String> = files()
        .into_iter()
        .chain(
            std::fs::read_dir(src().join("bin/tollgate"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                .filter_map(|p| p.strip_prefix(src()).ok().map(Path::to_path_buf)),
        )
        .filter(|f| !LONG_FILES.contains(&f.to_string_lossy().as_ref()))
        .filter_map(|f| {
            let n = std::fs::read_to_string(src().join(&f))
                .expect("read")
                .lines()
                .count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}
