//! YAML exactly as `kubectl kustomize` prints it.
//!
//! Kustomize turns each object into JSON and then into YAML with `sigs.k8s.io/yaml`, whose
//! encoder is a fork of `gopkg.in/yaml.v2`. Byte equality with its output needs that
//! encoder's choices, which no Rust YAML library makes all of: map keys in yaml.v2's "natural"
//! order (`_u` before `B` before `a9` before `a10`), YAML 1.1 scalars quoted (`"y"`, `"on"`,
//! `"0x1F"`, `"1:20"`, dates), the libyaml emitter's choice between plain, single-quoted,
//! double-quoted and literal (`|-`) styles, and its folding of long lines at column 80.
//! This module is that encoder for the JSON values an object can hold; the rules are libyaml's
//! `yaml_emitter_analyze_scalar`, `select_scalar_style` and the `write_*_scalar` writers.

use std::cmp::Ordering;

use serde_json::{Map, Value};

/// libyaml's `best_width`: plain and quoted scalars are folded at a space past this column.
const BEST_WIDTH: usize = 80;
/// libyaml's `best_indent`.
const INDENT: usize = 2;

/// One object as a YAML document (no `---`).
pub(crate) fn to_yaml(object: &Map<String, Value>, out: &mut String) {
    if object.is_empty() {
        out.push_str("{}\n");
        return;
    }
    let mut e = Emitter { out, column: 0 };
    e.mapping(object, 0);
}

/// The output and the column the next character lands in (counted in characters).
struct Emitter<'a> {
    out: &'a mut String,
    column: usize,
}

/// How a scalar is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Single,
    Double,
    Literal,
}

