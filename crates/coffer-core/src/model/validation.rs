//! Kubernetes validation rules for Secrets.
//!
//! The rules and the messages are those of the Kubernetes API server (`ValidateSecret`,
//! `ValidateSecretUpdate`, `ValidateObjectMeta` and the helpers of
//! `k8s.io/apimachinery/pkg/util/validation`), so that a client sees the same rejection from
//! Coffer as from Kubernetes: every error names the field and the rule, e.g.
//! `data[a*b]: Invalid value: "a*b": a valid key must consist of alphanumeric characters, '-', '_' or '.'`.
//!
//! All errors are collected (validation never stops at the first one) in a deterministic order:
//! metadata (name, namespace, labels, annotations), then data keys and size, then the type's own
//! rules; for updates the update rules come first, as in Kubernetes.
//!
//! Data values are plaintext: they never appear in an error message. Where Kubernetes reports a
//! value that is derived from data (a malformed `.dockercfg`), the value is printed as
//! `<secret contents redacted>`. Annotation values are never echoed either.

use std::fmt;

use super::{Secret, SecretValue};

/// The largest total size of a Secret's data values, in bytes (keys do not count).
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// The largest total size of all annotation keys plus values, in bytes.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

/// The longest DNS-1123 subdomain (Secret names, data keys, label key prefixes).
pub const DNS1123_SUBDOMAIN_MAX_LENGTH: usize = 253;

/// The longest DNS-1123 label (namespaces).
pub const DNS1123_LABEL_MAX_LENGTH: usize = 63;

/// The longest name part of a qualified name (label and annotation keys).
pub const QUALIFIED_NAME_MAX_LENGTH: usize = 63;

/// The longest label value.
pub const LABEL_VALUE_MAX_LENGTH: usize = 63;

/// The type of a Secret with arbitrary user data (the default type).
pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
/// A service account token; needs the annotation [`SERVICE_ACCOUNT_NAME_KEY`].
pub const SECRET_TYPE_SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";
/// A legacy `~/.dockercfg`; needs the data key [`DOCKER_CONFIG_KEY`] holding a JSON object.
pub const SECRET_TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
/// A `~/.docker/config.json`; needs the data key [`DOCKER_CONFIG_JSON_KEY`] holding a JSON object.
pub const SECRET_TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// Basic authentication; needs [`BASIC_AUTH_USERNAME_KEY`] or [`BASIC_AUTH_PASSWORD_KEY`].
pub const SECRET_TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
/// SSH authentication; needs a non-empty [`SSH_AUTH_PRIVATE_KEY`].
pub const SECRET_TYPE_SSH_AUTH: &str = "kubernetes.io/ssh-auth";
/// A TLS key pair; needs [`TLS_CERT_KEY`] and [`TLS_PRIVATE_KEY_KEY`] (possibly empty).
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
/// A bootstrap token; stored without type checks, as Kubernetes does.
pub const SECRET_TYPE_BOOTSTRAP_TOKEN: &str = "bootstrap.kubernetes.io/token";

/// The annotation a service-account-token Secret must carry.
pub const SERVICE_ACCOUNT_NAME_KEY: &str = "kubernetes.io/service-account.name";
/// The data key of a `kubernetes.io/dockercfg` Secret.
pub const DOCKER_CONFIG_KEY: &str = ".dockercfg";
/// The data key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// The username key of a `kubernetes.io/basic-auth` Secret.
pub const BASIC_AUTH_USERNAME_KEY: &str = "username";
/// The password key of a `kubernetes.io/basic-auth` Secret.
pub const BASIC_AUTH_PASSWORD_KEY: &str = "password";
/// The private key of a `kubernetes.io/ssh-auth` Secret.
pub const SSH_AUTH_PRIVATE_KEY: &str = "ssh-privatekey";
/// The certificate key of a `kubernetes.io/tls` Secret.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The private key of a `kubernetes.io/tls` Secret.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// The value printed in place of anything derived from a Secret's data.
pub const REDACTED_VALUE: &str = "<secret contents redacted>";

/// The detail of an update that changes a field that can never change.
pub const FIELD_IMMUTABLE_MSG: &str = "field is immutable";

const IMMUTABLE_SET_MSG: &str = "field is immutable when `immutable` is set";

/// Echoed values longer than this (in bytes) are cut in messages, so that one absurd input
/// cannot produce an absurd error message.
const MAX_ECHOED_VALUE: usize = 1024;

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_ERR_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const SECRET_KEY_ERR_MSG: &str =
    "a valid key must consist of alphanumeric characters, '-', '_' or '.'";

/// One validation failure: the field it concerns and what is wrong with it.
///
/// `Display` prints it as the Kubernetes API server does, e.g.
/// `metadata.name: Invalid value: "A": a lowercase RFC 1123 subdomain must ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `metadata.name` or `data[tls.crt]`.
    pub field: String,
    /// What is wrong.
    pub kind: FieldErrorKind,
}

