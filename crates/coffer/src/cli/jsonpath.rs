//! The common subset of kubectl's JSONPath templates (`-o jsonpath=...`), evaluated over a
//! `serde_json::Value`.
//!
//! Supported: text outside braces; `{.a.b}`, `{$.a}`, `{@.a}`; escaped dots (`{.data.tls\.crt}`);
//! `['key']` / `["key"]`; `[N]` (negative from the end); `[start:end]`; `[*]` and `.*`; recursive
//! descent `..name`; string literals `{"\n"}`; `{range PATH}...{end}`. As kubectl does by
//! default (`--allow-missing-template-keys=true`), a missing key prints nothing. Several results
//! of one expression are joined by a space; strings print raw, other values as compact JSON.

use serde_json::Value;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `$`: back to the root.
    Root,
    /// `.name` / `['name']`.
    Field(String),
    /// `.*` / `[*]`.
    Wildcard,
    /// `[N]`.
    Index(i64),
    /// `[start:end]`.
    Slice(Option<i64>, Option<i64>),
    /// `..name` (or `..*` / `..[*]` with `None`).
    Recursive(Option<String>),
}

enum Token {
    Text(String),
    Action(String),
}

impl Template {
    /// Parses a template; the error is a human sentence.
    pub fn parse(src: &str) -> Result<Self, String> {
        let tokens = tokenize(src)?;
        let mut iter = tokens.into_iter();
        let nodes = parse_nodes(&mut iter, false)?;
        Ok(Self { nodes })
    }

    /// Renders the template over `root`.
    pub fn render(&self, root: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, root, root, &mut out);
        out
    }
}

fn tokenize(src: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '{' {
            text.push(c);
            continue;
        }
        if !text.is_empty() {
            tokens.push(Token::Text(std::mem::take(&mut text)));
        }
        let mut action = String::new();
        let mut quote: Option<char> = None;
        let mut closed = false;
        while let Some(c) = chars.next() {
            match quote {
                Some(q) => {
                    action.push(c);
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            action.push(n);
                        }
                    } else if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '}' => {
                        closed = true;
                        break;
                    }
                    '"' | '\'' => {
                        quote = Some(c);
                        action.push(c);
                    }
                    '\\' => {
                        action.push(c);
                        if let Some(n) = chars.next() {
                            action.push(n);
                        }
                    }
                    _ => action.push(c),
                },
            }
        }
        if !closed {
            return Err(format!("unclosed action in JSONPath template {src:?}"));
        }
        tokens.push(Token::Action(action));
    }
    if !text.is_empty() {
        tokens.push(Token::Text(text));
    }
    Ok(tokens)
}

fn parse_nodes(iter: &mut std::vec::IntoIter<Token>, in_range: bool) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(tok) = iter.next() {
        match tok {
            Token::Text(t) => nodes.push(Node::Text(t)),
            Token::Action(a) => {
                let a = a.trim();
                if a == "end" {
                    if in_range {
                        return Ok(nodes);
                    }
                    return Err("{end} without {range ...}".into());
                }
                if let Some(rest) = a.strip_prefix("range ") {
                    let path = parse_path(rest.trim())?;
                    let body = parse_nodes(iter, true)?;
                    nodes.push(Node::Range(path, body));
                } else if a.starts_with('"') || a.starts_with('\'') {
                    nodes.push(Node::Text(parse_literal(a)?));
                } else {
                    nodes.push(Node::Path(parse_path(a)?));
                }
            }
        }
    }
    if in_range {
        return Err("{range ...} without {end}".into());
    }
    Ok(nodes)
}

