//! Kustomize, the third way the Kubernetes Secrets page gives to manage Secrets:
//! `coffer kustomize DIR` prints what `kubectl kustomize DIR` prints, and `coffer apply -k DIR`
//! applies it.
//!
//! A build follows kustomize v5's order: the `resources` (Secret manifests, in order), then the
//! `secretGenerator` entries (values from `envs`, then `literals`, then `files`); then the
//! transformers (`namespace`, `labels` entries in order, `commonLabels`, `commonAnnotations`);
//! then each generated Secret without `disableNameSuffixHash` gets its content hash appended
//! to its name (see [`super::hasher`]); then the objects are sorted in kustomize's legacy order
//! (by namespace, then name, for Secrets). Output is [`goyaml`]'s, which is kubectl's.
//!
//! Every file is read through [`loader::Root`], which refuses paths outside the kustomization
//! directory as kustomize does. Messages are kustomize's, except where kustomize would print a
//! secret value (a literal source, an env line that is not UTF-8): those name the source and
//! leave the value out.
//!
//! The objects hold base64 data; they are wiped when dropped ([`Build`]).

pub(crate) mod goyaml;
mod kustomization;
mod loader;

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use self::kustomization::{GeneratorOptions, Kustomization, SecretArgs};
use self::loader::Root;
use super::error::CliError;
use super::hasher;
use coffer_core::model::Secret;
use coffer_core::model::manifest;

/// The file names kustomize looks for, in its order.
const KUSTOMIZATION_FILES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The warning kustomize prints (on stderr) for `commonLabels`.
const COMMON_LABELS_WARNING: &str = "# Warning: 'commonLabels' is deprecated. Please use 'labels' instead. Run 'kustomize edit fix' to update your Kustomization automatically.";

/// The objects a kustomization builds, in output order.
#[derive(Debug, Default)]
pub(crate) struct Build {
    objects: Vec<Map<String, Value>>,
    /// Deprecation warnings, printed on stderr by the commands (as kubectl does).
    pub(crate) warnings: Vec<String>,
}

impl Drop for Build {
    fn drop(&mut self) {
        for o in &mut self.objects {
            for v in o.values_mut() {
                wipe(v);
            }
        }
    }
}

/// Overwrites every string in a value (its data is base64 of secret values).
pub(crate) fn wipe(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(m) => m.values_mut().for_each(wipe),
        _ => {}
    }
}

impl Build {
    /// The objects as `kubectl kustomize` prints them: YAML documents separated by `---`.
    pub(crate) fn to_yaml(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            goyaml::to_yaml(o, &mut out);
        }
        out
    }

    /// The objects as Secrets, for `apply -k`.
    pub(crate) fn secrets(&self) -> Result<Vec<Secret>, CliError> {
        let mut out = Vec::new();
        for o in &self.objects {
            let mut json = Zeroizing::new(String::new());
            let mut v = Value::Object(o.clone());
            json.push_str(&v.to_string());
            wipe(&mut v);
            let parsed = manifest::parse_manifests(&json).map_err(CliError::msg)?;
            out.extend(parsed.into_iter().map(|p| p.secret));
        }
        Ok(out)
    }
}

/// The error of a build, worded as kustomize's.
fn fail(message: impl Into<String>) -> CliError {
    CliError::msg(message.into())
}