/// The kinds of validation failure (the Kubernetes `field.ErrorType`s that Secrets use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The value is malformed: `<field>: Invalid value: "<value>": <detail>`.
    Invalid {
        /// The offending value as given (never plaintext data).
        value: String,
        /// The rule it breaks.
        detail: String,
    },
    /// A required value is missing: `<field>: Required value[: <detail>]`.
    Required {
        /// Extra explanation; may be empty.
        detail: String,
    },
    /// The value is too long: `<field>: Too long: may not be more than <max> bytes`.
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The change is not allowed: `<field>: Forbidden: <detail>`.
    Forbidden {
        /// The rule it breaks.
        detail: String,
    },
}

impl FieldError {
    /// An `Invalid value` error.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value: value.into(),
                detail: detail.into(),
            },
        }
    }

    /// A `Required value` error.
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Required {
                detail: detail.into(),
            },
        }
    }

    /// A `Too long` error.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::TooLong { max },
        }
    }

    /// A `Forbidden` error.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            kind: FieldErrorKind::Forbidden {
                detail: detail.into(),
            },
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field)?;
        let detail = match &self.kind {
            FieldErrorKind::Invalid { value, detail } => {
                f.write_str("Invalid value: ")?;
                write_go_quoted(f, value)?;
                detail.as_str()
            }
            FieldErrorKind::Required { detail } => {
                f.write_str("Required value")?;
                detail.as_str()
            }
            FieldErrorKind::Forbidden { detail } => {
                f.write_str("Forbidden")?;
                detail.as_str()
            }
            FieldErrorKind::TooLong { max } => {
                let unit = if *max == 1 { "byte" } else { "bytes" };
                return write!(f, "Too long: may not be more than {max} {unit}");
            }
        };
        if !detail.is_empty() {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Writes `s` quoted as Go's `%q` does (the Kubernetes format of an invalid value), cut after
/// [`MAX_ECHOED_VALUE`] bytes.
fn write_go_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    let (shown, cut) = if s.len() > MAX_ECHOED_VALUE {
        let mut end = MAX_ECHOED_VALUE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        (&s[..end], true)
    } else {
        (s, false)
    };
    f.write_str("\"")?;
    for c in shown.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\u{7}' => f.write_str("\\a")?,
            '\u{8}' => f.write_str("\\b")?,
            '\u{c}' => f.write_str("\\f")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            '\u{b}' => f.write_str("\\v")?,
            c if (c as u32) < 0x80 && c.is_control() => write!(f, "\\x{:02x}", c as u32)?,
            c if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")?;
    if cut {
        write!(f, "...(truncated, {} bytes in all)", s.len())?;
    }
    Ok(())
}

/// All the validation failures of one object; never empty when returned as an error.
///
/// `Display` joins the errors with `", "` (a single error prints alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The individual errors, in the order they were found.
    pub fn errors(&self) -> &[FieldError] {
        &self.0
    }

    /// Whether there are no errors (never the case for a returned `Err`).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn into_result(errs: Vec<FieldError>) -> Result<(), Self> {
        if errs.is_empty() {
            Ok(())
        } else {
            Err(Self(errs))
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

// ---------------------------------------------------------------------------------------------
// Public entry points
// ---------------------------------------------------------------------------------------------

/// Validates a Secret for create.
///
/// Assumes `string_data` has already been merged into `data` ([`Secret::merge_string_data`]) and
/// defaults applied ([`Secret::apply_defaults`]): an empty type is an error here.
pub fn validate_secret(s: &Secret) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    secret_errors(s, &mut errs);
    ValidationErrors::into_result(errs)
}

/// Validates an update of `old` (the stored object) to `new`: the update rules (name, namespace
/// and type never change; once `old` is immutable its data cannot change and `immutable` cannot
/// be unset), then everything [`validate_secret`] checks on `new`.
pub fn validate_update(old: &Secret, new: &Secret) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    immutable_field(
        &new.metadata.name,
        &old.metadata.name,
        "metadata.name",
        &mut errs,
    );
    immutable_field(
        &new.metadata.namespace,
        &old.metadata.namespace,
        "metadata.namespace",
        &mut errs,
    );
    immutable_field(&new.type_, &old.type_, "type", &mut errs);
    if old.immutable {
        if !new.immutable {
            errs.push(FieldError::forbidden("immutable", IMMUTABLE_SET_MSG));
        }
        if new.data != old.data {
            errs.push(FieldError::forbidden("data", IMMUTABLE_SET_MSG));
        }
    }
    secret_errors(new, &mut errs);
    ValidationErrors::into_result(errs)
}

/// Validates a namespace (a DNS-1123 label, required); errors name `metadata.namespace`.
pub fn validate_namespace(ns: &str) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    namespace_errors(ns, &mut errs);
    ValidationErrors::into_result(errs)
}