impl Emitter<'_> {
    fn put(&mut self, c: char) {
        self.out.push(c);
        if c == '\n' {
            self.column = 0;
        } else {
            self.column += 1;
        }
    }

    fn put_str(&mut self, s: &str) {
        for c in s.chars() {
            self.put(c);
        }
    }

    /// A newline and `indent` spaces (libyaml's `write_indent` after a fold).
    fn newline_indent(&mut self, indent: usize) {
        self.put('\n');
        while self.column < indent {
            self.put(' ');
        }
    }

    fn pad_to(&mut self, indent: usize) {
        while self.column < indent {
            self.put(' ');
        }
    }

    /// A block mapping whose keys sit at `indent`; the cursor is at the start of a line, or
    /// right after `- ` of a sequence item for the first key.
    fn mapping(&mut self, map: &Map<String, Value>, indent: usize) {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by(|a, b| key_order(a, b));
        for (i, key) in keys.into_iter().enumerate() {
            if i > 0 || self.column != indent {
                if self.column != 0 {
                    self.put('\n');
                }
                self.pad_to(indent);
            }
            self.scalar(key, indent, true);
            self.put(':');
            self.value(&map[key.as_str()], indent, true);
        }
        if self.column != 0 {
            self.put('\n');
        }
    }

    /// A block sequence whose `- ` sit at `indent`.
    fn sequence(&mut self, items: &[Value], indent: usize) {
        for item in items {
            if self.column != 0 {
                self.put('\n');
            }
            self.pad_to(indent);
            self.put('-');
            self.value(item, indent, false);
        }
        if self.column != 0 {
            self.put('\n');
        }
    }

    /// The value after `key:` (in a mapping at `indent`) or after `-` (in a sequence at
    /// `indent`).
    fn value(&mut self, v: &Value, indent: usize, in_mapping: bool) {
        match v {
            Value::Object(m) if m.is_empty() => self.put_str(" {}"),
            Value::Array(a) if a.is_empty() => self.put_str(" []"),
            Value::Object(m) => {
                if in_mapping {
                    self.put('\n');
                    self.mapping(m, indent + INDENT);
                } else {
                    self.put(' ');
                    self.mapping(m, indent + INDENT);
                }
            }
            Value::Array(a) => {
                if in_mapping {
                    // yaml.v2 writes a sequence in a mapping without indenting it.
                    self.put('\n');
                    self.sequence(a, indent);
                } else {
                    self.put(' ');
                    self.sequence_inline_first(a, indent + INDENT);
                }
            }
            Value::Null => self.put_str(" null"),
            Value::Bool(b) => self.put_str(if *b { " true" } else { " false" }),
            Value::Number(n) => {
                self.put(' ');
                self.put_str(&go_number(n));
            }
            Value::String(s) => {
                self.put(' ');
                self.scalar(s, indent + INDENT, false);
            }
        }
    }

    /// A sequence nested directly in a sequence item: its first `-` follows the outer `- `.
    fn sequence_inline_first(&mut self, items: &[Value], indent: usize) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                if self.column != 0 {
                    self.put('\n');
                }
                self.pad_to(indent);
            }
            self.put('-');
            self.value(item, indent, false);
        }
        if self.column != 0 {
            self.put('\n');
        }
    }

    /// A string scalar; `indent` is where folded lines continue; keys never fold.
    fn scalar(&mut self, s: &str, indent: usize, key: bool) {
        match style(s, key) {
            Style::Plain => self.plain(s, indent, !key),
            Style::Single => self.single_quoted(s, indent, !key),
            Style::Double => self.double_quoted(s, indent, !key),
            Style::Literal => self.literal(s, indent),
        }
    }

    fn plain(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let next_space = chars.get(i + 1) == Some(&' ');
                if allow_breaks && !spaces && self.column > BEST_WIDTH && !next_space {
                    self.newline_indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
    }

    fn single_quoted(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        self.put('\'');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if c == ' ' {
                let next_space = chars.get(i + 1) == Some(&' ');
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i != 0
                    && i + 1 != chars.len()
                    && !next_space
                {
                    self.newline_indent(indent);
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                if c == '\'' {
                    self.put('\'');
                }
                self.put(c);
                spaces = false;
            }
        }
        self.put('\'');
    }

    fn double_quoted(&mut self, s: &str, indent: usize, allow_breaks: bool) {
        let chars: Vec<char> = s.chars().collect();
        self.put('"');
        let mut spaces = false;
        for (i, &c) in chars.iter().enumerate() {
            if !is_printable(c) || c == '\u{feff}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                match c {
                    '\0' => self.put('0'),
                    '\u{7}' => self.put('a'),
                    '\u{8}' => self.put('b'),
                    '\t' => self.put('t'),
                    '\n' => self.put('n'),
                    '\u{b}' => self.put('v'),
                    '\u{c}' => self.put('f'),
                    '\r' => self.put('r'),
                    '\u{1b}' => self.put('e'),
                    '"' => self.put('"'),
                    '\\' => self.put('\\'),
                    '\u{85}' => self.put('N'),
                    '\u{a0}' => self.put('_'),
                    '\u{2028}' => self.put('L'),
                    '\u{2029}' => self.put('P'),
                    c => {
                        let v = u32::from(c);
                        let text = if v <= 0xff {
                            format!("x{v:02X}")
                        } else if v <= 0xffff {
                            format!("u{v:04X}")
                        } else {
                            format!("U{v:08X}")
                        };
                        self.put_str(&text);
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i > 0
                    && i + 1 < chars.len()
                {
                    self.newline_indent(indent);
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.put(c);
                }
                spaces = true;
            } else {
                self.put(c);
                spaces = false;
            }
        }
        self.put('"');
    }

    fn literal(&mut self, s: &str, indent: usize) {
        self.put('|');
        if s.starts_with([' ', '\n']) {
            self.put_str(&INDENT.to_string());
        }
        let trailing = s.len() - s.trim_end_matches('\n').len();
        match trailing {
            0 => self.put('-'),
            1 if s.len() > 1 => {}
            _ => self.put('+'),
        }
        self.put('\n');
        let mut at_line_start = true;
        for c in s.chars() {
            if c == '\n' {
                self.put('\n');
                at_line_start = true;
            } else {
                if at_line_start {
                    self.pad_to(indent);
                    at_line_start = false;
                }
                self.put(c);
            }
        }
        // The writer below ends the line; a value ending in a newline already did.
        if s.ends_with('\n') {
            self.column = 0;
            // `mapping`/`sequence` add the newline only when the column is not 0.
        }
    }
}

