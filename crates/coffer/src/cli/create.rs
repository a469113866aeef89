//! `coffer create secret generic|tls|docker-registry`, with kubectl's semantics.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::error::CliError;
use coffer_core::model::validation::{
    DOCKER_CONFIG_JSON_KEY, SECRET_TYPE_DOCKER_CONFIG_JSON, SECRET_TYPE_TLS, TLS_CERT_KEY,
    TLS_PRIVATE_KEY_KEY,
};
use coffer_core::model::{Secret, SecretValue};

/// Adds one key, failing on a duplicate as kubectl does.
fn add_key(secret: &mut Secret, key: String, value: SecretValue) -> Result<(), CliError> {
    if secret.data.contains_key(&key) {
        return Err(CliError::msg(format_args!(
            "cannot add key {key:?}, another key by that name already exists in Data for Secret {:?}",
            secret.metadata.name
        )));
    }
    secret.data.insert(key, value);
    Ok(())
}

/// Reads a whole file (or stdin for `-`).
pub(crate) fn read_file(path: &str) -> Result<Zeroizing<Vec<u8>>, CliError> {
    if path == "-" {
        let mut buf = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| CliError::file("standard input", &e))?;
        return Ok(buf);
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| CliError::file(path, &e))
}

/// `--from-literal=KEY=VALUE`.
pub(crate) fn add_literal(secret: &mut Secret, source: &str) -> Result<(), CliError> {
    // The value is never echoed: it is the secret.
    let Some((key, value)) = source.split_once('=') else {
        return Err(CliError::msg(
            "invalid --from-literal: expected KEY=VALUE (the value was not shown)",
        ));
    };
    if key.is_empty() {
        return Err(CliError::msg(
            "invalid --from-literal: the key before '=' is empty",
        ));
    }
    add_key(secret, key.to_owned(), SecretValue::from(value))
}

/// `--from-file=[KEY=]PATH`; a directory adds each regular file in it under its own name.
pub(crate) fn add_from_file(secret: &mut Secret, source: &str) -> Result<(), CliError> {
    let (key, path) = parse_file_source(source)?;
    let meta = std::fs::metadata(&path).map_err(|e| CliError::file(&path, &e))?;
    if meta.is_dir() {
        if key.is_some() {
            return Err(CliError::msg(format_args!(
                "cannot give a key name for a directory path: {path}"
            )));
        }
        let mut entries: Vec<_> = std::fs::read_dir(&path)
            .map_err(|e| CliError::file(&path, &e))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let item = entry.path().to_string_lossy().into_owned();
            let bytes = read_file(&item)?;
            add_key(secret, name, SecretValue::from(bytes.as_slice()))?;
        }
        return Ok(());
    }
    let key = match key {
        Some(k) => k,
        None => Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| CliError::msg(format_args!("cannot take a key name from {path:?}")))?,
    };
    let bytes = read_file(&path)?;
    add_key(secret, key, SecretValue::from(bytes.as_slice()))
}

/// kubectl's `ParseFileSource`: `PATH` or `KEY=PATH`.
fn parse_file_source(source: &str) -> Result<(Option<String>, String), CliError> {
    match source.matches('=').count() {
        0 => Ok((None, source.to_owned())),
        1 => {
            let (k, p) = source.split_once('=').unwrap_or_default();
            if k.is_empty() {
                return Err(CliError::msg(format_args!(
                    "key name for file path {p} missing"
                )));
            }
            if p.is_empty() {
                return Err(CliError::msg(format_args!(
                    "file path for key name {k} missing"
                )));
            }
            Ok((Some(k.to_owned()), p.to_owned()))
        }
        _ => Err(CliError::msg("key names or file paths cannot contain '='")),
    }
}

/// `--from-env-file=PATH`.
pub(crate) fn add_from_env_file(secret: &mut Secret, path: &str) -> Result<(), CliError> {
    let bytes = read_file(path)?;
    for (key, value) in parse_env_file(&bytes, path, |k| std::env::var(k).ok())? {
        add_key(secret, key, SecretValue::from(value.as_bytes()))?;
    }
    Ok(())
}

