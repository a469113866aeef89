//! The `kustomization.yaml` fields Coffer acts on, read as kustomize reads them: strictly (an
//! unknown field is an error), with Go's `encoding/json` messages for a value of the wrong
//! type, and a plain refusal for a kustomize field that Coffer does not implement, so that no
//! field is ever silently ignored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The fields of kustomize's `Kustomization` that Coffer does not implement: accepted by
/// kubectl, refused here by name.
const UNSUPPORTED: &[&str] = &[
    "openapi",
    "namePrefix",
    "nameSuffix",
    "patchesStrategicMerge",
    "patchesJson6902",
    "patches",
    "images",
    "imageTags",
    "replacements",
    "replicas",
    "vars",
    "sortOptions",
    "components",
    "crds",
    "bases",
    "configMapGenerator",
    "helmGlobals",
    "helmCharts",
    "helmChartInflationGenerator",
    "configurations",
    "generators",
    "transformers",
    "validators",
    "buildMetadata",
];

/// The kustomization, as far as Coffer uses it.
#[derive(Debug, Default)]
pub(crate) struct Kustomization {
    pub(crate) namespace: String,
    pub(crate) common_labels: BTreeMap<String, String>,
    /// `labels` entries' pairs, in order.
    pub(crate) labels: Vec<BTreeMap<String, String>>,
    pub(crate) common_annotations: BTreeMap<String, String>,
    pub(crate) generator_options: Option<GeneratorOptions>,
    pub(crate) secret_generator: Vec<SecretArgs>,
    pub(crate) resources: Vec<String>,
    /// Whether anything beyond apiVersion and kind was given (kustomize refuses an empty one).
    pub(crate) empty: bool,
}

/// `generatorOptions`, top-level or per generator.
#[derive(Debug, Default, Clone)]
pub(crate) struct GeneratorOptions {
    pub(crate) labels: Option<BTreeMap<String, String>>,
    pub(crate) annotations: Option<BTreeMap<String, String>>,
    pub(crate) disable_name_suffix_hash: bool,
    pub(crate) immutable: bool,
}

impl GeneratorOptions {
    /// kustomize's `MergeGlobalOptionsIntoLocal`: the generator's own labels and annotations
    /// win over the global ones; either flag set anywhere is set.
    pub(crate) fn merged(local: Option<&Self>, global: Option<&Self>) -> Option<Self> {
        let Some(global) = global else {
            return local.cloned();
        };
        let mut out = local.cloned().unwrap_or_default();
        for (mine, theirs) in [
            (&mut out.labels, &global.labels),
            (&mut out.annotations, &global.annotations),
        ] {
            match (mine.as_mut(), theirs) {
                (None, Some(g)) => *mine = Some(g.clone()),
                (Some(m), Some(g)) => {
                    for (k, v) in g {
                        m.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                (_, None) => {}
            }
        }
        out.disable_name_suffix_hash |= global.disable_name_suffix_hash;
        out.immutable |= global.immutable;
        Some(out)
    }
}

/// One `secretGenerator` entry.
#[derive(Debug, Default)]
pub(crate) struct SecretArgs {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) behavior: String,
    pub(crate) literals: Vec<String>,
    pub(crate) files: Vec<String>,
    /// `envs`, then the older singular `env` (kustomize's `FixKustomization` appends it).
    pub(crate) envs: Vec<String>,
    pub(crate) type_: String,
    pub(crate) options: Option<GeneratorOptions>,
}

/// A type error as Go's `encoding/json` words it.
fn type_error(got: &Value, structure: &str, path: &str, want: &str) -> String {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("json: cannot unmarshal {got} into Go struct field {structure}.{path} of type {want}")
}

fn unknown(field: &str) -> String {
    format!("json: unknown field {field:?}")
}

/// A string field (`null` leaves it empty, as Go does).
fn string(v: &Value, structure: &str, path: &str) -> Result<String, String> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        other => Err(type_error(other, structure, path, "string")),
    }
}

/// A bool field; YAML 1.1 spellings (`yes`, `on`, ...) count, as kustomize's YAML reader
/// (yaml.v2) reads them as booleans.
fn boolean(v: &Value, structure: &str, path: &str) -> Result<bool, String> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Ok(true),
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Ok(false),
            _ => Err(type_error(v, structure, path, "bool")),
        },
        other => Err(type_error(other, structure, path, "bool")),
    }
}

/// A `[]string` field.
fn strings(v: &Value, structure: &str, path: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(|i| string(i, structure, path)).collect(),
        other => Err(type_error(other, structure, path, "[]string")),
    }
}