/// Builds the kustomization in `dir`.
pub(crate) fn build(dir: &str) -> Result<Build, CliError> {
    let root = Root::new(dir).map_err(fail)?;
    let k = load_kustomization(&root)?;
    let mut build = Build::default();
    if !k.common_labels.is_empty() {
        build.warnings.push(COMMON_LABELS_WARNING.to_owned());
    }

    // Resources, then generated Secrets (each remembering whether it takes a hash suffix).
    let mut objects: Vec<(Map<String, Value>, bool)> = Vec::new();
    for path in &k.resources {
        for o in load_resource(&root, path)? {
            if let Some(dup) = objects.iter().find(|(x, _)| same_id(x, &o)) {
                return Err(fail(format!(
                    "accumulating resources: accumulation err='merging resources from '{path}': may not add resource with an already registered id: {}': must build at directory: '{}': file is not directory",
                    id_text(&dup.0),
                    root.named(path)
                )));
            }
            objects.push((o, false));
        }
    }
    for g in &k.secret_generator {
        let options = GeneratorOptions::merged(g.options.as_ref(), k.generator_options.as_ref());
        let o = generate(&root, g, options.as_ref())?;
        match g.behavior.as_str() {
            "" | "create" => {
                if objects.iter().any(|(x, _)| same_id(x, &o)) {
                    return Err(fail(format!(
                        "merging from generator: id {} exists; behavior must be merge or replace",
                        go_res_id(&o)
                    )));
                }
            }
            "merge" | "replace" => {
                if !objects.iter().any(|(x, _)| same_id(x, &o)) {
                    return Err(fail(format!(
                        "merging from generator: id {} does not exist; cannot merge or replace",
                        go_res_id(&o)
                    )));
                }
                return Err(fail(format!(
                    "secretGenerator {:?}: behavior {:?} is not supported by Coffer (only create)",
                    g.name, g.behavior
                )));
            }
            other => {
                return Err(fail(format!(
                    "secretGenerator {:?}: unknown behavior {other:?} (create, merge or replace)",
                    g.name
                )));
            }
        }
        let hashed = !options.as_ref().is_some_and(|o| o.disable_name_suffix_hash);
        objects.push((o, hashed));
    }

    for (o, _) in &mut objects {
        transform(o, &k);
    }
    for (o, hashed) in &mut objects {
        if *hashed {
            let suffix = hasher::kustomize_secret_suffix(o);
            if let Some(Value::String(name)) = o.get_mut("metadata").and_then(|m| m.get_mut("name"))
            {
                name.push('-');
                name.push_str(&suffix);
            }
        }
    }
    let mut objects: Vec<_> = objects.into_iter().map(|(o, _)| o).collect();
    // kustomize's legacy order; all objects are Secrets, so the GVK part is the same.
    objects.sort_by_cached_key(sort_key);
    build.objects = objects;
    Ok(build)
}

/// Finds, reads and checks the kustomization file.
fn load_kustomization(root: &Root) -> Result<Kustomization, CliError> {
    let mut found = Vec::new();
    for name in KUSTOMIZATION_FILES {
        if let Ok(bytes) = root.load(name) {
            found.push(bytes);
        }
    }
    let bytes = match found.len() {
        0 => {
            return Err(fail(format!(
                "unable to find one of 'kustomization.yaml', 'kustomization.yml' or 'Kustomization' in directory '{}'",
                root.display()
            )));
        }
        1 => found.remove(0),
        _ => {
            return Err(fail(format!(
                "Found multiple kustomization files under: {}\n",
                root.display()
            )));
        }
    };
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| fail("invalid Kustomization: yaml: invalid UTF-8"))?;
    let doc = parse_yaml_one(text).map_err(|e| fail(format!("invalid Kustomization: {e}")))?;
    let k = kustomization::parse(&doc).map_err(|e| fail(format!("invalid Kustomization: {e}")))?;
    if k.empty {
        return Err(fail("kustomization.yaml is empty"));
    }
    Ok(k)
}

/// Parses one YAML document (a kustomization holds only one).
fn parse_yaml_one(text: &str) -> Result<Value, String> {
    let mut docs = parse_yaml(text)?;
    Ok(if docs.is_empty() {
        Value::Null
    } else {
        docs.swap_remove(0)
    })
}

/// Parses a YAML stream into values, never quoting the input in errors (it may hold
/// plaintext).
fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_multiple_with_options::<Value>(text, options)
        .map_err(|e| format!("yaml: {}", e.without_snippet()))
}

