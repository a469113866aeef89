//! What to mount: one [`MountSpec`] per target directory, from flags or a YAML/TOML file, and
//! the projection of a Secret's data onto a mount's files ([`MountSpec::payload`]).
//!
//! The file lists mounts under `mounts`, with the fields of a Kubernetes secret volume:
//!
//! ```yaml
//! mounts:
//!   - secret: default/db          # NAMESPACE/NAME, or NAME with `namespace` (default "default")
//!     dir: /run/secrets/db
//!     defaultMode: 0440           # default 0644; also default_mode; 0440, 0o440 or "0440"
//!     optional: false
//!     items:                      # default: every key, as a file named after it
//!       - key: password
//!         path: db/password
//!         mode: 0400
//! ```
//!
//! ```toml
//! [[mounts]]
//! secret = "default/db"
//! dir = "/run/secrets/db"
//! default_mode = 0o440
//! items = [{ key = "password", path = "db/password", mode = "0400" }]
//! ```
//!
//! In YAML a mode with a leading zero is octal (`0644`), as in Kubernetes manifests; a plain
//! number is decimal (`420` is `0644`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use zeroize::Zeroizing;

use super::atomic_writer::{DEFAULT_MODE, FileProjection, MAX_MODE, PathError, Payload};
use coffer_core::model::validation::{validate_name, validate_namespace};

/// The namespace of a mount that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// One key of a Secret projected to a path, as a Kubernetes `KeyToPath`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyToPath {
    /// The Secret's data key.
    pub key: String,
    /// The relative path of the file in the target directory.
    pub path: String,
    /// The file's mode (default: the mount's `default_mode`).
    pub mode: Option<u32>,
}

/// One mount: a Secret written into a target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// The target directory.
    pub dir: PathBuf,
    /// The keys to project; empty means every key, each as a file named after it.
    pub items: Vec<KeyToPath>,
    /// The mode of files whose item names none (0..=0777).
    pub default_mode: u32,
    /// A missing Secret makes an empty directory and a missing listed key is skipped, instead
    /// of an error.
    pub optional: bool,
}

/// A mount that cannot be served as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A bad field of one mount.
    #[error("mount {mount}: {message}")]
    Mount {
        /// `namespace/name -> dir`.
        mount: String,
        /// What is wrong.
        message: String,
    },
    /// The file cannot be read or parsed.
    #[error("{0}")]
    File(String),
}

/// A Secret's data cannot be projected onto a mount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// A listed key is absent and the mount is not optional.
    #[error("references non-existent secret key: {0}")]
    MissingKey(String),
    /// A path (an item's, or a key used as a path) was refused.
    #[error(transparent)]
    Path(#[from] PathError),
}

impl MountSpec {
    /// A mount of every key of `namespace/name` into `dir`, mode 0644, not optional.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            dir: dir.into(),
            items: Vec::new(),
            default_mode: DEFAULT_MODE,
            optional: false,
        }
    }

    /// `namespace/name -> dir`, for messages.
    pub fn describe(&self) -> String {
        format!("{}/{} -> {}", self.namespace, self.name, self.dir.display())
    }

    /// Checks the names, the directory, the modes and every item path (nothing is written for
    /// a mount that fails).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Mount {
            mount: self.describe(),
            message,
        };
        validate_namespace(&self.namespace).map_err(|e| bad(e.to_string()))?;
        validate_name(&self.name).map_err(|e| bad(e.to_string()))?;
        if self.dir.as_os_str().is_empty() {
            return Err(bad("the target directory is empty".into()));
        }
        if self.default_mode > MAX_MODE {
            return Err(bad(format!(
                "defaultMode {:#o} must be between 0 and 0777",
                self.default_mode
            )));
        }
        // Building a payload of empty files checks paths, modes and clashes in one place.
        let mut check = Payload::new();
        for item in &self.items {
            if item.key.is_empty() {
                return Err(bad(format!("item with path {:?} has no key", item.path)));
            }
            let file = FileProjection::new(
                Zeroizing::new(Vec::new()),
                item.mode.unwrap_or(self.default_mode),
            );
            check
                .insert(&item.path, file)
                .map_err(|e| bad(format!("items[{}]: {e}", item.key)))?;
        }
        Ok(())
    }

    /// The files this mount holds for a Secret with `data` (`None`: the Secret does not
    /// exist, which only an optional mount accepts, as an empty directory).
    pub fn payload<'a, I>(&self, data: Option<I>) -> Result<Option<Payload>, ProjectionError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let Some(data) = data else {
            return Ok(self.optional.then(Payload::new));
        };
        let data: BTreeMap<&str, &[u8]> = data.into_iter().collect();
        let mut payload = Payload::new();
        let copy = |v: &[u8]| Zeroizing::new(v.to_vec());
        if self.items.is_empty() {
            for (key, value) in &data {
                payload.insert(key, FileProjection::new(copy(value), self.default_mode))?;
            }
        } else {
            for item in &self.items {
                match data.get(item.key.as_str()) {
                    Some(value) => payload.insert(
                        &item.path,
                        FileProjection::new(copy(value), item.mode.unwrap_or(self.default_mode)),
                    )?,
                    None if self.optional => {}
                    None => return Err(ProjectionError::MissingKey(item.key.clone())),
                }
            }
        }
        Ok(Some(payload))
    }
}

