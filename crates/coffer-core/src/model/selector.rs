//! Label and field selectors, with the Kubernetes syntax and semantics.
//!
//! - [`LabelSelector`]: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a` (exists),
//!   `!a` (does not exist), and `a>1` / `a<1` (integer comparisons), comma-separated; the parser
//!   follows `k8s.io/apimachinery/pkg/labels` token for token, including its error messages.
//! - [`FieldSelector`]: `field=value`, `field==value`, `field!=value`, comma-separated, over the
//!   fields Kubernetes supports for Secrets: `metadata.name`, `metadata.namespace` and `type`.
//!   Values may escape `\,`, `\=` and `\\`, as in Kubernetes.
//!
//! The empty string selects everything. Both parsers bound their input: at most
//! [`MAX_SELECTOR_LEN`] bytes and [`MAX_REQUIREMENTS`] requirements.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::Secret;
use super::validation::{is_qualified_name, is_valid_label_value};

/// The longest selector accepted, in bytes (16 KiB).
pub const MAX_SELECTOR_LEN: usize = 16 * 1024;

/// The most requirements (comma-separated terms) one selector may have.
pub const MAX_REQUIREMENTS: usize = 256;

/// A selector that could not be parsed; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message, as `Display` prints it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SelectorError {}

fn check_len(kind: &str, s: &str) -> Result<(), SelectorError> {
    if s.len() > MAX_SELECTOR_LEN {
        return Err(SelectorError::new(format!(
            "{kind} selector is too long: {} bytes (at most {MAX_SELECTOR_LEN})",
            s.len()
        )));
    }
    Ok(())
}

fn too_many(kind: &str) -> SelectorError {
    SelectorError::new(format!(
        "{kind} selector has too many requirements (at most {MAX_REQUIREMENTS})"
    ))
}

// =============================================================================================
// Label selectors
// =============================================================================================

/// A parsed label selector: a conjunction of requirements on an object's labels.
///
/// The default (and the parse of `""`) selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement: `key op values`. Values are sorted and deduplicated, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    fn new(key: String, op: Operator, values: BTreeSet<String>) -> Result<Self, String> {
        let mut errs = Vec::new();
        if let Err(e) = validate_label_key(&key) {
            errs.push(e);
        }
        match op {
            Operator::In | Operator::NotIn => {
                if values.is_empty() {
                    errs.push("for 'in', 'notin' operators, values set can't be empty".to_owned());
                }
            }
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals => {
                if values.len() != 1 {
                    errs.push("exact-match compatibility requires one single value".to_owned());
                }
            }
            Operator::Exists | Operator::DoesNotExist => {
                if !values.is_empty() {
                    errs.push("values set must be empty for exists and does not exist".to_owned());
                }
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push("for 'Gt', 'Lt' operators, exactly one value is required".to_owned());
                }
                for v in &values {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "for 'Gt', 'Lt' operators, the value must be an integer: {v:?}"
                        ));
                    }
                }
            }
        }
        for v in &values {
            let msgs = is_valid_label_value(v);
            if !msgs.is_empty() {
                errs.push(format!("invalid label value: {v:?}: {}", msgs.join("; ")));
            }
        }
        if errs.is_empty() {
            Ok(Self { key, op, values })
        } else {
            Err(errs.join(", "))
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| self.values.contains(v))
            }
            Operator::NotIn | Operator::NotEquals => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let Some(have) = value.and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                let Some(want) = self.values.first().and_then(|v| v.parse::<i64>().ok()) else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let msgs = is_qualified_name(key);
    if msgs.is_empty() {
        Ok(())
    } else {
        Err(format!("invalid label key {key:?}: {}", msgs.join("; ")))
    }
}

impl LabelSelector {
    /// Parses a selector in the Kubernetes syntax; `""` (or only whitespace) selects everything.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        check_len("label", s)?;
        let tokens = lex(s);
        let mut p = Parser { tokens, pos: 0 };
        let requirements = p.parse()?;
        Ok(Self { requirements })
    }

    /// A selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether the selector selects everything (has no requirements).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