/// Reads a `resources` entry: a file of Secret manifests (a `List` is opened into its items).
fn load_resource(root: &Root, path: &str) -> Result<Vec<Map<String, Value>>, CliError> {
    let wrap = |e: String, dir_err: String| {
        fail(format!(
            "accumulating resources: accumulation err='accumulating resources from '{path}': {e}': {dir_err}"
        ))
    };
    let bytes = match root.load(path) {
        Ok(b) => b,
        Err(e) => {
            let named = root.named(path);
            let dir_err = if std::path::Path::new(&named).is_dir() {
                // kustomize would build the directory as a nested kustomization.
                return Err(fail(format!(
                    "resources entry '{path}' is a directory: Coffer reads resources that are Secret manifest files, not nested kustomizations"
                )));
            } else if e.starts_with("evalsymlink failure") {
                format!("must build at directory: not a valid directory: {e}")
            } else {
                format!("must build at directory: '{named}': file is not directory")
            };
            return Err(wrap(e, dir_err));
        }
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        fail(format!(
            "accumulating resources: accumulating resources from '{path}': the file is not UTF-8 text"
        ))
    })?;
    // Checked as `apply -f` checks a manifest, so that what is printed can also be applied.
    manifest::parse_manifests(text).map_err(|e| {
        fail(format!(
            "accumulating resources: accumulating resources from '{path}': {e}"
        ))
    })?;
    let docs = if text.trim_start().starts_with(['{', '[']) {
        let mut docs = Vec::new();
        for d in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            docs.push(d.map_err(|e| fail(format!("accumulating resources from '{path}': {e}")))?);
        }
        docs
    } else {
        parse_yaml(text).map_err(|e| {
            fail(format!(
                "accumulating resources: accumulating resources from '{path}': MalformedYAMLError: {e} in File: {path}"
            ))
        })?
    };
    let mut out = Vec::new();
    for doc in docs {
        let Value::Object(mut o) = doc else { continue };
        if o.get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"))
        {
            if let Some(Value::Array(items)) = o.remove("items") {
                out.extend(items.into_iter().filter_map(|i| match i {
                    Value::Object(m) => Some(m),
                    _ => None,
                }));
            }
            continue;
        }
        // Server-managed fields are dropped by apply; kustomize prints what the file holds.
        out.push(o);
    }
    Ok(out)
}

/// Makes one Secret from a generator (kustomize's `MakeSecret`).
fn generate(
    root: &Root,
    g: &SecretArgs,
    options: Option<&GeneratorOptions>,
) -> Result<Map<String, Value>, CliError> {
    if g.name.is_empty() {
        return Err(fail("a configmap must have a name"));
    }
    let pairs = load_pairs(root, g).map_err(|e| fail(format!("loading KV pairs: {e}")))?;
    let mut data = Map::new();
    for (key, value) in pairs {
        if data.contains_key(&key) {
            data.values_mut().for_each(wipe);
            return Err(fail(format!(
                "configmap {} illegally repeats the key `{key}`",
                g.name
            )));
        }
        let encoded = STANDARD.encode(value.as_slice());
        data.insert(key, Value::String(encoded));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), Value::String(g.name.clone()));
    if !g.namespace.is_empty() {
        meta.insert("namespace".into(), Value::String(g.namespace.clone()));
    }
    if let Some(o) = options {
        for (field, map) in [("labels", &o.labels), ("annotations", &o.annotations)] {
            if let Some(map) = map.as_ref().filter(|m| !m.is_empty()) {
                meta.insert(field.into(), string_map(map));
            }
        }
    }
    let mut o = Map::new();
    o.insert("apiVersion".into(), Value::String("v1".into()));
    o.insert("kind".into(), Value::String("Secret".into()));
    o.insert("metadata".into(), Value::Object(meta));
    let type_ = if g.type_.is_empty() {
        "Opaque"
    } else {
        &g.type_
    };
    o.insert("type".into(), Value::String(type_.to_owned()));
    o.insert("data".into(), Value::Object(data));
    if options.is_some_and(|o| o.immutable) {
        o.insert("immutable".into(), Value::Bool(true));
    }
    Ok(o)
}