fn parse_literal(a: &str) -> Result<String, String> {
    let mut chars = a.chars();
    let q = chars.next().ok_or("empty literal")?;
    let mut out = String::new();
    let mut closed = false;
    while let Some(c) = chars.next() {
        if c == q {
            closed = true;
            break;
        }
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    if !closed || !chars.as_str().trim().is_empty() {
        return Err(format!("malformed string literal {a} in JSONPath template"));
    }
    Ok(out)
}

fn parse_path(src: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| format!("invalid JSONPath expression {{{src}}}: {why}");
    let chars: Vec<char> = src.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    match chars.first() {
        Some('$') => {
            steps.push(Step::Root);
            i = 1;
        }
        Some('@') => i = 1,
        Some('.') | Some('[') => {}
        None => return Err(bad("empty expression")),
        Some(_) => return Err(bad("a path starts with '.', '$', '@' or '['")),
    }
    while i < chars.len() {
        match chars[i] {
            '.' => {
                if chars.get(i + 1) == Some(&'.') {
                    i += 2;
                    if chars.get(i) == Some(&'[') {
                        // `..[*]`
                        let (step, next) = parse_bracket(&chars, i).map_err(|e| bad(&e))?;
                        match step {
                            Step::Wildcard => steps.push(Step::Recursive(None)),
                            _ => return Err(bad("only ..[*] is supported after ..")),
                        }
                        i = next;
                        continue;
                    }
                    let (name, next) = parse_ident(&chars, i);
                    if name.is_empty() {
                        return Err(bad("a name must follow .."));
                    }
                    steps.push(Step::Recursive((name != "*").then_some(name)));
                    i = next;
                } else {
                    let (name, next) = parse_ident(&chars, i + 1);
                    i = next;
                    if name.is_empty() {
                        // A lone `.` (or `.` before `[`): the current object.
                        continue;
                    }
                    steps.push(if name == "*" {
                        Step::Wildcard
                    } else {
                        Step::Field(name)
                    });
                }
            }
            '[' => {
                let (step, next) = parse_bracket(&chars, i).map_err(|e| bad(&e))?;
                steps.push(step);
                i = next;
            }
            c => return Err(bad(&format!("unexpected {c:?}"))),
        }
    }
    Ok(steps)
}

/// A name up to the next unescaped `.` or `[`; `\x` is a literal `x`.
fn parse_ident(chars: &[char], mut i: usize) -> (String, usize) {
    let mut name = String::new();
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                name.push(chars[i + 1]);
                i += 2;
            }
            '.' | '[' => break,
            c => {
                name.push(c);
                i += 1;
            }
        }
    }
    (name, i)
}

fn parse_bracket(chars: &[char], start: usize) -> Result<(Step, usize), String> {
    let end = chars[start..]
        .iter()
        .position(|c| *c == ']')
        .map(|p| start + p)
        .ok_or("unclosed [")?;
    let inner: String = chars[start + 1..end].iter().collect();
    let inner = inner.trim();
    let step = if inner == "*" {
        Step::Wildcard
    } else if inner.starts_with('?') {
        return Err("filter expressions [?(...)] are not supported".into());
    } else if (inner.starts_with('\'') && inner.ends_with('\'') && inner.len() >= 2)
        || (inner.starts_with('"') && inner.ends_with('"') && inner.len() >= 2)
    {
        Step::Field(inner[1..inner.len() - 1].to_owned())
    } else if let Some((a, b)) = inner.split_once(':') {
        let num = |s: &str| -> Result<Option<i64>, String> {
            let s = s.trim();
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .map_err(|_| format!("{s:?} is not an index"))
            }
        };
        if b.contains(':') {
            return Err("slices with a step are not supported".into());
        }
        Step::Slice(num(a)?, num(b)?)
    } else {
        Step::Index(
            inner
                .parse()
                .map_err(|_| format!("{inner:?} is not an index"))?,
        )
    };
    Ok((step, end + 1))
}