/// A `map[string]string` field.
fn string_map(
    v: &Value,
    structure: &str,
    path: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), string(v, structure, path)?)))
            .collect::<Result<_, String>>()
            .map(Some),
        other => Err(type_error(other, structure, path, "map[string]string")),
    }
}

/// Reads a kustomization document (already YAML-decoded).
pub(crate) fn parse(doc: &Value) -> Result<Kustomization, String> {
    let obj = match doc {
        Value::Null => {
            return Ok(Kustomization {
                empty: true,
                ..Kustomization::default()
            });
        }
        Value::Object(o) => o,
        other => {
            let got = match other {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                _ => "bool",
            };
            return Err(format!(
                "json: cannot unmarshal {got} into Go value of type types.Kustomization"
            ));
        }
    };
    let mut k = Kustomization::default();
    let mut used = false;
    // Go's decoder meets the keys in sorted order (YAML to JSON sorts them) and reports the
    // first error; a BTreeMap-backed Map iterates in that order.
    for (field, value) in obj {
        const S: &str = "Kustomization";
        if !matches!(field.as_str(), "apiVersion" | "kind") && !value.is_null() {
            used = true;
        }
        match field.as_str() {
            "apiVersion" => {
                let v = string(value, S, field)?;
                if !v.is_empty() && v != "kustomize.config.k8s.io/v1beta1" {
                    return Err(format!(
                        "apiVersion {v:?} is not supported: Coffer reads kustomize.config.k8s.io/v1beta1 Kustomizations"
                    ));
                }
            }
            "kind" => {
                let v = string(value, S, field)?;
                if !v.is_empty() && v != "Kustomization" {
                    return Err(format!(
                        "kind {v:?} is not supported: Coffer reads only kind Kustomization"
                    ));
                }
            }
            // The kustomization's own metadata names it; it changes no output.
            "metadata" => {
                if !matches!(value, Value::Null | Value::Object(_)) {
                    return Err(type_error(value, S, field, "types.ObjectMeta"));
                }
            }
            "namespace" => k.namespace = string(value, S, field)?,
            "commonLabels" => k.common_labels = string_map(value, S, field)?.unwrap_or_default(),
            "commonAnnotations" => {
                k.common_annotations = string_map(value, S, field)?.unwrap_or_default();
            }
            "labels" => k.labels = labels(value)?,
            "resources" => k.resources = strings(value, S, field)?,
            "generatorOptions" => {
                k.generator_options = options(value, S, "generatorOptions", "generatorOptions")?;
            }
            "secretGenerator" => k.secret_generator = generators(value)?,
            other if UNSUPPORTED.contains(&other) => {
                return Err(format!(
                    "the kustomization field {other:?} is not supported by Coffer (it reads namespace, commonLabels, labels, commonAnnotations, generatorOptions, secretGenerator and resources that are Secret manifests)"
                ));
            }
            other => return Err(unknown(other)),
        }
    }
    k.empty = !used;
    Ok(k)
}

fn labels(v: &Value) -> Result<Vec<BTreeMap<String, String>>, String> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(type_error(
                other,
                "Kustomization",
                "labels",
                "[]types.Label",
            ));
        }
    };
    let mut out = Vec::new();
    for item in items {
        let obj = match item {
            Value::Null => {
                out.push(BTreeMap::new());
                continue;
            }
            Value::Object(o) => o,
            other => return Err(type_error(other, "Kustomization", "labels", "types.Label")),
        };
        let mut pairs = BTreeMap::new();
        for (field, value) in obj {
            let path = format!("labels.{field}");
            match field.as_str() {
                "pairs" => pairs = string_map(value, "Label", &path)?.unwrap_or_default(),
                // On a Secret, labels land in metadata.labels whatever these say.
                "includeSelectors" | "includeTemplates" | "includeVolumeClaimTemplates" => {
                    boolean(value, "Label", &path)?;
                }
                "fields" => match value {
                    Value::Null => {}
                    Value::Array(a) if a.is_empty() => {}
                    Value::Array(_) => {
                        return Err(
                            "labels[].fields (custom field specs) is not supported by Coffer: labels go to metadata.labels"
                                .to_owned(),
                        );
                    }
                    other => return Err(type_error(other, "Label", &path, "[]types.FieldSpec")),
                },
                other => return Err(unknown(other)),
            }
        }
        out.push(pairs);
    }
    Ok(out)
}

