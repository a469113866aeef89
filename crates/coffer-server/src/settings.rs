//! How a settings struct of `coffer serve` is read: one struct per concern, deriving both
//! `clap::Args` (the flags) and `serde::Deserialize` (the `--config` TOML file), with every field
//! optional at parse level, merged "flag if given, else file, else default".
//!
//! - Fields are `Option<T>` (unset: `None`), `bool` switches (unset: `false`) and repeatable
//!   `Vec<T>` flags (unset: empty); the structs are `#[serde(default)]`, so a file may leave out
//!   any key. Defaults are applied last, by each concern's `resolve`, from the resolved type's
//!   `Default` (the one place each default lives; the flag's help text quotes it).
//! - [`Merge`]: the flags win over the file, field by field; [`merge_fields!`] writes the impl
//!   from the field list (a forgotten field does not compile).
//! - [`from_toml`]: the file, with `-` and `_` alike in keys (`data-dir` is `data_dir`),
//!   unknown keys refused, and every error naming the key it is about.
//! - [`parse_duration`]: every duration, flag or file, through `humantime` (`500ms`, `90s`,
//!   `1h30m`; a bare number is seconds). In a file, typed values are strings parsed as the flag
//!   parses them ([`duration`], [`parsed`], [`parsed_list`]).
//!
//! A leaf: it names nothing else in the crate.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Settings that a command line and a config file both give: `self` holds the flags, `file`
/// the file's values; what the flags set wins.
pub trait Merge {
    /// Merges `file` under `self`.
    #[must_use]
    fn merge(self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    /// The flag if given, else the file's value.
    fn merge(self, file: Self) -> Self {
        self.or(file)
    }
}

impl Merge for bool {
    /// A switch is on if either turns it on (a flag cannot say "off").
    fn merge(self, file: Self) -> Self {
        self || file
    }
}

impl<T> Merge for Vec<T> {
    /// A repeatable flag given at least once replaces the file's list.
    fn merge(self, file: Self) -> Self {
        if self.is_empty() { file } else { self }
    }
}

/// Implements [`Merge`] for a settings struct by merging each named field (a nested settings
/// struct merges field by field in turn). Every field must be named: the struct literal it
/// expands to does not compile otherwise.
macro_rules! merge_fields {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::settings::Merge for $ty {
            fn merge(self, file: Self) -> Self {
                Self {
                    $($field: $crate::settings::Merge::merge(self.$field, file.$field),)+
                }
            }
        }
    };
}
pub(crate) use merge_fields;

/// Parses a duration with `humantime` (`250ms`, `90s`, `5m`, `1h30m`, `2days`); a bare number is
/// seconds (`60`), as before units were required.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("{s:?} is too many seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration: {e} (write e.g. 500ms, 90s, 5m, 1h30m)"))
}

/// `#[serde(deserialize_with = "...")]` for an `Option<Duration>`, written as a string and
/// parsed by [`parse_duration`].
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with = "...")]` for an `Option<T>` written as the string its flag takes.
pub fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: Display>,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with = "...")]` for the list of a repeatable flag: an array of strings,
/// or one string (`listen = "127.0.0.1:7070"`).
pub fn parsed_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err: Display>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    list.iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// Reads the text of a TOML settings file into `T`: keys are matched with `-` and `_` alike,
/// unknown keys are refused (`T` denies them), and the error names the key it is about.
pub fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let table = underscored(table);
    from_table::<T>(table.clone()).map_err(|e| {
        // One line: "invalid type: ..., expected usize in `security.max_...`".
        let e = e.to_string().trim().replace('\n', " ");
        match blame::<T>(&table) {
            // "unknown field `x`", "in `a.x`": named already.
            Some(key) if !e.contains(&format!("`{}`", leaf(&key))) && !e.contains(&key) => {
                format!("{key}: {e}")
            }
            _ => e,
        }
    })
}

fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, toml::de::Error> {
    toml::Value::Table(table).try_into()
}

/// `table` with `-` in every key (nested tables too) turned into `_`.
fn underscored(table: toml::Table) -> toml::Table {
    table
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                toml::Value::Table(t) => toml::Value::Table(underscored(t)),
                v => v,
            };
            (k.replace('-', "_"), v)
        })
        .collect()
}