fn string_map(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// A key and its value (plaintext, wiped on drop).
type Pair = (String, Zeroizing<Vec<u8>>);

/// The key/value pairs of a generator, in kustomize's order: env files, literals, files.
fn load_pairs(root: &Root, g: &SecretArgs) -> Result<Vec<Pair>, String> {
    let mut out = Vec::new();
    for path in &g.envs {
        let bytes = root
            .load(path)
            .map_err(|e| format!("env source files: {}: {e}", go_list(&g.envs)))?;
        env_pairs(&bytes, &mut out)
            .map_err(|e| format!("env source files: {}: {e}", go_list(&g.envs)))?;
    }
    // kubectl prints every literal source here, values included; Coffer prints the keys.
    let shown: Vec<String> = g
        .literals
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, _)) => format!("{k}=…"),
            None => "…".to_owned(),
        })
        .collect();
    for (i, source) in g.literals.iter().enumerate() {
        let Some((key, value)) = source.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(format!(
                "literal sources {}: invalid literal source {}, expected key=value",
                go_list(&shown),
                shown[i]
            ));
        };
        out.push((
            key.to_owned(),
            Zeroizing::new(remove_quotes(value).as_bytes().to_vec()),
        ));
    }
    for source in &g.files {
        let wrap = |e: String| format!("file sources: {}: {e}", go_list(&g.files));
        let (key, path) = parse_file_source(source).map_err(wrap)?;
        let bytes = root.load(&path).map_err(wrap)?;
        out.push((key, bytes));
    }
    Ok(out)
}

/// Go's `%v` of a `[]string`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// kustomize's `removeQuotes`: one pair of matching surrounding quotes is dropped.
fn remove_quotes(s: &str) -> &str {
    let b = s.as_bytes();
    if b.len() >= 2 && b[0] == b[b.len() - 1] && matches!(b[0], b'"' | b'\'') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// kustomize's `ParseFileSource`: `PATH` (the key is the base name) or `KEY=PATH`.
fn parse_file_source(source: &str) -> Result<(String, String), String> {
    match source.matches('=').count() {
        0 => Ok((go_base(source), source.to_owned())),
        1 if source.starts_with('=') => Err(format!(
            "missing key name for file path {:?} in source {source:?}",
            &source[1..]
        )),
        1 if source.ends_with('=') => Err(format!(
            "missing file path for key name {:?} in source {source:?}",
            &source[..source.len() - 1]
        )),
        1 => {
            let (k, p) = source.split_once('=').unwrap_or_default();
            Ok((k.to_owned(), p.to_owned()))
        }
        _ => Err(format!(
            "source {source:?} key name or file path contains '='"
        )),
    }
}

/// Go's `path.Base`.
fn go_base(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return if p.is_empty() { ".".into() } else { "/".into() };
    }
    t.rsplit('/').next().unwrap_or(t).to_owned()
}

/// kustomize's env file reader: lines (a final `\r` dropped), a UTF-8 BOM skipped on the
/// first, leading white space trimmed, blank lines and `#` comments skipped, `KEY=VALUE` with
/// the value untouched, a bare `KEY` an empty value, and a line with an empty key skipped.
fn env_pairs(bytes: &[u8], out: &mut Vec<Pair>) -> Result<(), String> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Ok(());
    }
    for (n, raw) in body.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            // kustomize prints the line itself here; it may be a secret.
            return Err(format!(
                "line {} has invalid utf8 bytes (the line is not shown)",
                n + 1
            ));
        };
        let line = if n == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        if key.is_empty() {
            continue;
        }
        out.push((key.to_owned(), Zeroizing::new(value.as_bytes().to_vec())));
    }
    Ok(())
}