fn options(
    v: &Value,
    parent: &str,
    field: &str,
    path: &str,
) -> Result<Option<GeneratorOptions>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        other => return Err(type_error(other, parent, field, "types.GeneratorOptions")),
    };
    const S: &str = "GeneratorOptions";
    let mut o = GeneratorOptions::default();
    for (f, value) in obj {
        let p = format!("{path}.{f}");
        match f.as_str() {
            "labels" => o.labels = string_map(value, S, &p)?,
            "annotations" => o.annotations = string_map(value, S, &p)?,
            "disableNameSuffixHash" => o.disable_name_suffix_hash = boolean(value, S, &p)?,
            "immutable" => o.immutable = boolean(value, S, &p)?,
            other => return Err(unknown(other)),
        }
    }
    Ok(Some(o))
}

fn generators(v: &Value) -> Result<Vec<SecretArgs>, String> {
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => {
            return Err(type_error(
                other,
                "Kustomization",
                "secretGenerator",
                "[]types.SecretArgs",
            ));
        }
    };
    items.iter().map(generator).collect()
}

fn generator(v: &Value) -> Result<SecretArgs, String> {
    let empty = Map::new();
    let obj = match v {
        Value::Null => &empty,
        Value::Object(o) => o,
        other => {
            return Err(type_error(
                other,
                "Kustomization",
                "secretGenerator",
                "types.SecretArgs",
            ));
        }
    };
    const S: &str = "SecretArgs";
    let mut g = SecretArgs::default();
    let mut env = String::new();
    for (field, value) in obj {
        let p = format!("secretGenerator.{field}");
        match field.as_str() {
            "name" => g.name = string(value, S, &p)?,
            "namespace" => g.namespace = string(value, S, &p)?,
            "behavior" => g.behavior = string(value, S, &p)?,
            "literals" => g.literals = strings(value, S, &p)?,
            "files" => g.files = strings(value, S, &p)?,
            "envs" => g.envs = strings(value, S, &p)?,
            "env" => env = string(value, S, &p)?,
            "type" => g.type_ = string(value, S, &p)?,
            "options" => g.options = options(value, S, &p, &p)?,
            other => return Err(unknown(other)),
        }
    }
    if !env.is_empty() {
        g.envs.push(env);
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn err(json: &str) -> String {
        parse(&serde_json::from_str(json).unwrap()).unwrap_err()
    }

    #[test]
    fn go_messages() {
        assert_eq!(
            err(r#"{"commonLabels":{"a":1}}"#),
            "json: cannot unmarshal number into Go struct field Kustomization.commonLabels of type string"
        );
        assert_eq!(
            err(r#"{"secretGenerator":[{"name":"a","literals":"x=1"}]}"#),
            "json: cannot unmarshal string into Go struct field SecretArgs.secretGenerator.literals of type []string"
        );
        assert_eq!(
            err(r#"{"secretGenerator":[{"name":"a","options":{"labels":{"a":1}}}]}"#),
            "json: cannot unmarshal number into Go struct field GeneratorOptions.secretGenerator.options.labels of type string"
        );
        assert_eq!(
            err(r#"{"generatorOptions":{"labels":{"a":1}}}"#),
            "json: cannot unmarshal number into Go struct field GeneratorOptions.generatorOptions.labels of type string"
        );
        assert_eq!(
            err(r#"{"secretGenerator":{"name":"a"}}"#),
            "json: cannot unmarshal object into Go struct field Kustomization.secretGenerator of type []types.SecretArgs"
        );
        assert_eq!(
            err(r#"{"labels":[{"pairs":{"a":1}}]}"#),
            "json: cannot unmarshal number into Go struct field Label.labels.pairs of type string"
        );
        assert_eq!(
            err(r#"{"resources":"x.yaml"}"#),
            "json: cannot unmarshal string into Go struct field Kustomization.resources of type []string"
        );
        assert_eq!(
            err(r#"{"frobnicate":1}"#),
            "json: unknown field \"frobnicate\""
        );
        assert!(err(r#"{"namePrefix":"p-"}"#).contains("\"namePrefix\" is not supported"));
    }

    #[test]
    fn options_merge_like_kustomize() {
        let global = GeneratorOptions {
            labels: Some([("a".into(), "g".into()), ("b".into(), "g".into())].into()),
            immutable: true,
            ..GeneratorOptions::default()
        };
        let local = GeneratorOptions {
            labels: Some([("a".into(), "l".into())].into()),
            ..GeneratorOptions::default()
        };
        let m = GeneratorOptions::merged(Some(&local), Some(&global)).unwrap();
        let labels = m.labels.unwrap();
        assert_eq!(labels["a"], "l");
        assert_eq!(labels["b"], "g");
        assert!(m.immutable);
        assert!(!m.disable_name_suffix_hash);
    }
}