/// Validates a Secret name (a DNS-1123 subdomain, required); errors name `metadata.name`.
pub fn validate_name(name: &str) -> Result<(), ValidationErrors> {
    let mut errs = Vec::new();
    name_errors(name, &mut errs);
    ValidationErrors::into_result(errs)
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

fn immutable_field(new: &str, old: &str, field: &str, errs: &mut Vec<FieldError>) {
    if new != old {
        errs.push(FieldError::invalid(field, new, FIELD_IMMUTABLE_MSG));
    }
}

fn name_errors(name: &str, errs: &mut Vec<FieldError>) {
    const FIELD: &str = "metadata.name";
    if name.is_empty() {
        errs.push(FieldError::required(FIELD, "name is required"));
        return;
    }
    for msg in is_dns1123_subdomain(name) {
        errs.push(FieldError::invalid(FIELD, name, msg));
    }
}

fn namespace_errors(ns: &str, errs: &mut Vec<FieldError>) {
    const FIELD: &str = "metadata.namespace";
    if ns.is_empty() {
        errs.push(FieldError::required(FIELD, ""));
        return;
    }
    for msg in is_dns1123_label(ns) {
        errs.push(FieldError::invalid(FIELD, ns, msg));
    }
}

fn secret_errors(s: &Secret, errs: &mut Vec<FieldError>) {
    let meta = &s.metadata;
    name_errors(&meta.name, errs);
    namespace_errors(&meta.namespace, errs);

    for (k, v) in &meta.labels {
        let msgs = is_qualified_name(k);
        for msg in msgs {
            errs.push(FieldError::invalid("metadata.labels", k.as_str(), msg));
        }
        for msg in is_valid_label_value(v) {
            errs.push(FieldError::invalid("metadata.labels", v.as_str(), msg));
        }
    }

    let mut annotations_size = 0usize;
    for (k, v) in &meta.annotations {
        // As Kubernetes: a qualified name, except that case does not matter. Values are free-form
        // and are never echoed.
        for msg in is_qualified_name(&k.to_lowercase()) {
            errs.push(FieldError::invalid("metadata.annotations", k.as_str(), msg));
        }
        annotations_size = annotations_size.saturating_add(k.len().saturating_add(v.len()));
    }
    if annotations_size > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(FieldError::too_long(
            "metadata.annotations",
            TOTAL_ANNOTATION_SIZE_LIMIT,
        ));
    }

    let mut total = 0usize;
    for (key, value) in &s.data {
        for msg in is_secret_key(key) {
            errs.push(FieldError::invalid(data_field(key), key.as_str(), msg));
        }
        total = total.saturating_add(value.len());
    }
    if total > MAX_SECRET_SIZE {
        errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
    }

    type_errors(s, errs);
}

fn data_field(key: &str) -> String {
    format!("data[{key}]")
}

fn type_errors(s: &Secret, errs: &mut Vec<FieldError>) {
    let data = &s.data;
    match s.type_.as_str() {
        "" => errs.push(FieldError::required("type", "")),
        SECRET_TYPE_SERVICE_ACCOUNT_TOKEN => {
            let present = s
                .metadata
                .annotations
                .get(SERVICE_ACCOUNT_NAME_KEY)
                .is_some_and(|v| !v.is_empty());
            if !present {
                errs.push(FieldError::required(
                    format!("metadata.annotations[{SERVICE_ACCOUNT_NAME_KEY}]"),
                    "",
                ));
            }
        }
        SECRET_TYPE_DOCKERCFG => {
            docker_config_errors(data.get(DOCKER_CONFIG_KEY), DOCKER_CONFIG_KEY, errs)
        }
        SECRET_TYPE_DOCKER_CONFIG_JSON => docker_config_errors(
            data.get(DOCKER_CONFIG_JSON_KEY),
            DOCKER_CONFIG_JSON_KEY,
            errs,
        ),
        SECRET_TYPE_BASIC_AUTH => {
            // Either may be empty, but one of them must be present.
            let present = data.contains_key(BASIC_AUTH_USERNAME_KEY)
                || data.contains_key(BASIC_AUTH_PASSWORD_KEY);
            if !present {
                errs.push(FieldError::required(
                    data_field(BASIC_AUTH_USERNAME_KEY),
                    "",
                ));
                errs.push(FieldError::required(
                    data_field(BASIC_AUTH_PASSWORD_KEY),
                    "",
                ));
            }
        }
        SECRET_TYPE_SSH_AUTH => {
            // Unlike the other types, the key must also be non-empty.
            let key = data.get(SSH_AUTH_PRIVATE_KEY);
            if key.is_none_or(SecretValue::is_empty) {
                errs.push(FieldError::required(data_field(SSH_AUTH_PRIVATE_KEY), ""));
            }
        }
        SECRET_TYPE_TLS => {
            // Present is enough: empty values pass, as in Kubernetes.
            for key in [TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY] {
                if !data.contains_key(key) {
                    errs.push(FieldError::required(data_field(key), ""));
                }
            }
        }
        // Opaque, bootstrap tokens and any other type: no type-specific checks.
        _ => {}
    }
}