/// Parses an env file as kubectl does: `KEY=VALUE` lines (the value is everything after the
/// first `=`, untouched), leading whitespace trimmed, blank lines and `#` comments skipped, a
/// UTF-8 BOM skipped on the first line, and a bare `KEY` taking its value from the environment.
pub(crate) fn parse_env_file(
    bytes: &[u8],
    path: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Zeroizing<String>)>, CliError> {
    let mut out = Vec::new();
    for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|_| {
            CliError::msg(format_args!(
                "env file {path} contains invalid utf8 bytes at line {}",
                n + 1
            ))
        })?;
        let line = if n == 0 {
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Zeroizing::new(v.to_owned())),
            None => (line, Zeroizing::new(env(line).unwrap_or_default())),
        };
        if !is_env_var_name(key) {
            return Err(CliError::msg(format_args!(
                "{key:?} is not a valid key name: a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit (line {} of {path})",
                n + 1
            )));
        }
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Kubernetes' `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || "-._".contains(c) => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// `--label KEY=VALUE` values into a map.
pub(crate) fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            return Err(CliError::msg(format_args!(
                "invalid label {l:?}: expected KEY=VALUE"
            )));
        };
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(CliError::msg(format_args!("label {k:?} given twice")));
        }
    }
    Ok(out)
}

/// `create secret tls`: reads both files, checks the pair, returns the `kubernetes.io/tls` data.
pub(crate) fn add_tls(
    secret: &mut Secret,
    cert_path: &str,
    key_path: &str,
) -> Result<(), CliError> {
    let cert = read_file(cert_path)?;
    let key = read_file(key_path)?;
    super::tls::check_key_pair(&cert, &key)
        .map_err(|e| CliError::msg(format_args!("{e} (--cert={cert_path}, --key={key_path})")))?;
    secret.type_ = SECRET_TYPE_TLS.to_owned();
    add_key(
        secret,
        TLS_CERT_KEY.to_owned(),
        SecretValue::from(cert.as_slice()),
    )?;
    add_key(
        secret,
        TLS_PRIVATE_KEY_KEY.to_owned(),
        SecretValue::from(key.as_slice()),
    )
}

/// `create secret docker-registry`: the `.dockerconfigjson` kubectl writes.
pub(crate) fn add_docker_config(
    secret: &mut Secret,
    server: &str,
    username: &str,
    password: &str,
    email: &str,
) -> Result<(), CliError> {
    let json = docker_config_json(server, username, password, email);
    secret.type_ = SECRET_TYPE_DOCKER_CONFIG_JSON.to_owned();
    add_key(
        secret,
        DOCKER_CONFIG_JSON_KEY.to_owned(),
        SecretValue::from(json.as_bytes()),
    )
}

