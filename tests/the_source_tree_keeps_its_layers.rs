//! The house's plan, checked: every module of `src/` sits in one layer (`docs/src/layers.md`),
//! imports only from its own layer or below, and no two rooms (top-level modules with their
//! folders) import each other, directly or round a circle; inside a room, no two files do.
//!
//! The graph is read from the source as written: `use` items (braces expanded, re-exports
//! followed to the file that defines the name) and `crate::`/`super::` paths in code. Test
//! files and `#[cfg(test)] mod tests` blocks are left out. Run with `--nocapture` to see the
//! rooms and their imports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A room may import its own layer and the layers below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground",
        &[
            "clock", "sync", "metrics", "logging", "x402", "tls", "pool", "alerts",
        ],
    ),
    (
        "pure core",
        &[
            "pricing", "routing", "meter", "nonce", "verify", "session", "channel", "record",
            "scheme", "offers", "retry", "limits", "mcp",
        ],
    ),
    ("payer", &["client"]),
    ("settlement", &["settle"]),
    ("shared-state adapters", &["state"]),
    ("config", &["config"]),
    (
        "glue",
        &["proxy", "reload", "admin", "services", "server", "pay"],
    ),
];

type Module = Vec<String>;

struct Tree {
    files: BTreeMap<Module, String>,
}

impl Tree {
    fn read(src: &Path) -> Tree {
        let mut files = BTreeMap::new();
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().and_then(|e| e.to_str()) != Some("rs")
                    || path.file_name().and_then(|n| n.to_str()) == Some("tests.rs")
                {
                    continue;
                }
                let relative: PathBuf = path.strip_prefix(src).expect("under src").into();
                let mut module: Module = relative
                    .with_extension("")
                    .iter()
                    .map(|s| s.to_string_lossy().into_owned())
                    .collect();
                if module == ["lib"] || module == ["main"] {
                    module.clear();
                }
                let text = std::fs::read_to_string(&path).expect("read file");
                files
                    .entry(module)
                    .and_modify(|t: &mut String| t.push_str(&code_of(&text)))
                    .or_insert_with(|| code_of(&text));
            }
        }
        Tree { files }
    }

    /// The longest prefix of `path` that is a module.
    fn module_of(&self, path: &[String]) -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| self.files.contains_key(m))
    }

    /// `text` (a path as written in `module`) as a path from the crate root.
    fn absolute(&self, module: &Module, text: &str) -> Option<Vec<String>> {
        let mut segments: Vec<String> = text
            .split("::")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        match segments.first().map(String::as_str) {
            Some("crate") => Some(segments.split_off(1)),
            Some("self") => Some([module.clone(), segments.split_off(1)].concat()),
            Some("super") => {
                let mut at = module[..module.len().saturating_sub(1)].to_vec();
                segments.remove(0);
                while segments.first().map(String::as_str) == Some("super") {
                    segments.remove(0);
                    at.pop();
                }
                Some([at, segments].concat())
            }
            Some(first) => {
                let child = [module.clone(), vec![first.to_owned()]].concat();
                self.files
                    .contains_key(&child)
                    .then(|| [module.clone(), segments].concat())
            }
            None => None,
        }
    }

    /// Every module each module imports, re-exports followed to the defining file.
    fn imports(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        // What each module brings into scope under which name.
        let mut names: HashMap<(Module, String), Module> = HashMap::new();
        for (module, code) in &self.files {
            for item in use_items(code) {
                let (path, name) = match item.split_once(" as ") {
                    Some((path, alias)) => (path.to_owned(), alias.trim().to_owned()),
                    None => (
                        item.clone(),
                        item.rsplit("::").next().unwrap_or("").to_owned(),
                    ),
                };
                if let Some(target) = self
                    .absolute(module, &path)
                    .and_then(|p| self.module_of(&p))
                    .filter(|t| t != module)
                {
                    names.insert((module.clone(), name), target);
                }
            }
        }
        let resolve = |path: &[String]| -> Option<Module> {
            let found = self.module_of(path)?;
            let rest = &path[found.len()..];
            match rest.first() {
                Some(name) => Some(
                    names
                        .get(&(found.clone(), name.clone()))
                        .cloned()
                        .unwrap_or(found),
                ),
                None => Some(found),
            }
        };
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (module, code) in &self.files {
            let mut paths: Vec<String> = use_items(code)
                .into_iter()
                .map(|i| i.split(" as ").next().unwrap_or("").to_owned())
                .collect();
            paths.extend(code_paths(code));
            let found = edges.entry(module.clone()).or_default();
            for path in paths {
                let Some(absolute) = self.absolute(module, &path) else {
                    continue;
                };
                if let Some(target) = resolve(&absolute) {
                    if &target != module && !target.is_empty() {
                        found.insert(target);
                    }
                }
            }
        }
        edges
    }
}

