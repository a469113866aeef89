//! The layering, checked on every `cargo test` (and so in CI):
//!
//! 1. **Crate arrows point down only**: every workspace member's Cargo.toml is read and its
//!    dependencies on our crates (and on the crates reserved to one layer) are checked against the
//!    rules in [`crate_rules`].
//! 2. **No import cycles between the files of a crate**: each `.rs` file under a member's `src/`
//!    is read with comments and literals stripped; every module path it names (`crate::a::b`,
//!    `super::x`, `self::x`, a child module's `x::y`, inside `use` trees with braces too) is
//!    resolved to the file that defines the deepest matching module, following a parent's
//!    `pub use` re-exports to the file that defines the item. A parent's `mod x;` and its `pub use`
//!    of its own children are its facade, not dependencies; `#[cfg(test)]` modules and uses are
//!    left out (a unit test may reach across the crate). Every strongly connected group of files
//!    is reported with the references that tie it together.
//!
//! The parser is deliberately small (tokens, not a Rust grammar); its tests are at the bottom.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The workspace members, as directories relative to the root.
fn members(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace Cargo.toml");
    let doc: toml::Table = text.parse().expect("workspace Cargo.toml parses");
    doc.get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .expect("workspace.members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

// =============================================================================================
// 1. Crate arrows
// =============================================================================================

/// One member's dependencies by section kind.
#[derive(Debug, Default)]
struct Deps {
    name: String,
    dir: String,
    /// `[dependencies]` and `[build-dependencies]` (target-specific ones included): what the
    /// crate links.
    linked: BTreeSet<String>,
    /// `[dev-dependencies]`: what its tests link.
    dev: BTreeSet<String>,
}

fn dep_names(table: Option<&toml::Value>) -> BTreeSet<String> {
    let Some(t) = table.and_then(toml::Value::as_table) else {
        return BTreeSet::new();
    };
    t.iter()
        .map(|(key, v)| {
            v.get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(key)
                .to_owned()
        })
        .collect()
}

fn read_deps(root: &Path, dir: &str) -> Deps {
    let path = root.join(dir).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("member Cargo.toml");
    let doc: toml::Table = text.parse().expect("member Cargo.toml parses");
    let mut deps = Deps {
        name: doc
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(toml::Value::as_str)
            .expect("package.name")
            .to_owned(),
        dir: dir.to_owned(),
        ..Deps::default()
    };
    let mut sections = vec![doc.clone()];
    if let Some(targets) = doc.get("target").and_then(toml::Value::as_table) {
        sections.extend(targets.values().filter_map(|t| t.as_table().cloned()));
    }
    for s in &sections {
        deps.linked.extend(dep_names(s.get("dependencies")));
        deps.linked.extend(dep_names(s.get("build-dependencies")));
        deps.dev.extend(dep_names(s.get("dev-dependencies")));
    }
    deps
}

/// Crates that only the tools may name.
const TOOL_ONLY: [&str; 3] = ["etcd-client", "plotters", "hdrhistogram"];
/// What the engine must not link: the network stack, the CLI parser, TLS, the tools' crates.
const NOT_IN_CORE: [&str; 9] = [
    "tonic",
    "hyper",
    "hyper-util",
    "clap",
    "rustls",
    "tokio-rustls",
    "etcd-client",
    "plotters",
    "hdrhistogram",
];

/// Every rule the members' Cargo.toml files break, one sentence each.
fn crate_rules(all: &[Deps]) -> Vec<String> {
    let ours: BTreeSet<&str> = all.iter().map(|d| d.name.as_str()).collect();
    let mut broken = Vec::new();
    for d in all {
        let our_linked: BTreeSet<&str> = d
            .linked
            .iter()
            .map(String::as_str)
            .filter(|n| ours.contains(n))
            .collect();
        let mut bad = |why: String| broken.push(format!("{} ({}): {why}", d.name, d.dir));
        // The shared test helpers are a dev-dependency only.
        if d.linked.contains("coffer-testkit") && d.name != "coffer-testkit" {
            bad("names coffer-testkit outside [dev-dependencies]".into());
        }
        for t in TOOL_ONLY {
            if (d.linked.contains(t) || d.dev.contains(t)) && !d.dir.starts_with("tools/") {
                bad(format!("names {t}, which only tools/ may use"));
            }
        }
        let allowed: &[&str] = match d.name.as_str() {
            "coffer-core" => {
                for n in NOT_IN_CORE {
                    if d.linked.contains(n) {
                        bad(format!("the engine links {n}"));
                    }
                }
                &[]
            }
            "coffer-kms" => &["coffer-core"],
            // The versioned keyspace on etcd: the engine's trait below it, tonic for the wire.
            "coffer-etcd" => &["coffer-core"],
            "coffer-server" => &["coffer-core", "coffer-kms", "coffer-etcd"],
            "coffer" => &["coffer-core", "coffer-kms", "coffer-etcd", "coffer-server"],
            "coffer-testkit" => &["coffer-core", "coffer-kms", "coffer-etcd", "coffer-server"],
            _ if d.dir.starts_with("kms-plugins/") => {
                for n in ["coffer-server", "coffer"] {
                    if d.linked.contains(n) || d.dev.contains(n) {
                        bad(format!("a KMS plugin names {n}"));
                    }
                }
                &["coffer-core", "coffer-kms"]
            }
            _ if d.dir.starts_with("tools/") => &[
                "coffer-core",
                "coffer-kms",
                "coffer-etcd",
                "coffer-server",
                "coffer",
            ],
            _ => {
                bad("is not placed in a layer: add it to crate_rules".into());
                &[]
            }
        };
        for n in our_linked {
            if n != d.name && !allowed.contains(&n) {
                bad(format!("names {n}, which is not below it"));
            }
        }
    }
    broken
}

#[test]
fn crate_arrows_point_down() {
    let root = workspace_root();
    let all: Vec<Deps> = members(&root).iter().map(|m| read_deps(&root, m)).collect();
    assert!(all.iter().any(|d| d.name == "coffer-core"), "{all:?}");
    let broken = crate_rules(&all);
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

// =============================================================================================
// 2. Import cycles between files
// =============================================================================================

/// The source with comments, string literals and char literals blanked out (lifetimes stay).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && is_ident(b[i - 1]);
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(b' ');
        } else if !prev_ident && let Some(end) = raw_string_end(b, i) {
            out.push(b' ');
            i = end;
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(b' ');
        } else if c == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) has no closing quote.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(b' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a raw string (`r"..."`, `br#"..."#`, `cr##"..."##`) starting at `i` ends.
fn raw_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    if matches!(b[i], b'b' | b'c') {
        i += 1;
    }
    if b.get(i) != Some(&b'r') {
        return None;
    }
    i += 1;
    let hashes = b[i..].iter().take_while(|c| **c == b'#').count();
    i += hashes;
    if b.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    while i < b.len() {
        if b[i] == b'"'
            && b[i + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == b'#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(b.len())
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push("::".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// A module path one file names, made absolute (from the crate root).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    path: Vec<String>,
    /// Named by a `pub use` (any `pub` visibility): a re-export, under `alias` if renamed.
    public_use: bool,
    alias: Option<String>,
}

/// What a file's module may call a module by: its children (file modules), for paths like
/// `child::Item` without `self::`.
struct Scope<'a> {
    module: &'a [String],
    has_module: &'a dyn Fn(&[String]) -> bool,
}

/// Every module path `src` (the file of module `scope.module`) names.
fn refs(src: &str, scope: &Scope<'_>) -> Vec<Ref> {
    let toks = tokens(&strip(src));
    let mut out = Vec::new();
    // Inline modules (`mod tests { ... }`): the module path, the brace depth they close at, and
    // whether they are compiled for tests only.
    let mut inline: Vec<(Vec<String>, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here: Vec<String> = inline
            .last()
            .map_or_else(|| scope.module.to_vec(), |(m, _, _)| m.clone());
        let in_test = inline.last().is_some_and(|(_, _, test)| *test);
        let t = toks[i].as_str();
        match t {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d, _)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if toks.get(i + 2).is_some_and(|t| t == "{") => {
                let mut m = here.clone();
                m.push(toks[i + 1].clone());
                inline.push((m, depth, in_test || cfg_test_before(&toks, i)));
            }
            "use" => {
                let public_use = is_pub_before(&toks, i);
                let mut trees = Vec::new();
                let mut j = i + 1;
                use_tree(&toks, &mut j, Vec::new(), &mut trees);
                if in_test || cfg_test_before(&toks, i) {
                    trees.clear();
                }
                for (path, alias) in trees {
                    if let Some(path) = absolute(&path, &here, scope) {
                        out.push(Ref {
                            path,
                            public_use,
                            alias,
                        });
                    }
                }
                i = j;
                continue;
            }
            _ if is_ident(t)
                && toks.get(i + 1).is_some_and(|n| n == "::")
                && !matches!(
                    toks.get(i.wrapping_sub(1)).map(String::as_str),
                    Some("::" | "$" | "in")
                ) =>
            {
                let mut path = vec![t.to_owned()];
                let mut j = i + 1;
                while toks.get(j).is_some_and(|t| t == "::")
                    && toks.get(j + 1).is_some_and(|t| is_ident(t))
                {
                    path.push(toks[j + 1].clone());
                    j += 2;
                }
                if let Some(path) = absolute(&path, &here, scope).filter(|_| !in_test) {
                    out.push(Ref {
                        path,
                        public_use: false,
                        alias: None,
                    });
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether the item whose keyword (`mod`, `use`) is at `i` is `#[cfg(test)]`: compiled for the
/// crate's unit tests only, so not part of the layering (a test may build what it checks from
/// anywhere in the crate).
fn cfg_test_before(toks: &[String], mut i: usize) -> bool {
    if i > 0 && toks[i - 1] == "pub" {
        i -= 1;
    } else if is_pub_before(toks, i) {
        i = toks[..i - 1].iter().rposition(|t| t == "(").unwrap_or(1) - 1;
    }
    i >= 7 && toks[i - 7..i].join("") == "#[cfg(test)]"
}

/// Whether the `use` at `i` is preceded by `pub` or `pub(...)`.
fn is_pub_before(toks: &[String], i: usize) -> bool {
    match i.checked_sub(1).map(|p| toks[p].as_str()) {
        Some("pub") => true,
        Some(")") => toks[..i - 1]
            .iter()
            .rposition(|t| t == "(")
            .is_some_and(|open| open > 0 && toks[open - 1] == "pub"),
        _ => false,
    }
}

/// Reads one use tree from `toks[*j]`, adding every full path (and its `as` alias) to `out`;
/// leaves `*j` after the tree (on the `;`, `,` or `}` that ends it).
fn use_tree(
    toks: &[String],
    j: &mut usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    if toks.get(*j).is_some_and(|t| t == "::") {
        // `use ::extern_crate::...`: not ours.
        *j += 1;
        prefix.push("::".to_owned());
    }
    loop {
        match toks.get(*j).map(String::as_str) {
            Some("{") => {
                *j += 1;
                while toks.get(*j).is_some_and(|t| t != "}") {
                    use_tree(toks, j, prefix.clone(), out);
                    if toks.get(*j).is_some_and(|t| t == ",") {
                        *j += 1;
                    }
                }
                *j += 1;
                return;
            }
            Some("*") => {
                *j += 1;
                out.push((prefix, None));
                return;
            }
            Some(t) if is_ident(t) => {
                // `self` inside braces names the prefix itself.
                if t != "self" || prefix.is_empty() {
                    prefix.push(t.to_owned());
                }
                *j += 1;
                if toks.get(*j).is_some_and(|t| t == "::") {
                    *j += 1;
                    continue;
                }
                let alias = if toks.get(*j).is_some_and(|t| t == "as") {
                    *j += 2;
                    toks.get(*j - 1).cloned()
                } else {
                    None
                };
                out.push((prefix, alias));
                return;
            }
            _ => return,
        }
    }
}

/// `path` as named in module `here`, from the crate root; `None` for another crate's path.
fn absolute(path: &[String], here: &[String], scope: &Scope<'_>) -> Option<Vec<String>> {
    let first = path.first()?;
    let (mut base, rest) = match first.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.to_vec(), &path[1..]),
        "super" => {
            let mut base = here.to_vec();
            let mut k = 0;
            while path.get(k).is_some_and(|s| s == "super") {
                base.pop();
                k += 1;
            }
            (base, &path[k..])
        }
        _ => {
            // A child module named without `self::` (`limits::Limits`).
            let mut child = here.to_vec();
            child.push(first.clone());
            if !(scope.has_module)(&child) {
                return None;
            }
            (here.to_vec(), path)
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// One crate's files: module path -> file (relative to the crate's `src/`).
fn module_files(src: &Path) -> BTreeMap<Vec<String>, String> {
    let mut out = BTreeMap::new();
    let root = if src.join("lib.rs").exists() {
        "lib.rs"
    } else {
        "main.rs"
    };
    let mut stack = vec![src.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = p
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_owned)
                .collect();
            if rel == root {
                module.clear();
            } else if rel == "lib.rs" || rel == "main.rs" {
                // The thin binary over the library: a crate of its own, one file.
                continue;
            } else if module.last().is_some_and(|m| m == "mod") {
                module.pop();
            }
            out.insert(module, rel);
        }
    }
    out
}

/// The file graph of one crate: file -> file it depends on -> the first path that says so.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

fn file_graph(files: &BTreeMap<Vec<String>, String>, sources: &HashMap<String, String>) -> Graph {
    let has_module = |m: &[String]| files.contains_key(m);
    let mut parsed: BTreeMap<&Vec<String>, Vec<Ref>> = BTreeMap::new();
    for (module, file) in files {
        let scope = Scope {
            module,
            has_module: &has_module,
        };
        parsed.insert(module, refs(&sources[file], &scope));
    }
    // Re-exports: (module, name) -> the absolute path it stands for.
    let mut reexports: HashMap<(Vec<String>, String), Vec<String>> = HashMap::new();
    for (module, rs) in &parsed {
        for r in rs.iter().filter(|r| r.public_use) {
            if let Some(name) = r.alias.as_ref().or(r.path.last()) {
                reexports.insert(((*module).clone(), name.clone()), r.path.clone());
            }
        }
    }
    let resolve = |path: &[String]| -> Vec<String> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let depth = (0..=path.len())
                .rev()
                .find(|d| files.contains_key(&path[..*d]))
                .unwrap_or(0);
            let module = path[..depth].to_vec();
            let next = path
                .get(depth)
                .and_then(|name| reexports.get(&(module.clone(), name.clone())));
            match next {
                Some(target) if target != &path[..=depth] => {
                    let mut p = target.clone();
                    p.extend(path[depth + 1..].iter().cloned());
                    path = p;
                }
                _ => return module,
            }
        }
        Vec::new()
    };
    let mut graph = Graph::new();
    for (module, rs) in &parsed {
        let from = &files[*module];
        let node = graph.entry(from.clone()).or_default();
        for r in rs {
            let target = resolve(&r.path);
            let facade = r.public_use && target.len() > module.len() && target.starts_with(module);
            let to = &files[&target];
            if to != from && !facade {
                node.entry(to.clone()).or_insert_with(|| r.path.join("::"));
            }
        }
    }
    graph
}

/// The groups of files that depend on each other (strongly connected, more than one file).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm; the graphs are small, recursion is fine.
    struct State<'a> {
        graph: &'a Graph,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flat_map(BTreeMap::keys) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.out.push(group);
            }
        }
    }
    let mut s = State {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// A cycle group as text: its files and the references between them.
fn describe(group: &[String], graph: &Graph) -> String {
    let mut out = format!("  cycle: {}\n", group.join(", "));
    for from in group {
        for (to, via) in graph.get(from).into_iter().flatten() {
            if group.contains(to) {
                out.push_str(&format!("    {from} -> {to}  ({via})\n"));
            }
        }
    }
    out
}

#[test]
fn no_import_cycles_between_files() {
    let root = workspace_root();
    let mut report = String::new();
    let mut checked = 0;
    for member in members(&root) {
        let src = root.join(&member).join("src");
        if !src.is_dir() {
            continue;
        }
        let files = module_files(&src);
        let sources: HashMap<String, String> = files
            .values()
            .map(|f| {
                let text = std::fs::read_to_string(src.join(f)).expect("read source");
                (f.clone(), text)
            })
            .collect();
        checked += files.len();
        let graph = file_graph(&files, &sources);
        for group in cycles(&graph) {
            report.push_str(&format!("{member}:\n{}", describe(&group, &graph)));
        }
    }
    assert!(
        checked > 50,
        "only {checked} files found under the members' src/"
    );
    assert!(report.is_empty(), "import cycles between files:\n{report}");
}

// =============================================================================================
// The parser's own tests
// =============================================================================================

fn m(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split("::").map(str::to_owned).collect()
}

/// The graph of a crate given as (file, source) pairs.
fn graph_of(files: &[(&str, &str)]) -> Graph {
    let mut modules = BTreeMap::new();
    let mut sources = HashMap::new();
    for (file, src) in files {
        let module = match *file {
            "lib.rs" => Vec::new(),
            f => {
                let mut m = m(&f.trim_end_matches(".rs").replace('/', "::"));
                if m.last().is_some_and(|l| l == "mod") {
                    m.pop();
                }
                m
            }
        };
        modules.insert(module, (*file).to_owned());
        sources.insert((*file).to_owned(), (*src).to_owned());
    }
    file_graph(&modules, &sources)
}

fn edges(g: &Graph) -> Vec<String> {
    g.iter()
        .flat_map(|(from, tos)| tos.keys().map(move |to| format!("{from} -> {to}")))
        .collect()
}

#[test]
fn strip_blanks_comments_and_literals_but_keeps_lifetimes() {
    let s = strip(
        "a /* crate::x /* nested */ */ b // super::y\n\
         \"crate::z \\\" q\" r#\"crate::w\"# 'c' '\\'' fn f<'a>(x: &'a u8) b\"super::v\"",
    );
    assert!(!s.contains("crate"), "{s}");
    assert!(!s.contains("super"), "{s}");
    assert!(s.contains("<'a>") && s.contains("&'a u8"), "{s}");
    assert!(s.contains('a') && s.contains('b'));
    // `r#type` is an identifier, not a raw string.
    assert!(strip("x.r#type = crate::a;").contains("crate::a"));
}

#[test]
fn use_trees_with_braces_self_globs_and_aliases() {
    let toks = tokens("crate::a::{b, c::{d, self as e}, f::*};");
    let mut out = Vec::new();
    let mut j = 0;
    use_tree(&toks, &mut j, Vec::new(), &mut out);
    let got: Vec<(String, Option<String>)> =
        out.into_iter().map(|(p, a)| (p.join("::"), a)).collect();
    assert_eq!(
        got,
        [
            ("crate::a::b".to_owned(), None),
            ("crate::a::c::d".to_owned(), None),
            ("crate::a::c".to_owned(), Some("e".to_owned())),
            ("crate::a::f".to_owned(), None),
        ]
    );
}

#[test]
fn paths_resolve_to_the_deepest_file_and_inline_modules_shift_super() {
    let g = graph_of(&[
        ("lib.rs", "pub mod server; pub mod audit;"),
        (
            "server/mod.rs",
            "mod hub; mod watch; pub use self::hub::Hub; fn f() { watch::open(); }",
        ),
        (
            "server/hub.rs",
            "use super::super::audit::Auditor; fn g() {}",
        ),
        (
            "server/watch.rs",
            "mod inner { use super::*; use super::super::hub::X; }",
        ),
        (
            "audit/mod.rs",
            "pub(crate) fn x() { let s = \"crate::server\"; }",
        ),
    ]);
    assert_eq!(
        edges(&g),
        [
            "server/hub.rs -> audit/mod.rs",
            "server/mod.rs -> server/watch.rs",
            "server/watch.rs -> server/hub.rs",
        ]
    );
    assert!(cycles(&g).is_empty());
}

#[test]
fn facade_reexports_are_not_edges_but_private_uses_and_parents_are() {
    let g = graph_of(&[
        ("lib.rs", "pub mod server;"),
        (
            "server/mod.rs",
            "pub mod metrics; mod hub;\n\
             pub use self::metrics::{Metrics, Counter as C};\n\
             use self::hub::Hub;\n\
             pub struct ServeError;",
        ),
        // Through the parent's re-export: the edge goes to the defining file.
        (
            "server/metrics.rs",
            "use crate::server::C; pub struct Metrics;",
        ),
        ("server/hub.rs", "use super::{ServeError, Metrics};"),
    ]);
    assert_eq!(
        edges(&g),
        [
            "server/hub.rs -> server/metrics.rs",
            "server/hub.rs -> server/mod.rs",
            "server/mod.rs -> server/hub.rs",
        ]
    );
    assert_eq!(cycles(&g), [vec!["server/hub.rs", "server/mod.rs"]]);
}

#[test]
fn a_three_file_cycle_is_one_group_and_macros_and_visibility_are_not_paths() {
    let g = graph_of(&[
        (
            "lib.rs",
            "mod a; mod b; mod c; macro_rules! m { () => { $crate::a::f() } }",
        ),
        ("a.rs", "pub(in crate::c) fn f() { crate::b::g(); }"),
        ("b.rs", "fn g() { super::c::h::<u8>(); }"),
        ("c.rs", "use crate::{a::f as ff};"),
    ]);
    assert_eq!(cycles(&g), [vec!["a.rs", "b.rs", "c.rs"]]);
    assert!(g["lib.rs"].is_empty(), "{g:?}");
}

#[test]
fn test_only_modules_and_uses_are_not_edges() {
    let g = graph_of(&[
        ("lib.rs", "mod a; mod b;"),
        ("a.rs", "use crate::b::f;"),
        (
            "b.rs",
            "pub fn f() {}\n#[cfg(test)] use crate::a::x;\n\
             #[cfg(test)]\nmod tests { use super::super::a::y; mod deeper { fn t() { crate::a::z(); } } }\n\
             #[cfg(test)] pub(crate) mod helpers { use crate::a::w; }",
        ),
    ]);
    assert_eq!(edges(&g), ["a.rs -> b.rs"]);
}
