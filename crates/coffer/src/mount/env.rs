//! Environment variables from Secrets, as the kubelet builds them for `envFrom` and
//! `env[].valueFrom.secretKeyRef` (the library side of `coffer exec`).
//!
//! `envFrom` sources apply in order, a later one overriding an earlier one; explicit variables
//! override them all. A variable's name is the source's prefix plus the key; names that are not
//! valid are skipped and reported in one line per source, with the text of the kubelet's
//! `InvalidEnvironmentVariableNames` event.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// Which variable names are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameRule {
    /// Kubernetes' rule: `[-._a-zA-Z][-._a-zA-Z0-9]*`, not `.`, `..`, nor starting with `..`.
    #[default]
    Kubernetes,
    /// C identifiers only: `[A-Za-z_][A-Za-z0-9_]*` (what every shell can expand).
    Strict,
}

/// Whether `name` is a valid variable name under `rule`.
pub fn is_valid_name(name: &str, rule: NameRule) -> bool {
    let b = name.as_bytes();
    let Some(first) = b.first() else {
        return false;
    };
    match rule {
        NameRule::Kubernetes => {
            let ok_first = first.is_ascii_alphabetic() || matches!(first, b'-' | b'.' | b'_');
            let ok_rest = b
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
            ok_first && ok_rest && name != "." && name != ".." && !name.starts_with("..")
        }
        NameRule::Strict => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        }
    }
}

/// The kubelet's `InvalidEnvironmentVariableNames` text for the keys (prefix included) of
/// Secret `namespace/name` that were skipped; `keys` are sorted here.
pub fn invalid_names_message(keys: &[String], namespace: &str, name: &str) -> String {
    let mut keys = keys.to_vec();
    keys.sort();
    format!(
        "Keys [{}] from the EnvFrom secret {namespace}/{name} were skipped since they are \
         considered invalid environment variable names.",
        keys.join(", ")
    )
}

/// Variable names that change how a program is loaded or what a shell or interpreter runs
/// before the program's own code: whoever can write a Secret could run code through them in the
/// command `coffer exec` starts. Exact names.
const UNSAFE_NAMES: &[&str] = &[
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "PROMPT_COMMAND",
    "CDPATH",
    "GLOBIGNORE",
    "GCONV_PATH",
    "GLIBC_TUNABLES",
    "LOCPATH",
    "HOSTALIASES",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
];
/// Name prefixes of the same kind: the dynamic loader's (`LD_PRELOAD`, `LD_LIBRARY_PATH`, ...;
/// `DYLD_*` on macOS), Python's (`PYTHONPATH`, `PYTHONSTARTUP`, ...), exported bash functions.
const UNSAFE_PREFIXES: &[&str] = &["LD_", "DYLD_", "PYTHON", "BASH_FUNC_"];