/// Splits `NAMESPACE/NAME` (or `NAME`, in `default_namespace`).
pub fn parse_secret_ref(s: &str, default_namespace: &str) -> Result<(String, String), String> {
    let (ns, name) = match s.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (default_namespace, s),
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(format!(
            "{s:?} is not a Secret reference (expected NAMESPACE/NAME or NAME)"
        ));
    }
    Ok((ns.to_owned(), name.to_owned()))
}

/// Parses a mode: octal with a leading `0` or `0o` (`0644`, `0o644`), else decimal (`420`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = if let Some(oct) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        u32::from_str_radix(oct, 8)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse::<u32>()
    };
    match parsed {
        Ok(m) if m <= MAX_MODE => Ok(m),
        Ok(_) => Err(format!("mode {s:?} must be between 0 and 0777")),
        Err(_) => Err(format!(
            "{s:?} is not a file mode (expected octal such as 0644 or 0o644)"
        )),
    }
}

/// The format of a mount file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// YAML (`.yaml`, `.yml`).
    Yaml,
    /// TOML (`.toml`).
    Toml,
}

impl FileFormat {
    /// The format a file's extension names; YAML when it names none (JSON is YAML too).
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("toml") => Self::Toml,
            _ => Self::Yaml,
        }
    }
}

/// Reads the mounts of a YAML or TOML file (see the module documentation).
pub fn load_mount_file(path: &Path) -> Result<Vec<MountSpec>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::File(format!("cannot read {}: {e}", path.display())))?;
    parse_mount_file(&text, FileFormat::from_path(path))
        .map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))
}

/// Parses the text of a mount file.
pub fn parse_mount_file(text: &str, format: FileFormat) -> Result<Vec<MountSpec>, String> {
    let file: FileDoc = match format {
        FileFormat::Yaml => {
            let mut options = serde_saphyr::Options::default();
            options.legacy_octal_numbers = true;
            serde_saphyr::from_str_with_options(text, options).map_err(|e| e.to_string())?
        }
        FileFormat::Toml => toml::from_str(text).map_err(|e| e.message().to_owned())?,
    };
    file.mounts
        .into_iter()
        .enumerate()
        .map(|(i, m)| m.into_spec().map_err(|e| format!("mounts[{i}]: {e}")))
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    mounts: Vec<FileMount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMount {
    #[serde(alias = "secretName", alias = "secret_name")]
    secret: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(alias = "target")]
    dir: PathBuf,
    #[serde(default)]
    items: Vec<FileItem>,
    #[serde(default, alias = "defaultMode")]
    default_mode: Option<ModeValue>,
    #[serde(default)]
    optional: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileItem {
    key: String,
    path: String,
    #[serde(default)]
    mode: Option<ModeValue>,
}

/// A mode as written: a number, or a string parsed as octal.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModeValue {
    Number(i64),
    Text(String),
}

impl ModeValue {
    fn get(&self) -> Result<u32, String> {
        match self {
            Self::Number(n) => u32::try_from(*n)
                .ok()
                .filter(|m| *m <= MAX_MODE)
                .ok_or_else(|| {
                    format!(
                        "mode {n} must be between 0 and 0777 (511); write octal as 0644 or \"0644\""
                    )
                }),
            Self::Text(s) => parse_mode(s),
        }
    }
}