// ----- lexer (k8s.io/apimachinery/pkg/labels, byte for byte) ---------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    Identifier,
    OpenPar,
    ClosedPar,
    Comma,
    DoesNotExist,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    In,
    NotIn,
}

fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(c: u8) -> bool {
    matches!(c, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn special_token(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

/// Splits the whole selector into tokens (ending with [`Tok::End`]). Every special symbol is a
/// token on its own, so lexing cannot fail; the parser reports what it did not expect.
fn lex(s: &str) -> Vec<(Tok, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_whitespace(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        let start = i;
        if is_special(b[i]) {
            // The longest special-symbol token at this point ("!=", "==", or one symbol).
            let mut last = None;
            while i < b.len() && is_special(b[i]) {
                match special_token(&s[start..=i]) {
                    Some(t) => {
                        last = Some((t, i + 1));
                        i += 1;
                    }
                    None => break,
                }
            }
            // Every single special symbol is a token, so `last` is set.
            let (tok, end) = last.unwrap_or((Tok::End, start + 1));
            i = end;
            out.push((tok, s[start..end].to_owned()));
        } else {
            while i < b.len() && !is_special(b[i]) && !is_whitespace(b[i]) {
                i += 1;
            }
            // Both ends are ASCII bytes (or the string's ends), so these are char boundaries.
            let lit = &s[start..i];
            let tok = match lit {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Identifier,
            };
            out.push((tok, lit.to_owned()));
        }
    }
}

// ----- parser ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// `in` and `notin` are plain identifiers (keys and values).
    Values,
    /// `in` and `notin` are operators.
    KeyAndOperator,
}

struct Parser {
    tokens: Vec<(Tok, String)>,
    pos: usize,
}

const BINARY_OPERATORS: &str = "in, notin, =, ==, !=, gt, lt";

impl Parser {
    fn lookahead(&self, ctx: Context) -> (Tok, &str) {
        let (tok, lit) = match self.tokens.get(self.pos) {
            Some((t, l)) => (*t, l.as_str()),
            None => (Tok::End, ""),
        };
        let tok = match (ctx, tok) {
            (Context::Values, Tok::In | Tok::NotIn) => Tok::Identifier,
            _ => tok,
        };
        (tok, lit)
    }

    fn consume(&mut self, ctx: Context) -> (Tok, String) {
        let (tok, lit) = self.lookahead(ctx);
        let lit = lit.to_owned();
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        (tok, lit)
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    if reqs.len() >= MAX_REQUIREMENTS {
                        return Err(too_many("label"));
                    }
                    let r = self.parse_requirement().map_err(|e| {
                        SelectorError::new(format!("unable to parse requirement: {e}"))
                    })?;
                    reqs.push(r);
                    let (t, l) = self.consume(Context::Values);
                    match t {
                        Tok::End => return Ok(reqs),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Context::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(SelectorError::new(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::new(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )));
                        }
                    }
                }
                Tok::End => return Ok(reqs),
                _ => {
                    return Err(SelectorError::new(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op) = op {
            return Requirement::new(key, op, BTreeSet::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        Requirement::new(key, op, values)
    }

    /// The key, and `Some(Exists | DoesNotExist)` when the requirement is unary.
    fn parse_key_and_infer_operator(&mut self) -> Result<(String, Option<Operator>), String> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Context::Values);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Context::Values);
        }
        if tok != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        validate_label_key(&lit)?;
        let (next, _) = self.lookahead(Context::Values);
        if (next == Tok::End || next == Tok::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => return Err(format!("found '{lit}', expected: {BINARY_OPERATORS}")),
        })
    }

    /// `( v1, v2, ... )`; `()` is the set of the empty string, as in Kubernetes.
    fn parse_values(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        let lit = lit.to_owned();
        match tok {
            Tok::Identifier | Tok::Comma => {
                let set = self.parse_identifiers_list()?;
                let (tok, _) = self.consume(Context::Values);
                if tok != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(set)
            }
            Tok::ClosedPar => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Tok::Identifier => {
                    set.insert(lit);
                    let (t2, l2) = self.lookahead(Context::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(set),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    // Empty values: "(,", ",)" and ",,".
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    let (t2, _) = self.lookahead(Context::Values);
                    if t2 == Tok::ClosedPar {
                        set.insert(String::new());
                        return Ok(set);
                    }
                    if t2 == Tok::Comma {
                        self.consume(Context::Values);
                        set.insert(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, _) = self.lookahead(Context::Values);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Tok::Identifier {
            Ok(BTreeSet::from([lit]))
        } else {
            Err(format!("found '{lit}', expected: identifier"))
        }
    }
}

// =============================================================================================
// Field selectors
// =============================================================================================

/// The fields of a Secret a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretField {
    Name,
    Namespace,
    Type,
}

impl SecretField {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "metadata.name" => Some(Self::Name),
            "metadata.namespace" => Some(Self::Namespace),
            "type" => Some(Self::Type),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: SecretField,
    /// `!=` rather than `=` / `==`.
    negated: bool,
    value: String,
}

/// A parsed field selector over `metadata.name`, `metadata.namespace` and `type`.
///
/// The default (and the parse of `""`) selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `field=value`, `field==value` and `field!=value` terms separated by commas.
    ///
    /// Whitespace around the field name and the value is ignored. In values, `\,`, `\=` and `\\`
    /// stand for `,`, `=` and `\`; any other escape, or a bare `,`/`=` in a value, is an error.
    /// A field other than `metadata.name`, `metadata.namespace` or `type` gives the error
    /// `field label not supported: <field>`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        check_len("field", s)?;
        let mut terms = Vec::new();
        for part in split_terms(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if terms.len() >= MAX_REQUIREMENTS {
                return Err(too_many("field"));
            }
            let Some((lhs, op, rhs)) = split_term(part) else {
                return Err(SelectorError::new(format!(
                    "invalid field selector: can't understand '{part}' (expected field=value, field==value or field!=value)"
                )));
            };
            let lhs = lhs.trim();
            let field = SecretField::parse(lhs)
                .ok_or_else(|| SelectorError::new(format!("field label not supported: {lhs}")))?;
            let value = unescape_value(rhs.trim())?;
            terms.push(FieldTerm {
                field,
                negated: op == "!=",
                value,
            });
        }
        Ok(Self { terms })
    }

    /// A selector that selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

    /// Whether the selector selects everything (has no terms).
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether the Secret is selected.
    pub fn matches(&self, s: &Secret) -> bool {
        self.matches_fields(&s.metadata.namespace, &s.metadata.name, &s.type_)
    }

    /// Whether a Secret with this namespace, name and type is selected (for callers that do not
    /// hold a whole [`Secret`]).
    pub fn matches_fields(&self, namespace: &str, name: &str, type_: &str) -> bool {
        self.terms.iter().all(|t| {
            let have = match t.field {
                SecretField::Name => name,
                SecretField::Namespace => namespace,
                SecretField::Type => type_,
            };
            (have == t.value) != t.negated
        })
    }

    fn exact(&self, field: SecretField) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }

    /// The name an `=`/`==` term on `metadata.name` requires, if any (the first such term).
    ///
    /// Lets a caller fetch one object instead of scanning; it must still apply [`Self::matches`],
    /// since other terms may exclude that object.
    pub fn exact_name(&self) -> Option<&str> {
        self.exact(SecretField::Name)
    }

    /// The namespace an `=`/`==` term on `metadata.namespace` requires, if any (the first such
    /// term). As with [`Self::exact_name`], [`Self::matches`] must still be applied.
    pub fn exact_namespace(&self) -> Option<&str> {
        self.exact(SecretField::Namespace)
    }
}