/// The key (`a`, or `a.b` inside a table) whose value alone `T` refuses, if one does: the
/// deserializer's own errors do not say where they are.
fn blame<T: DeserializeOwned>(table: &toml::Table) -> Option<String> {
    let refuses = |t: toml::Table| from_table::<T>(t).is_err();
    let (key, value) = table
        .iter()
        .find(|(k, v)| refuses(toml::Table::from_iter([((*k).clone(), (*v).clone())])))?;
    if let toml::Value::Table(inner) = value {
        for (k, v) in inner {
            let one = toml::Table::from_iter([(k.clone(), v.clone())]);
            if refuses(toml::Table::from_iter([(
                key.clone(),
                toml::Value::Table(one),
            )])) {
                return Some(format!("{key}.{k}"));
            }
        }
    }
    Some(key.clone())
}

/// The last part of a dotted key.
fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_through_humantime() {
        let d = |s| parse_duration(s);
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("2days"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(d("60"), Ok(Duration::from_secs(60)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d(" 1m "), Ok(Duration::from_secs(60)));
        assert_eq!(d("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5 parsecs", "-1s", "s", "99999999999999999999"] {
            let e = d(bad).expect_err(bad);
            assert!(
                e.contains("duration") || e.contains("seconds"),
                "{bad}: {e}"
            );
        }
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        #[serde(deserialize_with = "duration")]
        wait: Option<Duration>,
        on: bool,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Outer {
        count: Option<u32>,
        #[serde(deserialize_with = "parsed_list")]
        names: Vec<String>,
        #[serde(flatten)]
        flat: Inner,
        table: Inner,
    }

    merge_fields!(Inner { wait, on });
    merge_fields!(Outer {
        count,
        names,
        flat,
        table
    });

    fn read(text: &str) -> Result<Outer, String> {
        from_toml(text)
    }

    #[test]
    fn files_name_the_key_at_fault() {
        let o =
            read("count = 3\nnames = \"a\"\nwait = \"1h30m\"\n[table]\non = true\n").expect("read");
        assert_eq!(o.count, Some(3));
        assert_eq!(o.names, ["a"]);
        assert_eq!(o.flat.wait, Some(Duration::from_secs(5400)));
        assert!(o.table.on && !o.flat.on);
        let o = read("names = [\"a\", \"b\"]\n[table]\nwait = \"2s\"\n").expect("read");
        assert_eq!(o.names, ["a", "b"]);
        assert_eq!(o.table.wait, Some(Duration::from_secs(2)));
        for (text, want) in [
            (
                "wait = \"soon\"\n",
                &["wait: \"soon\" is not a duration"][..],
            ),
            (
                "[table]\nwait = \"5 parsecs\"\n",
                &["table.wait", "\"5 parsecs\""],
            ),
            ("count = \"three\"\n", &["`count`", "invalid type"]),
            ("cuont = 3\n", &["unknown field `cuont`"]),
            ("[table]\nof = true\n", &["unknown field `of`", "table"]),
            ("count = \n", &["line 1"]),
        ] {
            let e = read(text).expect_err(text);
            for w in want {
                assert!(e.contains(w), "{text:?}: {e}");
            }
        }
    }

    #[test]
    fn dashes_and_underscores_alike() {
        #[derive(Debug, Default, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct Dashed {
            data_dir: Option<String>,
            table: Inner,
        }
        let d: Dashed = from_toml("data-dir = \"/x\"\n[table]\nwait = \"1s\"\n").expect("read");
        assert_eq!(d.data_dir.as_deref(), Some("/x"));
        assert_eq!(d.table.wait, Some(Duration::from_secs(1)));
    }

    #[test]
    fn flags_win_field_by_field() {
        let flags = Outer {
            count: Some(1),
            flat: Inner {
                wait: None,
                on: true,
            },
            ..Outer::default()
        };
        let file = Outer {
            count: Some(2),
            names: vec!["f".into()],
            flat: Inner {
                wait: Some(Duration::from_secs(9)),
                on: false,
            },
            table: Inner {
                wait: None,
                on: true,
            },
        };
        let m = flags.merge(file);
        assert_eq!(m.count, Some(1));
        assert_eq!(m.names, ["f"]);
        assert_eq!(m.flat.wait, Some(Duration::from_secs(9)));
        assert!(m.flat.on && m.table.on);
        let m = Outer {
            names: vec!["flag".into()],
            ..Outer::default()
        }
        .merge(Outer {
            names: vec!["file".into()],
            ..Outer::default()
        });
        assert_eq!(m.names, ["flag"]);
    }
}