/// Whether a variable named `name` can make the command run code other than its own (see
/// [`UNSAFE_NAMES`]); `coffer exec` skips such names from `--env-from` unless
/// `--allow-unsafe-env` is given.
pub fn is_unsafe_name(name: &str) -> bool {
    UNSAFE_NAMES.contains(&name) || UNSAFE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The stderr line for the keys (prefix included) of Secret `namespace/name` skipped because
/// they are unsafe ([`is_unsafe_name`]), in the style of the kubelet's invalid-names event;
/// `keys` are sorted here.
pub fn unsafe_names_message(keys: &[String], namespace: &str, name: &str) -> String {
    let mut keys = keys.to_vec();
    keys.sort();
    format!(
        "Keys [{}] from the EnvFrom secret {namespace}/{name} were skipped since they can change \
         what the command runs (pass --allow-unsafe-env to set them).",
        keys.join(", ")
    )
}

/// Variables being built; values are wiped on drop.
#[derive(Default)]
pub struct EnvSet {
    vars: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for EnvSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvSet")
            .field("names", &self.vars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl EnvSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every key of Secret `namespace/name` as `prefix + key` (overriding earlier values);
    /// returns the kubelet's warning line when some names were invalid and skipped.
    pub fn add_env_from<'a, I>(
        &mut self,
        namespace: &str,
        name: &str,
        prefix: &str,
        data: I,
        rule: NameRule,
    ) -> Option<String>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        self.add_env_from_checked(namespace, name, prefix, data, rule, true)
            .into_iter()
            .next()
    }

    /// As [`EnvSet::add_env_from`], and unless `allow_unsafe`, also skips the names
    /// [`is_unsafe_name`] refuses. Returns the warning lines: invalid names first, then unsafe
    /// ones (at most one line each).
    pub fn add_env_from_checked<'a, I>(
        &mut self,
        namespace: &str,
        name: &str,
        prefix: &str,
        data: I,
        rule: NameRule,
        allow_unsafe: bool,
    ) -> Vec<String>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut invalid = Vec::new();
        let mut unsafe_names = Vec::new();
        for (key, value) in data {
            let var = format!("{prefix}{key}");
            if !is_valid_name(&var, rule) {
                invalid.push(var);
            } else if !allow_unsafe && is_unsafe_name(&var) {
                unsafe_names.push(var);
            } else {
                self.vars.insert(var, Zeroizing::new(value.to_vec()));
            }
        }
        let mut warnings = Vec::new();
        if !invalid.is_empty() {
            warnings.push(invalid_names_message(&invalid, namespace, name));
        }
        if !unsafe_names.is_empty() {
            warnings.push(unsafe_names_message(&unsafe_names, namespace, name));
        }
        warnings
    }

    /// Sets one variable (an explicit `env` entry).
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.vars
            .insert(name.to_owned(), Zeroizing::new(value.to_vec()));
    }

    /// The variables, by name.
    pub fn vars(&self) -> &BTreeMap<String, Zeroizing<Vec<u8>>> {
        &self.vars
    }

    /// The number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names() {
        for ok in ["A", "a_b", "-x", ".dotted", "_", "a.b-c", "x1"] {
            assert!(is_valid_name(ok, NameRule::Kubernetes), "{ok}");
        }
        for bad in ["", ".", "..", "..x", "1abc", "a b", "a=b", "ü"] {
            assert!(!is_valid_name(bad, NameRule::Kubernetes), "{bad}");
        }
        for ok in ["A", "_a1", "DB_PASSWORD"] {
            assert!(is_valid_name(ok, NameRule::Strict), "{ok}");
        }
        for bad in ["a-b", ".x", "1a", "a.b", ""] {
            assert!(!is_valid_name(bad, NameRule::Strict), "{bad}");
        }
    }

    #[test]
    fn precedence_and_report() {
        let mut env = EnvSet::new();
        let first = [("A", b"1".as_slice()), ("B", b"1".as_slice())];
        let second = [
            ("B", b"2".as_slice()),
            ("1bad", b"x".as_slice()),
            ("a b", b"y".as_slice()),
        ];
        assert!(
            env.add_env_from("ns", "one", "", first, NameRule::Kubernetes)
                .is_none()
        );
        let warn = env
            .add_env_from("ns", "two", "", second, NameRule::Kubernetes)
            .unwrap();
        assert_eq!(
            warn,
            "Keys [1bad, a b] from the EnvFrom secret ns/two were skipped since they are \
             considered invalid environment variable names."
        );
        env.set("A", b"explicit");
        assert_eq!(env.vars()["A"].as_slice(), b"explicit");
        assert_eq!(env.vars()["B"].as_slice(), b"2");
        assert_eq!(env.len(), 2);
        assert!(!format!("{env:?}").contains("explicit"));
        // The prefix is part of the checked name.
        let mut p = EnvSet::new();
        assert!(
            p.add_env_from(
                "ns",
                "s",
                "P_",
                [("1x", b"v".as_slice())],
                NameRule::Kubernetes
            )
            .is_none()
        );
        assert_eq!(p.vars()["P_1x"].as_slice(), b"v");
    }
}