/// The code of a file: its `#[cfg(test)] mod tests` block and its comment lines left out.
fn code_of(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |at| &text[..at]);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` item names, braces expanded (`a::{b, c::d}` is `a::b` and `a::c::d`).
fn use_items(code: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut rest = code;
    while let Some(at) = find_word(rest, "use") {
        let after = &rest[at + 3..];
        let Some(end) = after.find(';') else { break };
        items.extend(expand(&tidy(&after[..end])));
        rest = &after[end..];
    }
    items
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(word) {
        let at = from + i;
        let before = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let after = bytes.get(at + word.len()).is_some_and(|b| *b == b' ');
        if before && after {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// A `use` item with single spaces, and none beside `::`, braces and commas.
fn tidy(item: &str) -> String {
    let mut text = item.split_whitespace().collect::<Vec<_>>().join(" ");
    for mark in ["::", "{", "}", ","] {
        text = text
            .replace(&format!(" {mark}"), mark)
            .replace(&format!("{mark} "), mark);
    }
    text
}

fn expand(item: &str) -> Vec<String> {
    let Some(open) = item.find('{') else {
        return vec![item.to_owned()];
    };
    let (prefix, inner) = (&item[..open], &item[open + 1..item.len().saturating_sub(1)]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(expand)
        .map(|p| format!("{prefix}{p}"))
        .collect()
}

/// `crate::…` and `super::…` paths written in code.
fn code_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for head in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(head) {
            let at = from + i;
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            paths.push(code[at..end].trim_end_matches(':').to_owned());
            from = end.max(at + head.len());
        }
    }
    paths
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.join("/")
    }
}

/// The strongly connected groups of more than one node (Tarjan).
fn circles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct Walk<'a, N> {
        edges: &'a BTreeMap<N, BTreeSet<N>>,
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        found: Vec<Vec<N>>,
    }
    impl<N: Ord + Clone> Walk<'_, N> {
        fn visit(&mut self, v: &N) {
            let n = self.index.len();
            self.index.insert(v.clone(), n);
            self.low.insert(v.clone(), n);
            self.stack.push(v.clone());
            self.on.insert(v.clone());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v.clone(), low);
                } else if self.on.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v.clone(), low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(&w);
                    let done = &w == v;
                    group.push(w);
                    if done {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_room_imports_a_higher_layer_and_no_imports_run_in_a_circle() {
    let tree = Tree::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let edges = tree.imports();
    let room = |m: &Module| m.first().cloned().unwrap_or_else(|| "lib".to_owned());

    // Rooms: each top-level module with its folder.
    let mut rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in &edges {
        let entry = rooms.entry(room(from)).or_default();
        for to in targets {
            if room(to) != room(from) {
                entry.insert(room(to));
            }
        }
    }
    rooms.remove("lib");
    println!(
        "{} rooms, {} imports between them:",
        rooms.len(),
        rooms.values().map(BTreeSet::len).sum::<usize>()
    );
    for (from, to) in &rooms {
        println!(
            "  {from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }

    let layer_of = |room: &str| {
        LAYERS
            .iter()
            .position(|(_, members)| members.contains(&room))
    };
    let unplaced: Vec<&String> = rooms.keys().filter(|r| layer_of(r).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "rooms in no layer (add them to LAYERS and docs/src/layers.md): {unplaced:?}"
    );
    let upward: Vec<String> = rooms
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |t| (from, t)))
        .filter(|(from, to)| layer_of(to) > layer_of(from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        upward.is_empty(),
        "imports from a lower layer up: {upward:?}"
    );
    let room_circles = circles(&rooms);
    assert!(
        room_circles.is_empty(),
        "rooms that import each other: {room_circles:?}"
    );

    // Inside each room: the files that are not a folder's index file.
    let index_files: BTreeSet<Module> = tree
        .files
        .keys()
        .filter(|m| m.len() > 1)
        .map(|m| m[..m.len() - 1].to_vec())
        .collect();
    let inner: BTreeMap<Module, BTreeSet<Module>> = edges
        .iter()
        .filter(|(m, _)| !index_files.contains(*m) && !m.is_empty())
        .map(|(m, to)| {
            let siblings = to
                .iter()
                .filter(|t| room(t) == room(m) && !index_files.contains(*t))
                .cloned()
                .collect();
            (m.clone(), siblings)
        })
        .collect();
    let file_circles: Vec<Vec<String>> = circles(&inner)
        .into_iter()
        .map(|c| c.iter().map(name).collect())
        .collect();
    assert!(
        file_circles.is_empty(),
        "files of one room that import each other: {file_circles:?}"
    );
}