/// Applies the kustomization's transformers to one object, in kustomize's order.
fn transform(o: &mut Map<String, Value>, k: &Kustomization) {
    let meta = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    if !k.namespace.is_empty() {
        meta.insert("namespace".into(), Value::String(k.namespace.clone()));
    }
    let mut set = |field: &str, pairs: &BTreeMap<String, String>| {
        if pairs.is_empty() {
            return;
        }
        let target = meta
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        if !target.is_object() {
            *target = Value::Object(Map::new());
        }
        if let Value::Object(m) = target {
            for (key, value) in pairs {
                m.insert(key.clone(), Value::String(value.clone()));
            }
        }
    };
    for pairs in &k.labels {
        set("labels", pairs);
    }
    set("labels", &k.common_labels);
    set("annotations", &k.common_annotations);
}

fn meta_str<'a>(o: &'a Map<String, Value>, field: &str) -> &'a str {
    o.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether two objects have the same kustomize id (kind, name, namespace; `default` is no
/// namespace).
fn same_id(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    let ns = |o| match meta_str(o, "namespace") {
        "default" => "",
        n => n,
    };
    meta_str(a, "name") == meta_str(b, "name") && ns(a) == ns(b)
}

/// An id as kustomize prints it in `already registered id` messages.
fn id_text(o: &Map<String, Value>) -> String {
    let ns = match meta_str(o, "namespace") {
        "" => "[noNs]",
        n => n,
    };
    format!("Secret.v1.[noGrp]/{}.{ns}", meta_str(o, "name"))
}

/// An id as Go's `%#v` prints a kustomize `resid.ResId`.
fn go_res_id(o: &Map<String, Value>) -> String {
    format!(
        "resid.ResId{{Gvk:resid.Gvk{{Group:\"\", Version:\"v1\", Kind:\"Secret\", isClusterScoped:false}}, Name:{:?}, Namespace:{:?}}}",
        meta_str(o, "name"),
        meta_str(o, "namespace")
    )
}

/// kustomize's `legacyResIDSortString` for a Secret.
fn sort_key(o: &Map<String, Value>) -> String {
    let ns = match meta_str(o, "namespace") {
        "" => "~X",
        n => n,
    };
    let name = match meta_str(o, "name") {
        "" => "~N",
        n => n,
    };
    format!("Secret.v1.[noGrp]|{ns}|{name}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn env_lines_like_kustomize() {
        let mut out = Vec::new();
        env_pairs(
            b"\xef\xbb\xbfA=1\n=skipped\n  # c\n\nB\n\tC=x=y \r\n",
            &mut out,
        )
        .unwrap();
        let got: Vec<(String, Vec<u8>)> = out.into_iter().map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                ("A".into(), b"1".to_vec()),
                ("B".into(), b"".to_vec()),
                ("C".into(), b"x=y ".to_vec()),
            ]
        );
        let e = env_pairs(b"A=1\nB=\xff-secret\n", &mut Vec::new()).unwrap_err();
        assert_eq!(e, "line 2 has invalid utf8 bytes (the line is not shown)");
    }

    #[test]
    fn sources() {
        assert_eq!(remove_quotes("'x'"), "x");
        assert_eq!(remove_quotes("\"x'"), "\"x'");
        assert_eq!(remove_quotes("'"), "'");
        assert_eq!(
            parse_file_source("dir/a.txt").unwrap(),
            ("a.txt".into(), "dir/a.txt".into())
        );
        assert_eq!(
            parse_file_source("k=a.txt").unwrap(),
            ("k".into(), "a.txt".into())
        );
        assert_eq!(
            parse_file_source("=a").unwrap_err(),
            "missing key name for file path \"a\" in source \"=a\""
        );
        assert_eq!(
            parse_file_source("b=").unwrap_err(),
            "missing file path for key name \"b\" in source \"b=\""
        );
        assert_eq!(
            parse_file_source("a=b=c").unwrap_err(),
            "source \"a=b=c\" key name or file path contains '='"
        );
    }

    #[test]
    fn wipe_clears_strings() {
        let mut v: Value = serde_json::from_str(r#"{"a":["x",{"b":"y"}]}"#).unwrap();
        wipe(&mut v);
        assert_eq!(v.to_string(), r#"{"a":["",{"b":""}]}"#);
    }
}