/// `{"auths":{SERVER:{"username":U,"password":P,"email":E,"auth":base64("U:P")}}}`, byte for
/// byte as Go's `json.Marshal` writes kubectl's struct (empty fields omitted, HTML escaped).
pub(crate) fn docker_config_json(
    server: &str,
    username: &str,
    password: &str,
    email: &str,
) -> Zeroizing<String> {
    let auth = Zeroizing::new(STANDARD.encode(format!("{username}:{password}")));
    let mut out = Zeroizing::new(String::from("{\"auths\":{"));
    go_json_string(server, &mut out);
    out.push_str(":{");
    let mut first = true;
    for (name, value) in [
        ("username", username),
        ("password", password),
        ("email", email),
        ("auth", auth.as_str()),
    ] {
        if value.is_empty() {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        go_json_string(value, &mut out);
    }
    out.push_str("}}}");
    out
}

/// A JSON string as Go's `encoding/json` writes it (with `<`, `>`, `&`, U+2028, U+2029 escaped).
pub(crate) fn go_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env_file(text: &str) -> Result<Vec<(String, String)>, CliError> {
        parse_env_file(text.as_bytes(), "f.env", |k| {
            (k == "FROM_ENV").then(|| "env-value".to_owned())
        })
        .map(|v| v.into_iter().map(|(k, v)| (k, v.to_string())).collect())
    }

    #[test]
    fn env_file_like_kubectl() {
        let got = env_file(
            "\u{feff}# comment\n\nA=1\n  B=two words \nC=x=y\r\nD=\nFROM_ENV\nUNSET\n   # indented comment\n",
        )
        .unwrap();
        let want: Vec<(String, String)> = [
            ("A", "1"),
            ("B", "two words "),
            ("C", "x=y"),
            ("D", ""),
            ("FROM_ENV", "env-value"),
            ("UNSET", ""),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(got, want);
        // "B " has a space: not a valid key, as in kubectl.
        let e = env_file("B =x\n").unwrap_err().to_string();
        assert!(e.contains("\"B \" is not a valid key name"), "{e}");
        let e = env_file("1A=x\n").unwrap_err().to_string();
        assert!(e.contains("line 1 of f.env"), "{e}");
        let got = env_file("A=1\nC=x=y\r\nD=\nFROM_ENV\nUNSET\n").unwrap();
        assert_eq!(
            got,
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("C".into(), "x=y".into()),
                ("D".into(), "".into()),
                ("FROM_ENV".into(), "env-value".into()),
                ("UNSET".into(), "".into()),
            ]
        );
        let got = env_file("K= spaced value \n").unwrap();
        assert_eq!(got, vec![("K".to_owned(), " spaced value ".to_owned())]);
        let e = parse_env_file(b"A=\xff\n", "f", |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid utf8 bytes at line 1"), "{e}");
    }

    #[test]
    fn duplicate_keys_error_like_kubectl() {
        let mut s = Secret::new("default", "s");
        add_literal(&mut s, "a=1").unwrap();
        let e = add_literal(&mut s, "a=2").unwrap_err().to_string();
        assert_eq!(
            e,
            "error: cannot add key \"a\", another key by that name already exists in Data for Secret \"s\""
        );
    }

    #[test]
    fn literal_errors_do_not_echo_values() {
        let mut s = Secret::new("default", "s");
        let e = add_literal(&mut s, "novalue-topsecret")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("topsecret"), "{e}");
        add_literal(&mut s, "k=v=w").unwrap();
        assert_eq!(s.data["k"].expose(), b"v=w");
    }

    #[test]
    fn file_sources() {
        assert_eq!(parse_file_source("/a/b").unwrap(), (None, "/a/b".into()));
        assert_eq!(
            parse_file_source("k=/a/b").unwrap(),
            (Some("k".into()), "/a/b".into())
        );
        assert!(parse_file_source("=/a").is_err());
        assert!(parse_file_source("k=").is_err());
        assert!(parse_file_source("a=b=c").is_err());

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ssh-privatekey"), b"KEY").unwrap();
        std::fs::write(dir.path().join("other"), b"O").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut s = Secret::new("default", "s");
        add_from_file(&mut s, &dir.path().to_string_lossy()).unwrap();
        assert_eq!(s.data.len(), 2);
        let mut s = Secret::new("default", "s");
        let file = dir.path().join("other").to_string_lossy().into_owned();
        add_from_file(&mut s, &file).unwrap();
        add_from_file(&mut s, &format!("renamed={file}")).unwrap();
        assert_eq!(s.data["other"].expose(), b"O");
        assert_eq!(s.data["renamed"].expose(), b"O");
        let e = add_from_file(&mut s, "/definitely/missing")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "error: cannot read /definitely/missing: no such file or directory"
        );
    }

    #[test]
    fn docker_config_is_kubectls() {
        assert_eq!(
            docker_config_json("registry.example.com", "bob", "p@ss", "bob@example.com").as_str(),
            r#"{"auths":{"registry.example.com":{"username":"bob","password":"p@ss","email":"bob@example.com","auth":"Ym9iOnBAc3M="}}}"#
        );
        assert_eq!(
            docker_config_json("https://index.docker.io/v1/", "u", "a<b&\"", "").as_str(),
            r#"{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"a\u003cb\u0026\"","auth":"dTphPGImIg=="}}}"#
        );
    }

    #[test]
    fn labels() {
        let l = parse_labels(&["a=b".into(), "c=".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["c"], "");
        assert!(parse_labels(&["x".into()]).is_err());
        assert!(parse_labels(&["a=1".into(), "a=2".into()]).is_err());
    }
}
