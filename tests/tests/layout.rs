//! The house stays in order: no source file of `core`, `server` or `client` (tests aside) grows
//! past `FILE_LINES_MAX`, and no two files of a crate import each other, directly or through
//! others (a layer below never reaches up). Imports are read from the source: `use crate::…` and
//! `use super::…` trees, inline `crate::…` / `super::…` paths, and paths through a child
//! module (`child::Item`, `pub use child::…`). A `mod child;` declaration alone is no import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest file a reader should have to hold in their head.
const FILE_LINES_MAX: usize = 720;
/// Crates whose files are held to the limit, and whose imports must form no cycle.
const SIZED_CRATES: &[&str] = &["core", "server", "client", "sim"];
const ACYCLIC_CRATES: &[&str] = &["core", "server", "client", "cli", "sim"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(src: &Path, file: &Path) -> bool {
    let rel = file.strip_prefix(src).unwrap();
    rel.components().any(|c| c.as_os_str() == "tests")
        || rel.file_stem().is_some_and(|stem| {
            let stem = stem.to_string_lossy();
            stem == "tests" || stem.ends_with("_tests")
        })
}

/// The module path of `file` under `src` (`a/b.rs` and `a/b/mod.rs` are both `[a, b]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
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

/// The file defining the deepest module of `parts` that exists.
fn file_of(src: &Path, parts: &[String]) -> PathBuf {
    let mut best = if src.join("lib.rs").exists() {
        src.join("lib.rs")
    } else {
        src.join("main.rs")
    };
    let mut dir = src.to_path_buf();
    for part in parts {
        let (flat, nested) = (
            dir.join(format!("{part}.rs")),
            dir.join(part).join("mod.rs"),
        );
        if flat.exists() {
            best = flat;
        } else if nested.exists() {
            best = nested;
        } else {
            break;
        }
        dir = dir.join(part);
    }
    best
}

/// The source without comments and without a trailing `#[cfg(test)] mod tests { … }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(cut) => &text[..cut],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `::`-path in `code` starting with `head` (`crate` or `super`), as its segments.
fn paths_from(code: &str, head: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find(head) {
        let at = from + found;
        from = at + head.len();
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == ':') || !code[from..].starts_with("::") {
            continue;
        }
        let mut segments = vec![head.to_string()];
        let mut i = from;
        while code[i..].starts_with("::") {
            i += 2;
            if bytes.get(i) == Some(&b'{') {
                // A use tree: every leaf path inside the braces.
                let end = matching_brace(code, i);
                for leaf in tree_leaves(&code[i + 1..end]) {
                    let mut path = segments.clone();
                    path.extend(leaf);
                    out.push(path);
                }
                segments.clear();
                break;
            }
            let len = code[i..].chars().take_while(|&c| is_ident(c)).count();
            if len == 0 {
                break;
            }
            segments.push(code[i..i + len].to_string());
            i += len;
        }
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

fn matching_brace(code: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Leaf paths of a use tree's inside, e.g. `a, b::{c, d as e}` -> [a], [b, c], [b, d].
fn tree_leaves(tree: &str) -> Vec<Vec<String>> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    let mut out = Vec::new();
    for item in items
        .iter()
        .map(|item| item.trim())
        .filter(|i| !i.is_empty())
    {
        match item.find('{') {
            Some(open) => {
                let head: Vec<String> = item[..open]
                    .split("::")
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().to_string())
                    .collect();
                let close = item.rfind('}').unwrap_or(item.len());
                for leaf in tree_leaves(&item[open + 1..close]) {
                    let mut path = head.clone();
                    path.extend(leaf);
                    out.push(path);
                }
            }
            None => {
                let item = item.split(" as ").next().unwrap();
                out.push(item.split("::").map(|s| s.trim().to_string()).collect());
            }
        }
    }
    out
}

/// `mod NAME;` declarations of `code`.
fn declared_children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub(crate) mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// Whether `code` names a path through `child` (`child::…` not preceded by `::` or a letter).
fn names_child(code: &str, child: &str) -> bool {
    let needle = format!("{child}::");
    code.match_indices(&needle).any(|(at, _)| {
        !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == ':')
    })
}

/// File -> files it imports, within the crate at `src`.
fn import_graph(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = BTreeMap::new();
    for file in &files {
        let code = code(&std::fs::read_to_string(file).unwrap());
        let module = module_of(src, file);
        let mut edges = BTreeSet::new();
        for head in ["crate", "super"] {
            for path in paths_from(&code, head) {
                let mut parts = module.clone();
                let mut rest = path.as_slice();
                if rest[0] == "crate" {
                    parts.clear();
                    rest = &rest[1..];
                }
                while rest.first().is_some_and(|s| s == "super") {
                    parts.pop();
                    rest = &rest[1..];
                }
                parts.extend(rest.iter().cloned());
                edges.insert(file_of(src, &parts));
            }
        }
        for child in declared_children(&code) {
            if names_child(&code, &child) {
                let mut parts = module.clone();
                parts.push(child);
                edges.insert(file_of(src, &parts));
            }
        }
        edges.remove(file);
        graph.insert(file.clone(), edges);
    }
    graph
}

/// Strongly connected components of more than one file (Tarjan).
fn cycles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'g PathBuf, usize>,
        low: BTreeMap<&'g PathBuf, usize>,
        stack: Vec<&'g PathBuf>,
        on_stack: BTreeSet<&'g PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g PathBuf) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.graph.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_source_file_is_longer_than_a_reader_can_hold() {
    let root = holdfast_tests::repo_root();
    let mut long = Vec::new();
    for krate in SIZED_CRATES {
        let src = root.join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files.iter().filter(|file| !is_test_file(&src, file)) {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            if lines > FILE_LINES_MAX {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {FILE_LINES_MAX} lines, split by concern: {long:#?}"
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let root = holdfast_tests::repo_root();
    let mut found = Vec::new();
    for krate in ACYCLIC_CRATES {
        let src = root.join(krate).join("src");
        for component in cycles(&import_graph(&src)) {
            let names: Vec<String> = component
                .iter()
                .map(|file| file.strip_prefix(&src).unwrap().display().to_string())
                .collect();
            found.push(format!("{krate}: {}", names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

/// The checker itself: it must see a cycle where one is, through each kind of path.
#[test]
fn the_cycle_check_sees_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("raft")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write("lib.rs", "mod metrics;\nmod node;\nmod raft;\nmod clean;\n");
    // A use tree one way, an inline path the other way.
    write(
        "metrics.rs",
        "use crate::{clock, node::{Node, x as y}};\n// crate::clean::Nothing in a comment\n",
    );
    write(
        "node.rs",
        "fn f() { crate::metrics::record(); }\nuse super::raft::Raft;\n",
    );
    // A parent that names its child's item, and the child that uses the parent's.
    write(
        "raft/mod.rs",
        "pub mod store;\npub type Raft = store::Store;\n",
    );
    write("raft/store.rs", "use super::Raft;\n");
    write("clean.rs", "use crate::node::Node;\n");
    let graph = import_graph(src);
    let mut found = cycles(&graph);
    found.sort();
    let names: Vec<Vec<String>> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|f| f.strip_prefix(src).unwrap().display().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        names,
        vec![
            vec!["metrics.rs".to_string(), "node.rs".to_string()],
            vec!["raft/mod.rs".to_string(), "raft/store.rs".to_string()],
        ],
        "{graph:#?}"
    );
}