/// Splits on commas that are not escaped with a backslash (escapes are kept for
/// [`unescape_value`]).
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut start = 0;
    let mut in_slash = false;
    for (i, c) in s.char_indices() {
        if in_slash {
            in_slash = false;
        } else if c == '\\' {
            in_slash = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// `lhs`, operator, `rhs` at the first operator (`!=`, `==` or `=`, tried in that order at each
/// position, so `a==b` is not read as `a` `=` `=b`).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(rhs) = rest.strip_prefix(op) {
                return Some((&term[..i], op, rhs));
            }
        }
    }
    None
}

fn unescape_value(s: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError::new(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    )));
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            ',' | '=' => {
                return Err(SelectorError::new(format!(
                    "invalid field selector: unescaped character in value: {c}"
                )));
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::new(
            "invalid field selector: invalid escape sequence: \\",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ls(s: &str) -> LabelSelector {
        match LabelSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn ls_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed: {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn fs(s: &str) -> FieldSelector {
        match FieldSelector::parse(s) {
            Ok(sel) => sel,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn fs_err(s: &str) -> String {
        match FieldSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed: {sel:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn empty_selects_everything() {
        for s in ["", "   ", "\t\n"] {
            let sel = ls(s);
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[])));
            assert!(sel.matches(&labels(&[("a", "b")])));
        }
        assert!(LabelSelector::everything().matches(&labels(&[("x", "y")])));
    }

    #[test]
    fn equality_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for s in [
            "app=web",
            "app==web",
            "app = web",
            " app==web ",
            "app=web,tier=front",
        ] {
            assert!(ls(s).matches(&l), "{s}");
        }
        assert!(!ls("app=db").matches(&l));
        assert!(!ls("missing=web").matches(&l));
        assert!(!ls("app=web,tier=back").matches(&l));
        assert!(!ls("app=web").is_empty());
    }

    #[test]
    fn not_equals_matches_missing_labels() {
        let l = labels(&[("app", "web")]);
        assert!(!ls("app!=web").matches(&l));
        assert!(ls("app!=db").matches(&l));
        assert!(ls("other!=x").matches(&l), "absent label matches !=");
    }

    #[test]
    fn set_operators() {
        let l = labels(&[("env", "prod")]);
        assert!(ls("env in (prod,staging)").matches(&l));
        assert!(ls("env in ( staging , prod )").matches(&l));
        assert!(ls("env in(prod)").matches(&l));
        assert!(!ls("env in (dev)").matches(&l));
        assert!(!ls("other in (prod)").matches(&l));
        assert!(ls("env notin (dev, staging)").matches(&l));
        assert!(!ls("env notin (prod)").matches(&l));
        assert!(
            ls("other notin (prod)").matches(&l),
            "absent label matches notin"
        );
        // `in` and `notin` are plain identifiers as keys and values.
        let kw = labels(&[("in", "notin")]);
        assert!(ls("in=notin").matches(&kw));
        assert!(ls("in in (notin)").matches(&kw));
        // `()` is the set of the empty value; `(a,)` holds "a" and "".
        assert!(ls("e in ()").matches(&labels(&[("e", "")])));
        assert!(ls("e in (a,)").matches(&labels(&[("e", "")])));
        assert!(ls("e in (a,)").matches(&labels(&[("e", "a")])));
    }

    #[test]
    fn existence_operators() {
        let l = labels(&[("app", "web")]);
        assert!(ls("app").matches(&l));
        assert!(!ls("db").matches(&l));
        assert!(ls("!db").matches(&l));
        assert!(ls("! db").matches(&l));
        assert!(!ls("!app").matches(&l));
        assert!(ls("app,!db").matches(&l));
        assert!(ls("example.com/x").matches(&labels(&[("example.com/x", "")])));
    }

    #[test]
    fn empty_exact_value() {
        let sel = ls("a=");
        assert!(sel.matches(&labels(&[("a", "")])));
        assert!(!sel.matches(&labels(&[("a", "x")])));
        assert!(!sel.matches(&labels(&[])));
        assert!(ls("a=,b").matches(&labels(&[("a", ""), ("b", "1")])));
    }

    #[test]
    fn integer_comparisons() {
        let l = labels(&[("n", "5"), ("s", "x")]);
        assert!(ls("n>4").matches(&l));
        assert!(!ls("n>5").matches(&l));
        assert!(ls("n<6").matches(&l));
        assert!(!ls("s>1").matches(&l), "non-integer label never matches");
        assert!(!ls("m>1").matches(&l), "absent label never matches");
        assert!(ls_err("n>x").contains("must be an integer"));
    }

    #[test]
    fn full_example_from_the_design() {
        let sel = ls("a=b,c!=d,e in (x,y),!f,g");
        assert!(sel.matches(&labels(&[("a", "b"), ("e", "y"), ("g", "")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "y"), ("g", ""), ("f", "1")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("c", "d"), ("e", "y"), ("g", "")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "z"), ("g", "")])));
        assert!(!sel.matches(&labels(&[("a", "b"), ("e", "y")])));
    }

    #[test]
    fn label_syntax_errors() {
        assert_eq!(
            ls_err("a b"),
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"
        );
        assert_eq!(ls_err("a=b,"), "found '', expected: identifier after ','");
        assert_eq!(
            ls_err("a=b c"),
            "found 'c', expected: ',' or 'end of string'"
        );
        assert_eq!(
            ls_err("=b"),
            "found '=', expected: !, identifier, or 'end of string'"
        );
        assert_eq!(
            ls_err("a in x"),
            "unable to parse requirement: found 'x' expected: '('"
        );
        assert_eq!(
            ls_err("a in (x"),
            "unable to parse requirement: found '', expected: ',' or ')'"
        );
        assert_eq!(
            ls_err("a in (x y)"),
            "unable to parse requirement: found 'y', expected: ',' or ')'"
        );
        assert_eq!(
            ls_err("a in (=)"),
            "unable to parse requirement: found '=', expected: ',', ')' or identifier"
        );
        assert_eq!(
            ls_err("a=(b)"),
            "unable to parse requirement: found '(', expected: identifier"
        );
        assert_eq!(
            ls_err("!"),
            "unable to parse requirement: found '', expected: identifier"
        );
        assert!(ls_err("!a=b").contains("expected: ',' or 'end of string'"));
        assert!(ls_err(",a").contains("found ','"));
        assert!(ls_err("a,,b").contains("identifier after ','"));
    }

    #[test]
    fn label_keys_and_values_are_validated() {
        let m = ls_err("-bad=x");
        assert!(
            m.starts_with("unable to parse requirement: invalid label key \"-bad\": name part"),
            "{m}"
        );
        assert!(ls_err(&format!("{}=x", "k".repeat(64))).contains("no more than 63"));
        let m = ls_err("a=-x");
        assert!(m.contains("invalid label value: \"-x\""), "{m}");
        assert!(ls_err(&format!("a={}", "v".repeat(64))).contains("no more than 63"));
        assert!(ls_err("a in (ok, b@d)").contains("invalid label value"));
        assert!(ls_err("Example.com/a=b").contains("prefix part"));
        assert!(ls_err("a/b/c").contains("invalid label key"));
    }

    #[test]
    fn label_selector_bounds() {
        let long = format!("a={}", "x,".repeat(MAX_SELECTOR_LEN));
        assert!(ls_err(&long).contains("too long"));
        let many: Vec<String> = (0..MAX_REQUIREMENTS).map(|i| format!("k{i}")).collect();
        let sel = ls(&many.join(","));
        let all: BTreeMap<String, String> =
            many.iter().map(|k| (k.clone(), String::new())).collect();
        assert!(sel.matches(&all));
        let too_many: Vec<String> = (0..=MAX_REQUIREMENTS).map(|i| format!("k{i}")).collect();
        assert_eq!(
            ls_err(&too_many.join(",")),
            "label selector has too many requirements (at most 256)"
        );
    }

    fn secret(ns: &str, name: &str, t: &str) -> Secret {
        Secret::new(ns, name).with_type(t)
    }

    #[test]
    fn field_selector_operators() {
        let s = secret("prod", "db-creds", "Opaque");
        for sel in [
            "metadata.name=db-creds",
            "metadata.name==db-creds",
            "metadata.name!=other",
            "metadata.namespace=prod",
            "type=Opaque",
            "type!=kubernetes.io/tls",
            " metadata.name = db-creds , type == Opaque ",
            "metadata.name=db-creds,,",
        ] {
            assert!(fs(sel).matches(&s), "{sel}");
        }
        for sel in [
            "metadata.name=other",
            "metadata.name!=db-creds",
            "metadata.namespace=dev",
            "type=kubernetes.io/tls",
            "metadata.name=db-creds,type!=Opaque",
        ] {
            assert!(!fs(sel).matches(&s), "{sel}");
        }
        assert!(fs("").is_empty());
        assert!(fs(" , ").is_empty());
        assert!(fs("").matches(&s));
        assert!(FieldSelector::everything().matches(&s));
        assert!(fs("metadata.name=db-creds").matches_fields("prod", "db-creds", "x"));
    }

    #[test]
    fn field_selector_exact() {
        let sel = fs("metadata.namespace=prod,metadata.name==a");
        assert_eq!(sel.exact_name(), Some("a"));
        assert_eq!(sel.exact_namespace(), Some("prod"));
        let sel = fs("metadata.name!=a,metadata.namespace!=prod");
        assert_eq!(sel.exact_name(), None);
        assert_eq!(sel.exact_namespace(), None);
        assert_eq!(fs("type=Opaque").exact_name(), None);
        assert_eq!(fs("").exact_namespace(), None);
    }

    #[test]
    fn field_selector_errors() {
        assert_eq!(
            fs_err("metadata.labels=x"),
            "field label not supported: metadata.labels"
        );
        assert_eq!(fs_err("data.x=y"), "field label not supported: data.x");
        assert_eq!(fs_err("=y"), "field label not supported: ");
        assert!(fs_err("metadata.name").contains("can't understand 'metadata.name'"));
        assert!(fs_err("type=a=b").contains("unescaped character in value: ="));
        assert!(fs_err("type=a\\x").contains("invalid escape sequence: \\x"));
        assert!(fs_err("type=a\\").contains("invalid escape sequence: \\"));
        assert!(fs_err(&"x".repeat(MAX_SELECTOR_LEN + 1)).contains("too long"));
        let many = vec!["type=x"; MAX_REQUIREMENTS + 1].join(",");
        assert_eq!(
            fs_err(&many),
            "field selector has too many requirements (at most 256)"
        );
        assert!(FieldSelector::parse(&vec!["type=x"; MAX_REQUIREMENTS].join(",")).is_ok());
    }

    #[test]
    fn field_selector_escapes() {
        let s = secret("ns", "n", "a,b=c\\d");
        let sel = fs("type=a\\,b\\=c\\\\d");
        assert!(sel.matches(&s));
        let sel = fs("type!=a\\,b\\=c\\\\d,metadata.name=n");
        assert!(!sel.matches(&s));
    }

    #[test]
    fn errors_are_std_errors() {
        let e: Box<dyn std::error::Error> = Box::new(SelectorError::new("x"));
        assert_eq!(e.to_string(), "x");
        assert_eq!(SelectorError::new("y").message(), "y");
    }
}