/// libyaml's `is_printable` for one character.
fn is_printable(c: char) -> bool {
    matches!(c, '\n' | '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
        && c != '\u{feff}'
}

/// libyaml's `is_break`.
fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// The style yaml.v2 gives a string: plain unless it would read back as something else, then
/// what libyaml's analysis of the text allows.
fn style(s: &str, key: bool) -> Style {
    let requested = if !resolves_to_string(s) {
        Style::Double
    } else if s.contains('\n') {
        Style::Literal
    } else {
        Style::Plain
    };
    let a = analyze(s);
    let mut style = requested;
    if key && a.multiline {
        style = Style::Double;
    }
    if style == Style::Plain && (!a.block_plain_allowed || (s.is_empty() && key)) {
        style = Style::Single;
    }
    if style == Style::Single && !a.single_quoted_allowed {
        style = Style::Double;
    }
    if style == Style::Literal && (!a.block_allowed || key) {
        style = Style::Double;
    }
    style
}

/// What libyaml's `yaml_emitter_analyze_scalar` finds (the block-context flags only).
struct Analysis {
    multiline: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            multiline: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = s.chars().collect();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let mut line_breaks = false;
    let mut special = false;
    let (mut leading_space, mut leading_break) = (false, false);
    let (mut trailing_space, mut trailing_break) = (false, false);
    let (mut break_space, mut space_break) = (false, false);
    let (mut previous_space, mut previous_break) = (false, false);
    let mut preceded_by_whitespace = true;
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_whitespace = chars
            .get(i + 1)
            .is_none_or(|n| *n == ' ' || *n == '\t' || is_break(*n));
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => block_indicators = true,
                '?' | ':' | '-' if followed_by_whitespace => block_indicators = true,
                _ => {}
            }
        } else {
            match c {
                ':' if followed_by_whitespace => block_indicators = true,
                '#' if preceded_by_whitespace => block_indicators = true,
                _ => {}
            }
        }
        if !is_printable(c) {
            special = true;
        }
        let last = i + 1 == chars.len();
        if c == ' ' {
            leading_space |= i == 0;
            trailing_space |= last;
            break_space |= previous_break;
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            line_breaks = true;
            leading_break |= i == 0;
            trailing_break |= last;
            space_break |= previous_space;
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = c == ' ' || c == '\t' || is_break(c) || c == '\0';
    }
    let mut a = Analysis {
        multiline: line_breaks,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if space_break || special {
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
        a.block_allowed = false;
    }
    if line_breaks || block_indicators {
        a.block_plain_allowed = false;
    }
    a
}