fn docker_config_errors(value: Option<&SecretValue>, key: &str, errs: &mut Vec<FieldError>) {
    match value {
        None => errs.push(FieldError::required(data_field(key), "")),
        Some(v) => {
            if !is_json_object(v.expose()) {
                errs.push(FieldError::invalid(
                    data_field(key),
                    REDACTED_VALUE,
                    "must be a valid JSON object",
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// String rules (k8s.io/apimachinery/pkg/util/validation); each returns the list of messages
// ---------------------------------------------------------------------------------------------

/// `must be no more than <n> characters`.
fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// Kubernetes' `RegexError`: the message, examples and the regex.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = String::from(msg);
    if examples.is_empty() {
        out.push_str(" (regex used for validation is '");
    } else {
        out.push_str(" (e.g. ");
        for (i, e) in examples.iter().enumerate() {
            if i > 0 {
                out.push_str(" or ");
            }
            out.push('\'');
            out.push_str(e);
            out.push_str("', ");
        }
        out.push_str("regex used for validation is '");
    }
    out.push_str(fmt);
    out.push_str("')");
    out
}

/// Whether `s` matches `[a-z0-9]([-a-z0-9]*[a-z0-9])?`.
fn is_dns1123_label_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && b.iter().all(|&c| alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// Whether `s` matches `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])` (non-empty).
fn is_qualified_name_syntax(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// Checks a DNS-1123 label (namespaces): the Kubernetes messages, empty when valid.
pub fn is_dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_LABEL_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_LABEL_MAX_LENGTH));
    }
    if !is_dns1123_label_syntax(value) {
        errs.push(regex_error(
            DNS1123_LABEL_ERR_MSG,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    errs
}

/// Checks a DNS-1123 subdomain (Secret names): the Kubernetes messages, empty when valid.
pub fn is_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if !value.split('.').all(is_dns1123_label_syntax) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_ERR_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

/// Checks a qualified name (label and annotation keys): an optional DNS-1123 subdomain prefix
/// and `/`, then a name of at most 63 characters. The Kubernetes messages, empty when valid.
pub fn is_qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                for msg in is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > QUALIFIED_NAME_MAX_LENGTH {
        errs.push(format!(
            "name part {}",
            max_len_error(QUALIFIED_NAME_MAX_LENGTH)
        ));
    }
    if !is_qualified_name_syntax(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// Checks a label value: empty, or at most 63 characters of the qualified-name pattern. The
/// Kubernetes messages, empty when valid.
pub fn is_valid_label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX_LENGTH {
        errs.push(max_len_error(LABEL_VALUE_MAX_LENGTH));
    }
    if !value.is_empty() && !is_qualified_name_syntax(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Checks a data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..` and not
/// starting with `..`. The messages, empty when valid.
pub fn is_secret_key(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX_LENGTH {
        errs.push(max_len_error(DNS1123_SUBDOMAIN_MAX_LENGTH));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
    {
        errs.push(SECRET_KEY_ERR_MSG.to_owned());
    }
    if value == "." {
        errs.push("must not be '.'".to_owned());
    } else if value == ".." {
        errs.push("must not be '..'".to_owned());
    } else if value.starts_with("..") {
        errs.push("must not start with '..'".to_owned());
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// JSON object check
// ---------------------------------------------------------------------------------------------

/// Go's `encoding/json` nesting limit.
const MAX_JSON_DEPTH: usize = 10_000;

/// Whether `b` is one syntactically valid JSON document (RFC 8259) whose top level is an object.
///
/// A hand-written, non-recursive syntax check rather than a parse: the bytes are plaintext, and
/// a parser would copy strings out of them into buffers that are not wiped. Like Go's
/// `encoding/json` (which Kubernetes uses), it does not insist on valid UTF-8 inside strings.
fn is_json_object(b: &[u8]) -> bool {
    let mut p = JsonCheck { b, i: 0 };
    p.ws();
    if p.peek() != Some(b'{') {
        return false;
    }
    if !p.value() {
        return false;
    }
    p.ws();
    p.i == b.len()
}

#[derive(Clone, Copy)]
enum JsonContainer {
    Object,
    Array,
}

struct JsonCheck<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonCheck<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    /// A string, starting at its opening quote.
    fn string(&mut self) -> bool {
        if !self.eat(b'"') {
            return false;
        }
        loop {
            let Some(c) = self.peek() else { return false };
            self.i += 1;
            match c {
                b'"' => return true,
                b'\\' => {
                    let Some(e) = self.peek() else { return false };
                    self.i += 1;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            for _ in 0..4 {
                                if !matches!(self.peek(), Some(h) if h.is_ascii_hexdigit()) {
                                    return false;
                                }
                                self.i += 1;
                            }
                        }
                        _ => return false,
                    }
                }
                0x00..=0x1f => return false,
                _ => {}
            }
        }
    }

    /// `"key" :` inside an object.
    fn member_key(&mut self) -> bool {
        self.ws();
        if !self.string() {
            return false;
        }
        self.ws();
        self.eat(b':')
    }

    /// One value, containers included, without recursion.
    fn value(&mut self) -> bool {
        let mut stack: Vec<JsonContainer> = Vec::new();
        loop {
            // A value starts here.
            self.ws();
            let ok = match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b'}') {
                        stack.push(JsonContainer::Object);
                        if stack.len() > MAX_JSON_DEPTH || !self.member_key() {
                            return false;
                        }
                        continue;
                    }
                    true
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b']') {
                        stack.push(JsonContainer::Array);
                        if stack.len() > MAX_JSON_DEPTH {
                            return false;
                        }
                        continue;
                    }
                    true
                }
                Some(b'"') => self.string(),
                Some(b't') => self.literal(b"true"),
                Some(b'f') => self.literal(b"false"),
                Some(b'n') => self.literal(b"null"),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => false,
            };
            if !ok {
                return false;
            }
            // After a value: close containers until one continues with a comma.
            loop {
                let Some(&top) = stack.last() else {
                    return true;
                };
                self.ws();
                match (top, self.peek()) {
                    (JsonContainer::Object, Some(b',')) => {
                        self.i += 1;
                        if !self.member_key() {
                            return false;
                        }
                        break;
                    }
                    (JsonContainer::Array, Some(b',')) => {
                        self.i += 1;
                        break;
                    }
                    (JsonContainer::Object, Some(b'}')) | (JsonContainer::Array, Some(b']')) => {
                        self.i += 1;
                        stack.pop();
                    }
                    _ => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBDOMAIN_DETAIL: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
    const LABEL_DETAIL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

    fn ok_secret() -> Secret {
        let mut s = Secret::new("default", "my-secret").with_data("key", "value");
        s.apply_defaults();
        s
    }

    fn typed(t: &str) -> Secret {
        let mut s = Secret::new("default", "s").with_type(t);
        s.apply_defaults();
        s
    }

    fn messages(r: Result<(), ValidationErrors>) -> Vec<String> {
        match r {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn err_string(r: Result<(), ValidationErrors>) -> String {
        match r {
            Ok(()) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn valid_secret_passes() {
        assert_eq!(validate_secret(&ok_secret()), Ok(()));
        let mut s = ok_secret();
        s.data.clear();
        assert_eq!(validate_secret(&s), Ok(()), "no data at all is fine");
    }

    #[test]
    fn display_formats() {
        assert_eq!(
            FieldError::invalid("f", "v\"x", "bad").to_string(),
            "f: Invalid value: \"v\\\"x\": bad"
        );
        assert_eq!(
            FieldError::required("f", "").to_string(),
            "f: Required value"
        );
        assert_eq!(
            FieldError::required("f", "why").to_string(),
            "f: Required value: why"
        );
        assert_eq!(
            FieldError::forbidden("f", "no").to_string(),
            "f: Forbidden: no"
        );
        assert_eq!(
            FieldError::too_long("data", 1048576).to_string(),
            "data: Too long: may not be more than 1048576 bytes"
        );
        let one = ValidationErrors(vec![FieldError::required("a", "")]);
        assert_eq!(one.to_string(), "a: Required value");
        let two = ValidationErrors(vec![
            FieldError::required("a", ""),
            FieldError::forbidden("b", "x"),
        ]);
        assert_eq!(two.to_string(), "a: Required value, b: Forbidden: x");
        let boxed: Box<dyn std::error::Error> = Box::new(two);
        assert!(boxed.to_string().contains("b: Forbidden"));
    }

    #[test]
    fn control_characters_are_quoted_and_long_values_cut() {
        let e = FieldError::invalid("f", "a\nb\u{1}", "d");
        assert_eq!(e.to_string(), "f: Invalid value: \"a\\nb\\x01\": d");
        let long = "é".repeat(2000);
        let msg = FieldError::invalid("f", long.as_str(), "d").to_string();
        assert!(msg.len() < 1200, "{}", msg.len());
        assert!(msg.contains("truncated, 4000 bytes in all"));
    }

    #[test]
    fn name_rules() {
        assert_eq!(validate_name(&"a".repeat(253)), Ok(()));
        assert_eq!(validate_name("a.b-c.0"), Ok(()));
        let long = "a".repeat(254);
        assert_eq!(
            messages(validate_name(&long)),
            vec![format!(
                "metadata.name: Invalid value: \"{long}\": must be no more than 253 characters"
            )]
        );
        assert_eq!(
            messages(validate_name("My_Name")),
            vec![format!(
                "metadata.name: Invalid value: \"My_Name\": {SUBDOMAIN_DETAIL}"
            )]
        );
        for bad in ["-a", "a-", "a..b", ".a", "a.", "a/b", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            messages(validate_name("")),
            vec!["metadata.name: Required value: name is required"]
        );
    }

    #[test]
    fn namespace_rules() {
        assert_eq!(validate_namespace(&"a".repeat(63)), Ok(()));
        assert_eq!(validate_namespace("123-abc"), Ok(()));
        let long = "a".repeat(64);
        assert_eq!(
            messages(validate_namespace(&long)),
            vec![format!(
                "metadata.namespace: Invalid value: \"{long}\": must be no more than 63 characters"
            )]
        );
        assert_eq!(
            messages(validate_namespace("a.b")),
            vec![format!(
                "metadata.namespace: Invalid value: \"a.b\": {LABEL_DETAIL}"
            )]
        );
        for bad in ["-a", "a-", "A", "a_b", "a/b"] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
        assert_eq!(
            messages(validate_namespace("")),
            vec!["metadata.namespace: Required value"]
        );
        // Through validate_secret as well.
        let mut s = ok_secret();
        s.metadata.namespace = "Bad".into();
        assert!(
            err_string(validate_secret(&s))
                .starts_with("metadata.namespace: Invalid value: \"Bad\"")
        );
    }

    #[test]
    fn data_key_rules() {
        for good in [
            ".key", "key", "a.b", "_x", "-", "A-Z_0.9", "a..b", "key.", ".a.b",
        ] {
            let s = ok_secret().with_data(good, "v");
            assert_eq!(validate_secret(&s), Ok(()), "{good}");
        }
        let s = ok_secret().with_data("a*b", "v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "data[a*b]: Invalid value: \"a*b\": a valid key must consist of alphanumeric characters, '-', '_' or '.'"
        );
        let s = ok_secret().with_data(".", "v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "data[.]: Invalid value: \".\": must not be '.'"
        );
        let s = ok_secret().with_data("..", "v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "data[..]: Invalid value: \"..\": must not be '..'"
        );
        let s = ok_secret().with_data("..a", "v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "data[..a]: Invalid value: \"..a\": must not start with '..'"
        );
        let s = ok_secret().with_data("", "v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "data[]: Invalid value: \"\": a valid key must consist of alphanumeric characters, '-', '_' or '.'"
        );
        let k253 = "k".repeat(253);
        assert_eq!(validate_secret(&ok_secret().with_data(&k253, "v")), Ok(()));
        let k254 = "k".repeat(254);
        assert_eq!(
            err_string(validate_secret(&ok_secret().with_data(&k254, "v"))),
            format!("data[{k254}]: Invalid value: \"{k254}\": must be no more than 253 characters")
        );
        for bad in ["a/b", "a b", "ключ", "a:b"] {
            assert!(
                validate_secret(&ok_secret().with_data(bad, "v")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn data_size_boundary() {
        let mut s = ok_secret();
        s.data.clear();
        let s = s
            .with_data("a", vec![0u8; 1024 * 1024 - 10])
            .with_data("b", vec![1u8; 10]);
        assert_eq!(s.data_size(), 1048576);
        assert_eq!(validate_secret(&s), Ok(()), "exactly 1 MiB passes");
        let s = s.with_data("c", [2u8]);
        assert_eq!(
            err_string(validate_secret(&s)),
            "data: Too long: may not be more than 1048576 bytes"
        );
        // Keys do not count.
        let mut s = ok_secret();
        s.data.clear();
        let s = s.with_data("k".repeat(253), vec![0u8; 1048576]);
        assert_eq!(validate_secret(&s), Ok(()));
    }

    #[test]
    fn label_rules() {
        let s = ok_secret()
            .with_label("app", "web")
            .with_label("example.com/tier", "")
            .with_label("a", "A-b_c.9")
            .with_label("k".repeat(63), "v".repeat(63))
            .with_label(format!("{}/x", "p".repeat(253)), "v");
        assert_eq!(validate_secret(&s), Ok(()));

        let s = ok_secret().with_label("k".repeat(64), "v");
        let m = err_string(validate_secret(&s));
        assert!(m.starts_with("metadata.labels: Invalid value: \""), "{m}");
        assert!(
            m.ends_with("name part must be no more than 63 characters"),
            "{m}"
        );

        let s = ok_secret().with_label("k", "v".repeat(64));
        assert!(err_string(validate_secret(&s)).ends_with(": must be no more than 63 characters"));

        let s = ok_secret().with_label("k", "-v");
        assert_eq!(
            err_string(validate_secret(&s)),
            "metadata.labels: Invalid value: \"-v\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );

        let s = ok_secret().with_label("Example.com/x", "v");
        assert!(
            err_string(validate_secret(&s)).contains("prefix part a lowercase RFC 1123 subdomain")
        );
        let s = ok_secret().with_label("/x", "v");
        assert!(err_string(validate_secret(&s)).ends_with("prefix part must be non-empty"));
        let s = ok_secret().with_label("a/", "v");
        assert!(err_string(validate_secret(&s)).contains("name part must be non-empty"));
        let s = ok_secret().with_label("a/b/c", "v");
        assert!(err_string(validate_secret(&s)).contains("a qualified name must consist of"));
        let s = ok_secret().with_label("", "v");
        assert!(validate_secret(&s).is_err());
    }

    #[test]
    fn annotation_rules() {
        let mut s = ok_secret();
        s.metadata
            .annotations
            .insert("Example.COM/Key".into(), "anything at all: {}\n".into());
        assert_eq!(
            validate_secret(&s),
            Ok(()),
            "case does not matter in annotation keys"
        );

        let mut s = ok_secret();
        s.metadata
            .annotations
            .insert("bad key".into(), "annotation-value-canary".into());
        let m = err_string(validate_secret(&s));
        assert!(
            m.starts_with("metadata.annotations: Invalid value: \"bad key\": name part"),
            "{m}"
        );
        assert!(!m.contains("annotation-value-canary"));

        // Size boundary: keys plus values, 262144 in all.
        let mut s = ok_secret();
        s.metadata
            .annotations
            .insert("k".into(), "v".repeat(262143));
        assert_eq!(validate_secret(&s), Ok(()));
        s.metadata.annotations.insert("k2".into(), String::new());
        let m = err_string(validate_secret(&s));
        assert_eq!(
            m,
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }

    #[test]
    fn empty_type_is_required() {
        let s = Secret::new("default", "s");
        assert_eq!(err_string(validate_secret(&s)), "type: Required value");
    }

    #[test]
    fn service_account_token() {
        let s = typed(SECRET_TYPE_SERVICE_ACCOUNT_TOKEN);
        assert_eq!(
            err_string(validate_secret(&s)),
            "metadata.annotations[kubernetes.io/service-account.name]: Required value"
        );
        let mut s = typed(SECRET_TYPE_SERVICE_ACCOUNT_TOKEN);
        s.metadata
            .annotations
            .insert(SERVICE_ACCOUNT_NAME_KEY.into(), String::new());
        assert!(validate_secret(&s).is_err(), "empty name is missing");
        s.metadata
            .annotations
            .insert(SERVICE_ACCOUNT_NAME_KEY.into(), "default".into());
        assert_eq!(validate_secret(&s), Ok(()));
    }

    #[test]
    fn dockercfg_and_dockerconfigjson() {
        for (t, key) in [
            (SECRET_TYPE_DOCKERCFG, DOCKER_CONFIG_KEY),
            (SECRET_TYPE_DOCKER_CONFIG_JSON, DOCKER_CONFIG_JSON_KEY),
        ] {
            assert_eq!(
                err_string(validate_secret(&typed(t))),
                format!("data[{key}]: Required value")
            );
            for good in [
                "{}",
                " { } \n",
                r#"{"auths":{"r.io":{"auth":"dTpw","n":[1,-2.5e+3,true,false,null,"\u00e9\n"]}}}"#,
            ] {
                assert_eq!(
                    validate_secret(&typed(t).with_data(key, good)),
                    Ok(()),
                    "{t} {good}"
                );
            }
            for bad in [
                "[]",
                "null",
                "\"s\"",
                "1",
                "",
                "{",
                "{}}",
                "{} x",
                "{\"a\"}",
                "{\"a\":}",
                "{\"a\":1,}",
                "{a:1}",
                "{\"a\":01}",
                "{\"a\":1.}",
                "{\"a\":\"\\x\"}",
                "{\"a\":\"\n\"}",
                "{\"a\":[1,]}",
                "{\"a\":tru}",
                "not json",
            ] {
                let m = err_string(validate_secret(&typed(t).with_data(key, bad)));
                assert_eq!(
                    m,
                    format!(
                        "data[{key}]: Invalid value: \"<secret contents redacted>\": must be a valid JSON object"
                    ),
                    "{bad:?}"
                );
            }
        }
    }

    #[test]
    fn json_depth_is_bounded_without_recursion() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(!is_json_object(deep.as_bytes()));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(is_json_object(ok.as_bytes()));
    }

    #[test]
    fn basic_auth() {
        let m = messages(validate_secret(&typed(SECRET_TYPE_BASIC_AUTH)));
        assert_eq!(
            m,
            vec![
                "data[username]: Required value",
                "data[password]: Required value"
            ]
        );
        let only_empty_user = typed(SECRET_TYPE_BASIC_AUTH).with_data("username", "");
        assert_eq!(validate_secret(&only_empty_user), Ok(()));
        let only_password = typed(SECRET_TYPE_BASIC_AUTH).with_data("password", "p");
        assert_eq!(validate_secret(&only_password), Ok(()));
        let other = typed(SECRET_TYPE_BASIC_AUTH).with_data("user", "u");
        assert!(validate_secret(&other).is_err());
    }

    #[test]
    fn ssh_auth() {
        assert_eq!(
            err_string(validate_secret(&typed(SECRET_TYPE_SSH_AUTH))),
            "data[ssh-privatekey]: Required value"
        );
        let empty = typed(SECRET_TYPE_SSH_AUTH).with_data("ssh-privatekey", "");
        assert_eq!(
            err_string(validate_secret(&empty)),
            "data[ssh-privatekey]: Required value"
        );
        let ok = typed(SECRET_TYPE_SSH_AUTH).with_data("ssh-privatekey", "k");
        assert_eq!(validate_secret(&ok), Ok(()));
    }

    #[test]
    fn tls() {
        assert_eq!(
            messages(validate_secret(&typed(SECRET_TYPE_TLS))),
            vec![
                "data[tls.crt]: Required value",
                "data[tls.key]: Required value"
            ]
        );
        let only_crt = typed(SECRET_TYPE_TLS).with_data("tls.crt", "c");
        assert_eq!(
            err_string(validate_secret(&only_crt)),
            "data[tls.key]: Required value"
        );
        let empty = typed(SECRET_TYPE_TLS)
            .with_data("tls.crt", "")
            .with_data("tls.key", "");
        assert_eq!(validate_secret(&empty), Ok(()));
    }

    #[test]
    fn unchecked_types() {
        for t in [
            SECRET_TYPE_OPAQUE,
            SECRET_TYPE_BOOTSTRAP_TOKEN,
            "example.com/custom",
            "anything goes",
        ] {
            assert_eq!(validate_secret(&typed(t)), Ok(()), "{t}");
        }
    }

    #[test]
    fn update_rules() {
        let old = ok_secret();
        assert_eq!(validate_update(&old, &old.duplicate()), Ok(()));

        let new = old.duplicate().with_type("kubernetes.io/tls");
        let m = messages(validate_update(&old, &new));
        assert_eq!(
            m[0],
            "type: Invalid value: \"kubernetes.io/tls\": field is immutable"
        );
        // validate_secret(new) also runs: the TLS keys are missing.
        assert!(m.contains(&"data[tls.crt]: Required value".to_owned()));

        let mut new = old.duplicate();
        new.metadata.name = "other".into();
        new.metadata.namespace = "other-ns".into();
        assert_eq!(
            messages(validate_update(&old, &new)),
            vec![
                "metadata.name: Invalid value: \"other\": field is immutable",
                "metadata.namespace: Invalid value: \"other-ns\": field is immutable",
            ]
        );

        // Mutable objects may change data and become immutable.
        let mut new = old.duplicate().with_data("key", "changed");
        new.immutable = true;
        assert_eq!(validate_update(&old, &new), Ok(()));

        let mut frozen = ok_secret();
        frozen.immutable = true;
        let new = frozen.duplicate().with_data("key", "changed");
        assert_eq!(
            err_string(validate_update(&frozen, &new)),
            "data: Forbidden: field is immutable when `immutable` is set"
        );
        let new = frozen.duplicate().with_data("added", "x");
        assert!(validate_update(&frozen, &new).is_err());

        let mut new = frozen.duplicate();
        new.immutable = false;
        assert_eq!(
            err_string(validate_update(&frozen, &new)),
            "immutable: Forbidden: field is immutable when `immutable` is set"
        );

        let mut new = frozen.duplicate().with_label("tier", "gold");
        new.metadata.annotations.insert("note".into(), "hi".into());
        assert_eq!(
            validate_update(&frozen, &new),
            Ok(()),
            "metadata may change"
        );

        // Update also runs the create rules on the new object.
        let new = old.duplicate().with_data("a*b", "v");
        assert!(err_string(validate_update(&old, &new)).starts_with("data[a*b]: Invalid value"));
    }

    #[test]
    fn all_errors_are_collected_in_order() {
        let mut s = Secret::new("Bad_NS", "Bad_Name")
            .with_type(SECRET_TYPE_TLS)
            .with_data("a*b", "v")
            .with_data("..x", "v")
            .with_label("ok", "-bad");
        s.metadata.annotations.insert("b a d".into(), "v".into());
        let errs = validate_secret(&s).err().map(|e| e.0).unwrap_or_default();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "metadata.namespace",
                "metadata.labels",
                "metadata.annotations",
                "data[..x]",
                "data[a*b]",
                "data[tls.crt]",
                "data[tls.key]",
            ]
        );
        // Deterministic.
        assert_eq!(validate_secret(&s), validate_secret(&s.duplicate()));
    }

    #[test]
    fn no_plaintext_in_any_message() {
        const CANARY: &str = "PLAINTEXT-CANARY-7f3a";
        let cases: Vec<Secret> = vec![
            // Bad key, with a canary value.
            ok_secret().with_data("a*b", CANARY),
            // Broken docker configs holding the canary.
            typed(SECRET_TYPE_DOCKERCFG)
                .with_data(".dockercfg", format!("{{\"auth\":\"{CANARY}\"")),
            typed(SECRET_TYPE_DOCKERCFG).with_data(".dockercfg", format!("[\"{CANARY}\"]")),
            typed(SECRET_TYPE_DOCKER_CONFIG_JSON).with_data(".dockerconfigjson", CANARY),
            // Wrong keys for the type.
            typed(SECRET_TYPE_TLS).with_data("cert", CANARY),
            typed(SECRET_TYPE_BASIC_AUTH).with_data("user", CANARY),
            typed(SECRET_TYPE_SSH_AUTH).with_data("key", CANARY),
            // Too large.
            ok_secret().with_data("big", format!("{CANARY}{}", "x".repeat(MAX_SECRET_SIZE))),
        ];
        let mut checked = 0;
        for s in &cases {
            let m = err_string(validate_secret(s));
            assert!(!m.contains(CANARY), "{m}");
            checked += 1;
        }
        // Updates of an immutable object.
        let mut frozen = ok_secret().with_data("k", CANARY);
        frozen.immutable = true;
        let new = frozen.duplicate().with_data("k", format!("{CANARY}-2"));
        let m = err_string(validate_update(&frozen, &new));
        assert!(!m.contains(CANARY), "{m}");
        // Annotation values are never echoed.
        let mut s = ok_secret();
        s.metadata
            .annotations
            .insert("bad key".into(), CANARY.into());
        s.metadata.annotations.insert(
            "big".into(),
            format!("{CANARY}{}", "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)),
        );
        let m = err_string(validate_secret(&s));
        assert!(!m.contains(CANARY), "{m}");
        assert_eq!(checked, cases.len());
    }
}
