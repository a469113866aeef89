//! The static bearer token file, in the Kubernetes format: one CSV line per token,
//! `token,user,uid,"group1,group2"` (uid and groups optional; `#` comments and blank lines are
//! skipped).
//!
//! Tokens are held only as SHA-256 hashes; a presented token is hashed and compared with every
//! entry in constant time (no early exit), so neither the tokens nor their number leak through
//! timing. The file's text is wiped once parsed.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::AuthConfigError;

/// The user a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    /// The user name.
    pub user: String,
    /// The uid column (informational).
    pub uid: String,
    /// The groups.
    pub groups: Vec<String>,
}

/// The tokens of a token file, hashed.
#[derive(Default)]
pub struct TokenTable {
    entries: Vec<([u8; 32], TokenUser)>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} tokens)", self.entries.len())
    }
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        // The file holds the tokens themselves: owner-only.
        let bytes = coffer_kms::hygiene::read_checked(
            path,
            "token file",
            coffer_kms::hygiene::GROUP_OTHER_ACCESS,
        )
        .map_err(AuthConfigError::new)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            AuthConfigError::new(format!("token file {}: not UTF-8", path.display()))
        })?;
        Self::parse(text)
            .map_err(|e| AuthConfigError::new(format!("token file {}: {e}", path.display())))
    }

    /// Parses the file's text. Errors name the line, never the token.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries: Vec<([u8; 32], TokenUser)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line).map_err(|e| format!("line {n}: {e}"))?;
            if fields.len() < 2 {
                return Err(format!(
                    "line {n}: expected token,user[,uid[,\"group1,group2\"]]"
                ));
            }
            if fields.len() > 4 {
                return Err(format!("line {n}: more than 4 columns"));
            }
            let token = fields[0].trim();
            let user = fields[1].trim();
            if token.is_empty() {
                return Err(format!("line {n}: empty token"));
            }
            if user.is_empty() {
                return Err(format!("line {n}: empty user"));
            }
            let hash = hash_token(token);
            if entries.iter().any(|(h, _)| *h == hash) {
                return Err(format!("line {n}: duplicate token"));
            }
            let uid = fields
                .get(2)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            entries.push((
                hash,
                TokenUser {
                    user: user.to_owned(),
                    uid,
                    groups,
                },
            ));
        }
        Ok(Self { entries })
    }

    /// The user of `token`, comparing its hash with every entry in constant time.
    pub fn lookup(&self, token: &str) -> Option<&TokenUser> {
        let hash = hash_token(token);
        let mut found = None;
        for (h, user) in &self.entries {
            if bool::from(h.ct_eq(&hash)) {
                found = Some(user);
            }
        }
        found
    }

    /// How many tokens the file has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file has no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote). The buffers hold token
/// text, so they are wiped.
fn split_csv(line: &str) -> Result<Vec<Zeroizing<String>>, String> {
    let mut fields = Vec::new();
    let mut cur = Zeroizing::new(String::new());
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() && !was_quoted => {
                cur.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("a quote inside an unquoted field".into()),
            (false, ',') => {
                fields.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    fields.push(cur);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kubernetes_format() {
        let t = TokenTable::parse(
            "# comment\n\nt1,alice,1001,\"dev,ops\"\nt2,bob,1002\nt3,carol\nt4,\"d,ave\",5,admins\n",
        )
        .expect("parse");
        assert_eq!(t.len(), 4);
        let a = t.lookup("t1").expect("t1");
        assert_eq!(a.user, "alice");
        assert_eq!(a.uid, "1001");
        assert_eq!(a.groups, ["dev", "ops"]);
        assert!(t.lookup("t2").is_some_and(|u| u.groups.is_empty()));
        assert_eq!(t.lookup("t4").map(|u| u.user.as_str()), Some("d,ave"));
        assert_eq!(
            t.lookup("t4").map(|u| u.groups.clone()),
            Some(vec!["admins".into()])
        );
        assert!(t.lookup("t5").is_none());
        assert!(t.lookup("").is_none());
    }

    #[test]
    fn errors_name_the_line_not_the_token() {
        for (text, want) in [
            ("secret-token\n", "line 1: expected"),
            (
                "secret-token,a\nsecret-token,b\n",
                "line 2: duplicate token",
            ),
            (",a\n", "line 1: empty token"),
            ("secret-token,\n", "line 1: empty user"),
            ("secret-token,a,1,\"g\n", "line 1: unterminated quote"),
            ("secret-token,a,1,g,x\n", "line 1: more than 4 columns"),
        ] {
            let e = TokenTable::parse(text).expect_err(text);
            assert!(e.starts_with(want), "{e}");
            assert!(!e.contains("secret-token"), "{e}");
        }
        let dbg = format!("{:?}", TokenTable::parse("secret-token,a").expect("ok"));
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