fn eval<'a>(steps: &[Step], cur: &'a Value, root: &'a Value) -> Vec<&'a Value> {
    let mut vals = vec![cur];
    for step in steps {
        let mut next = Vec::new();
        for v in vals {
            match step {
                Step::Root => next.push(root),
                Step::Field(name) => {
                    if let Some(x) = v.as_object().and_then(|o| o.get(name)) {
                        next.push(x);
                    }
                }
                Step::Wildcard => match v {
                    Value::Object(o) => next.extend(o.values()),
                    Value::Array(a) => next.extend(a.iter()),
                    _ => {}
                },
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let len = a.len() as i64;
                        let idx = if *i < 0 { len + i } else { *i };
                        if (0..len).contains(&idx) {
                            next.push(&a[idx as usize]);
                        }
                    }
                }
                Step::Slice(s, e) => {
                    if let Some(a) = v.as_array() {
                        let len = a.len() as i64;
                        let norm = |x: i64| if x < 0 { (len + x).max(0) } else { x.min(len) };
                        let s = s.map(norm).unwrap_or(0);
                        let e = e.map(norm).unwrap_or(len);
                        if s < e {
                            next.extend(a[s as usize..e as usize].iter());
                        }
                    }
                }
                Step::Recursive(name) => descend(v, name.as_deref(), &mut next),
            }
        }
        vals = next;
    }
    vals
}

fn descend<'a>(v: &'a Value, name: Option<&str>, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if name.is_none_or(|n| n == k) {
                    out.push(x);
                }
            }
            for x in o.values() {
                descend(x, name, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                if name.is_none() {
                    out.push(x);
                }
                descend(x, name, out);
            }
        }
        _ => {}
    }
}

fn render_nodes(nodes: &[Node], cur: &Value, root: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(p) => {
                let vals = eval(p, cur, root);
                for (i, v) in vals.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    push_value(v, out);
                }
            }
            Node::Range(p, body) => {
                let vals = eval(p, cur, root);
                let items: Vec<&Value> = match vals.as_slice() {
                    [Value::Array(a)] => a.iter().collect(),
                    _ => vals,
                };
                for item in items {
                    render_nodes(body, item, root, out);
                }
            }
        }
    }
}

fn push_value(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => out.push_str(s),
        Value::Null => out.push_str("null"),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": [
                {"metadata": {"name": "a", "labels": {"app": "x"}}, "data": {"tls.crt": "Q1JU", "password": "cHc="}},
                {"metadata": {"name": "b"}, "data": {"k": "dg=="}},
                {"metadata": {"name": "c"}}
            ]
        })
    }

    fn run(t: &str, v: &Value) -> String {
        Template::parse(t).unwrap().render(v)
    }

    #[test]
    fn common_expressions() {
        let d = doc();
        let item = &d["items"][0];
        assert_eq!(run("{.data.password}", item), "cHc=");
        assert_eq!(run("{.metadata.name}", item), "a");
        assert_eq!(run("{.data.tls\\.crt}", item), "Q1JU");
        assert_eq!(run("{.data['tls.crt']}", item), "Q1JU");
        assert_eq!(run("{$.metadata.name}", item), "a");
        assert_eq!(run("{.items[*].metadata.name}", &d), "a b c");
        assert_eq!(run("{.items[0].metadata.name}", &d), "a");
        assert_eq!(run("{.items[-1].metadata.name}", &d), "c");
        assert_eq!(run("{.items[0:2].metadata.name}", &d), "a b");
        assert_eq!(run("{..name}", &d), "a b c");
        assert_eq!(run("{.metadata.labels}", item), r#"{"app":"x"}"#);
        assert_eq!(run("{.nope.deeper}", item), "");
        assert_eq!(run("name={.metadata.name}{\"\\n\"}", item), "name=a\n");
    }

    #[test]
    fn range() {
        let d = doc();
        assert_eq!(
            run("{range .items[*]}{.metadata.name}{\"\\t\"}{end}", &d),
            "a\tb\tc\t"
        );
        assert_eq!(
            run("{range .items[*]}[{.metadata.name}]{end}", &d),
            "[a][b][c]"
        );
    }

    #[test]
    fn parse_errors() {
        assert!(Template::parse("{.a").is_err());
        assert!(Template::parse("{range .items[*]}{.a}").is_err());
        assert!(Template::parse("{end}").is_err());
        assert!(Template::parse("{.items[?(@.a==1)]}").is_err());
        assert!(Template::parse("{foo}").is_err());
        assert!(Template::parse("{.items[x]}").is_err());
    }
}