/// Whether yaml.v2 reads `s`, written plain, back as a string (its `resolve`), and it is not a
/// sexagesimal number (which yaml.v2 also quotes).
fn resolves_to_string(s: &str) -> bool {
    const SPECIAL: &[&str] = &[
        "", "~", "null", "Null", "NULL", "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO",
        "true", "True", "TRUE", "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
        ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf",
        "-.Inf", "-.INF",
    ];
    if SPECIAL.contains(&s) || is_base60_float(s) {
        return false;
    }
    let Some(first) = s.chars().next() else {
        return false;
    };
    match first {
        '0'..='9' | '+' | '-' => {
            if is_timestamp(s) {
                return false;
            }
            let plain: String = s.chars().filter(|c| *c != '_').collect();
            !(go_parse_int(&plain) || is_yaml_float(&plain) || is_binary(&plain))
        }
        '.' => !is_go_float(s),
        _ => true,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)` or `ParseUint` succeeding (sign, `0x`, `0o`, `0b`, a
/// leading `0` for octal), ignoring range.
fn go_parse_int(s: &str) -> bool {
    let body = s
        .strip_prefix('+')
        .or_else(|| s.strip_prefix('-'))
        .unwrap_or(s);
    let (digits, radix) =
        if let Some(r) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (r, 16)
        } else if let Some(r) = body.strip_prefix("0o").or_else(|| body.strip_prefix("0O")) {
            (r, 8)
        } else if let Some(r) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (r, 2)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    !digits.is_empty() && digits.chars().all(|c| c.is_digit(radix))
}

/// yaml.v2's float pattern `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.ParseFloat` on a string starting with `.` (yaml.v2 tries it for that hint).
fn is_go_float(s: &str) -> bool {
    is_yaml_float(s)
}

/// `0b1010` and `-0b1010`, which yaml.v2 reads as integers.
fn is_binary(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    body.strip_prefix("0b")
        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c == '0' || c == '1'))
}

/// yaml.v2's `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`.
fn is_base60_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    if !b.get(i).is_some_and(u8::is_ascii_digit) {
        return false;
    }
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    let mut groups = 0;
    while b.get(i) == Some(&b':') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 2 {
            i += 1;
        }
        let n = i - start;
        if n == 0 || (n == 2 && b[start] > b'5') {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
    }
    i == b.len()
}

/// yaml.v2's timestamp check: four digits and `-`, then one of Go's layouts
/// `2006-1-2`, `2006-1-2 15:4:5.999999999`, `2006-1-2T15:4:5.999999999Z07:00`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return false;
    }
    let mut i = 5;
    let num = |i: &mut usize, max: usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < max {
            *i += 1;
        }
        *i - start
    };
    if num(&mut i, 2) == 0 || b.get(i) != Some(&b'-') {
        return false;
    }
    i += 1;
    if num(&mut i, 2) == 0 {
        return false;
    }
    if i == b.len() {
        return true;
    }
    let t = b[i];
    if t != b'T' && t != b't' && t != b' ' {
        return false;
    }
    i += 1;
    for sep in [b':', b':'] {
        if num(&mut i, 2) == 0 || b.get(i) != Some(&sep) {
            return false;
        }
        i += 1;
    }
    if num(&mut i, 2) == 0 {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if num(&mut i, 9) == 0 {
            return false;
        }
    }
    if i == b.len() {
        return t == b' ';
    }
    if t == b' ' {
        return false;
    }
    match b[i] {
        b'Z' => i + 1 == b.len(),
        b'+' | b'-' => {
            i += 1;
            num(&mut i, 2) == 2 && b.get(i) == Some(&b':') && {
                i += 1;
                num(&mut i, 2) == 2 && i == b.len()
            }
        }
        _ => false,
    }
}

/// A JSON number as yaml.v2 writes the Go value `sigs.k8s.io/yaml` decoded it into.
fn go_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        format!("{f:.0}")
    } else {
        let s = format!("{f:e}");
        // Go writes exponents with a sign and at least two digits.
        match s.split_once('e') {
            Some((m, e)) if f.abs() >= 1e21 || f.abs() < 1e-4 => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{m}e{sign}{digits:0>2}")
            }
            _ => f.to_string(),
        }
    }
}

/// yaml.v2's order of map keys (`keyList.Less` for two strings): runs of digits compare as
/// numbers, and at the first difference a letter sorts after a non-letter unless the previous
/// character was a digit.
pub(crate) fn key_order(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    if key_less(a, b) {
        Ordering::Less
    } else if key_less(b, a) {
        Ordering::Greater
    } else {
        a.cmp(b)
    }
}

fn key_less(a: &str, b: &str) -> bool {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut digits = false;
    let n = ar.len().min(br.len());
    for i in 0..n {
        if ar[i] == br[i] {
            digits = ar[i].is_ascii_digit();
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return if digits { al } else { bl };
        }
        let (mut an, mut bn): (i64, i64) = (0, 0);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an
                .wrapping_mul(10)
                .wrapping_add(i64::from(u32::from(ar[ai]) - u32::from('0')));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn
                .wrapping_mul(10)
                .wrapping_add(i64::from(u32::from(br[bi]) - u32::from('0')));
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn yaml(text: &str) -> String {
        let v: Map<String, Value> = serde_json::from_str(text).unwrap();
        let mut out = String::new();
        to_yaml(&v, &mut out);
        out
    }

    #[test]
    fn keys_in_yaml_v2_order() {
        let mut keys = vec!["a10", "B", "a9", "_u", "a", "A", "a-b", "ab"];
        keys.sort_by(|a, b| key_order(a, b));
        assert_eq!(keys, ["_u", "A", "B", "a", "a-b", "a9", "a10", "ab"]);
    }

    #[test]
    fn styles() {
        assert_eq!(
            yaml(
                r#"{"a":"y","b":"","c":"yes","d":"0x1F","e":"1:20","f":"2024-01-02","g":"plain text"}"#
            ),
            "a: \"y\"\nb: \"\"\nc: \"yes\"\nd: \"0x1F\"\ne: \"1:20\"\nf: \"2024-01-02\"\ng: plain text\n"
        );
        assert_eq!(
            yaml(r##"{"a":"- x","b":"a: b","c":"#c","d":" lead","e":"tab\there","f":"it's"}"##),
            "a: '- x'\nb: 'a: b'\nc: '#c'\nd: ' lead'\ne: \"tab\\there\"\nf: it's\n"
        );
        assert_eq!(
            yaml(r#"{"a":"l1\nl2","b":"l1\n","c":"x\n\n"}"#),
            "a: |-\n  l1\n  l2\nb: |\n  l1\nc: |+\n  x\n\n"
        );
        assert_eq!(
            yaml(r#"{"m":{},"l":[],"n":null,"t":true,"i":5,"s":[{"a":"1","b":"2"},"x"]}"#),
            "i: 5\nl: []\nm: {}\n\"n\": null\ns:\n- a: \"1\"\n  b: \"2\"\n- x\nt: true\n"
        );
    }
}
