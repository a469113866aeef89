//! The authorization policy: a YAML file of rules, each granting verbs on Secrets in some
//! namespaces (and optionally only some names) to users and groups. Nothing is allowed that no
//! rule grants.
//!
//! ```yaml
//! rules:
//!   - users: [alice]                 # and/or
//!     groups: [admins]
//!     verbs: ["*"]                   # get, list, watch, create, update, delete, or "*"
//!     namespaces: ["*"]              # namespace names, or "*"
//!   - groups: [ci]
//!     verbs: [get]
//!     namespaces: [prod]
//!     resourceNames: [db-password]   # optional: only these names
//! ```
//!
//! Kubernetes semantics: `resourceNames` cannot restrict `create` (a rule with names never grants
//! it), and a `list` or `watch` is allowed by a rule with names only when the request selects
//! exactly one of them (`metadata.name=NAME` field selector). A list or watch of every namespace
//! needs a rule with namespace `*`.

use std::path::Path;

use serde::Deserialize;

use super::AuthConfigError;
use super::identity::Identity;
use super::verb::Verb;
use coffer_core::model::validation::validate_namespace;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleFile {
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    verbs: Vec<String>,
    namespaces: Vec<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

/// One rule, checked.
#[derive(Debug, Clone)]
struct Rule {
    users: Vec<String>,
    groups: Vec<String>,
    /// `None`: every verb (`*`).
    verbs: Option<Vec<Verb>>,
    /// `None`: every namespace (`*`).
    namespaces: Option<Vec<String>>,
    /// Empty: every name.
    names: Vec<String>,
}

/// A parsed policy. The default (no rule) denies everything.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        // Whoever can write the policy can grant themselves anything: no group/other write.
        let bytes = coffer_kms::hygiene::read_checked(
            path,
            "policy file",
            coffer_kms::hygiene::GROUP_OTHER_WRITE,
        )
        .map_err(AuthConfigError::new)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            AuthConfigError::new(format!("policy file {}: not UTF-8", path.display()))
        })?;
        Self::parse(text)
            .map_err(|e| AuthConfigError::new(format!("policy file {}: {e}", path.display())))
    }

    /// Parses a policy's YAML text; errors name the rule and the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile { rules: Vec::new() }
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| Rule::check(r).map_err(|e| format!("rules[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the policy has no rule (and so denies everything).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule lets `id` do `verb` in `namespace` (`""`: every namespace, for list and
    /// watch) on `name` (for list and watch: the one name the request selects, if any).
    pub fn allows(&self, id: &Identity, verb: Verb, namespace: &str, name: Option<&str>) -> bool {
        self.rules
            .iter()
            .any(|r| r.allows(id, verb, namespace, name))
    }
}

impl Rule {
    fn check(r: RuleFile) -> Result<Self, String> {
        if r.users.is_empty() && r.groups.is_empty() {
            return Err("users: a rule needs at least one user or group".into());
        }
        if r.users.iter().chain(&r.groups).any(|s| s.is_empty()) {
            return Err("users: empty user or group name".into());
        }
        if r.verbs.is_empty() {
            return Err("verbs: Required value".into());
        }
        let verbs = if r.verbs.iter().any(|v| v == "*") {
            None
        } else {
            Some(
                r.verbs
                    .iter()
                    .map(|v| v.parse::<Verb>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("verbs: {e}"))?,
            )
        };
        if r.namespaces.is_empty() {
            return Err("namespaces: Required value (a namespace, or \"*\")".into());
        }
        let namespaces = if r.namespaces.iter().any(|n| n == "*") {
            None
        } else {
            for n in &r.namespaces {
                validate_namespace(n).map_err(|e| format!("namespaces: {e}"))?;
            }
            Some(r.namespaces)
        };
        if r.resource_names.iter().any(|n| n.is_empty()) {
            return Err("resourceNames: empty name".into());
        }
        Ok(Self {
            users: r.users,
            groups: r.groups,
            verbs,
            namespaces,
            names: r.resource_names,
        })
    }

    fn allows(&self, id: &Identity, verb: Verb, namespace: &str, name: Option<&str>) -> bool {
        let subject = self.users.contains(&id.user) || self.groups.iter().any(|g| id.in_group(g));
        if !subject {
            return false;
        }
        if let Some(verbs) = &self.verbs
            && !verbs.contains(&verb)
        {
            return false;
        }
        match &self.namespaces {
            None => {}
            Some(_) if namespace.is_empty() => return false,
            Some(ns) if !ns.iter().any(|n| n == namespace) => return false,
            Some(_) => {}
        }
        if self.names.is_empty() {
            return true;
        }
        // resourceNames never restrict create; list and watch need an exact name.
        verb != Verb::Create && name.is_some_and(|n| self.names.iter().any(|x| x == n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::Method;

    fn id(user: &str, groups: &[&str]) -> Identity {
        Identity::authenticated(
            user,
            groups.iter().map(|g| (*g).to_owned()).collect(),
            Method::Token,
            None,
        )
    }

    const POLICY: &str = r#"
rules:
  - users: [root]
    verbs: ["*"]
    namespaces: ["*"]
  - groups: [readers]
    verbs: [get, list, watch]
    namespaces: [a, b]
  - users: [one]
    verbs: [get, list, watch, create, update]
    namespaces: [a]
    resourceNames: [x]
"#;

    #[test]
    fn rules() {
        let p = Policy::parse(POLICY).expect("parse");
        assert_eq!(p.len(), 3);
        let root = id("root", &[]);
        for v in Verb::ALL {
            assert!(p.allows(&root, v, "", None));
            assert!(p.allows(&root, v, "zz", Some("q")));
        }
        let r = id("someone", &["readers"]);
        assert!(p.allows(&r, Verb::Get, "a", Some("q")));
        assert!(p.allows(&r, Verb::List, "b", None));
        assert!(!p.allows(&r, Verb::List, "", None), "all namespaces need *");
        assert!(!p.allows(&r, Verb::List, "c", None));
        assert!(!p.allows(&r, Verb::Update, "a", Some("q")));
        let one = id("one", &[]);
        assert!(p.allows(&one, Verb::Get, "a", Some("x")));
        assert!(!p.allows(&one, Verb::Get, "a", Some("y")));
        assert!(
            !p.allows(&one, Verb::List, "a", None),
            "needs the exact name"
        );
        assert!(p.allows(&one, Verb::Watch, "a", Some("x")));
        assert!(
            !p.allows(&one, Verb::Create, "a", Some("x")),
            "names never grant create"
        );
        assert!(p.allows(&one, Verb::Update, "a", Some("x")));
        assert!(!p.allows(&id("nobody", &[]), Verb::Get, "a", Some("x")));
        assert!(!Policy::default().allows(&root, Verb::Get, "a", Some("x")));
    }

    #[test]
    fn errors_name_the_rule_and_field() {
        for (text, want) in [
            (
                "rules:\n  - verbs: [get]\n    namespaces: [a]\n",
                "rules[0].users",
            ),
            (
                "rules:\n  - users: [a]\n    verbs: [gett]\n    namespaces: [a]\n",
                "rules[0].verbs: unknown verb \"gett\"",
            ),
            (
                "rules:\n  - users: [a]\n    verbs: []\n    namespaces: [a]\n",
                "rules[0].verbs",
            ),
            (
                "rules:\n  - users: [a]\n    verbs: [get]\n    namespaces: []\n",
                "rules[0].namespaces",
            ),
            (
                "rules:\n  - users: [a]\n    verbs: [get]\n    namespaces: [A_B]\n",
                "rules[0].namespaces",
            ),
            (
                "rules:\n  - users: [a]\n    verbs: [get]\n    namespaces: [a]\n    resourceNames: [\"\"]\n",
                "rules[0].resourceNames",
            ),
            (
                "rules:\n  - users: [a]\n    verb: [get]\n    namespaces: [a]\n",
                "verb",
            ),
            ("rules: 7\n", "rules"),
        ] {
            let e = Policy::parse(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
        assert!(Policy::parse("").expect("empty").is_empty());
    }
}