impl FileMount {
    fn into_spec(self) -> Result<MountSpec, String> {
        let (namespace, name) = match (self.secret.split_once('/'), self.namespace) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "secret {:?} names a namespace; do not set `namespace` too",
                    self.secret
                ));
            }
            (Some(_), None) => parse_secret_ref(&self.secret, DEFAULT_NAMESPACE)?,
            (None, ns) => {
                parse_secret_ref(&self.secret, ns.as_deref().unwrap_or(DEFAULT_NAMESPACE))?
            }
        };
        let default_mode = match &self.default_mode {
            Some(m) => m.get().map_err(|e| format!("defaultMode: {e}"))?,
            None => DEFAULT_MODE,
        };
        let items = self
            .items
            .into_iter()
            .map(|i| {
                let mode = match &i.mode {
                    Some(m) => Some(m.get().map_err(|e| format!("items[{}].mode: {e}", i.key))?),
                    None => None,
                };
                Ok(KeyToPath {
                    key: i.key,
                    path: i.path,
                    mode,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(MountSpec {
            namespace,
            name,
            dir: self.dir,
            items,
            default_mode,
            optional: self.optional,
        })
    }
}

impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn yaml_file() {
        let text = r#"
mounts:
  - secret: team/db
    dir: /run/a
    defaultMode: 0440
    items:
      - key: password
        path: db/password
        mode: 0400
      - key: user
        path: user
        mode: "0o600"
  - secretName: api
    namespace: web
    dir: /run/b
    optional: true
  - secret: plain
    dir: /run/c
    default_mode: 420
"#;
        let m = parse_mount_file(text, FileFormat::Yaml).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].namespace.as_str(), m[0].name.as_str()),
            ("team", "db")
        );
        assert_eq!(m[0].default_mode, 0o440);
        assert_eq!(m[0].items[0].mode, Some(0o400));
        assert_eq!(m[0].items[1].mode, Some(0o600));
        assert_eq!(
            (m[1].namespace.as_str(), m[1].name.as_str()),
            ("web", "api")
        );
        assert!(m[1].optional);
        assert_eq!(m[1].default_mode, 0o644);
        assert_eq!(m[2].namespace, "default");
        assert_eq!(m[2].default_mode, 0o644);
        for s in &m {
            s.validate().unwrap();
        }
    }

    #[test]
    fn toml_file() {
        let text = r#"
[[mounts]]
secret = "default/db"
dir = "/run/secrets/db"
default_mode = 0o440
items = [{ key = "password", path = "db/password", mode = "0400" }]
"#;
        let m = parse_mount_file(text, FileFormat::Toml).unwrap();
        assert_eq!(m[0].default_mode, 0o440);
        assert_eq!(m[0].items[0].mode, Some(0o400));
    }

    #[test]
    fn file_errors() {
        let e = parse_mount_file(
            "mounts:\n  - secret: a\n    dir: /x\n    mode: 1\n",
            FileFormat::Yaml,
        )
        .unwrap_err();
        assert!(e.contains("mode"), "{e}");
        let e = parse_mount_file(
            "mounts:\n  - secret: a\n    dir: /x\n    defaultMode: 0999\n",
            FileFormat::Yaml,
        )
        .unwrap_err();
        assert!(!e.is_empty());
        let e = parse_mount_file(
            "mounts:\n  - secret: a\n    dir: /x\n    defaultMode: 1000\n",
            FileFormat::Yaml,
        )
        .unwrap_err();
        assert!(e.contains("between 0 and 0777"), "{e}");
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0644"), Ok(0o644));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("420"), Ok(0o644));
        assert_eq!(parse_mode("0"), Ok(0));
        assert!(parse_mode("0778").is_err());
        assert!(parse_mode("01000").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn validation() {
        let mut m = MountSpec::new("default", "db", "/run/x");
        m.validate().unwrap();
        m.items.push(KeyToPath {
            key: "k".into(),
            path: "../escape".into(),
            mode: None,
        });
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("must not contain '..'"), "{e}");
        m.items[0].path = "ok".into();
        m.items[0].mode = Some(0o1000);
        assert!(m.validate().is_err());
        let bad = MountSpec::new("Bad_NS", "db", "/run/x");
        assert!(bad.validate().is_err());
    }

    #[test]
    fn payloads() {
        let data = [("a", b"1".as_slice()), ("b", b"2".as_slice())];
        let mut m = MountSpec::new("default", "db", "/run/x");
        let p = m.payload(Some(data)).unwrap().unwrap();
        assert_eq!(p.len(), 2);
        assert!(m.payload(None::<[(&str, &[u8]); 0]>).unwrap().is_none());
        m.optional = true;
        assert!(
            m.payload(None::<[(&str, &[u8]); 0]>)
                .unwrap()
                .unwrap()
                .is_empty()
        );
        m.optional = false;
        m.items = vec![
            KeyToPath {
                key: "a".into(),
                path: "x/a".into(),
                mode: Some(0o400),
            },
            KeyToPath {
                key: "zz".into(),
                path: "zz".into(),
                mode: None,
            },
        ];
        assert_eq!(
            m.payload(Some(data)).unwrap_err(),
            ProjectionError::MissingKey("zz".into())
        );
        m.optional = true;
        let p = m.payload(Some(data)).unwrap().unwrap();
        assert_eq!(p.files().keys().collect::<Vec<_>>(), ["x/a"]);
        assert_eq!(p.files()["x/a"].mode(), 0o400);
    }

    #[test]
    fn secret_refs() {
        assert_eq!(
            parse_secret_ref("ns/n", "default").unwrap(),
            ("ns".to_owned(), "n".to_owned())
        );
        assert_eq!(
            parse_secret_ref("n", "other").unwrap(),
            ("other".to_owned(), "n".to_owned())
        );
        assert!(parse_secret_ref("a/b/c", "d").is_err());
        assert!(parse_secret_ref("/b", "d").is_err());
    }
}
