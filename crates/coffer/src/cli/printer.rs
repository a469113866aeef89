//! Output: kubectl's table (tabwriter layout, human ages), `-o` formats, and a stdout writer
//! that ends quietly when the reader goes away (`coffer get secrets | head`).

use std::io::Write;

use super::jsonpath::Template;
use coffer_core::model::{Secret, manifest};

/// An `-o` format.
#[derive(Debug, Clone)]
pub enum OutputFormat {
    /// The default table.
    Table,
    /// `-o wide`: for Secrets, the same columns as the table (as kubectl prints).
    Wide,
    /// `-o yaml`.
    Yaml,
    /// `-o json`.
    Json,
    /// `-o name`: `secret/NAME`.
    Name,
    /// `-o jsonpath=TEMPLATE`.
    JsonPath(Template),
}

/// The formats `get` accepts, for error messages.
const GET_FORMATS: &str = "json, jsonpath, name, wide, yaml";

/// Parses the `-o` value of `get` (a clap value parser).
pub fn parse_get_format(s: &str) -> Result<OutputFormat, String> {
    match s {
        "" => Ok(OutputFormat::Table),
        "wide" => Ok(OutputFormat::Wide),
        "yaml" => Ok(OutputFormat::Yaml),
        "json" => Ok(OutputFormat::Json),
        "name" => Ok(OutputFormat::Name),
        _ => {
            if let Some(expr) = s.strip_prefix("jsonpath=") {
                return Template::parse(expr).map(OutputFormat::JsonPath);
            }
            if s == "jsonpath" {
                return Err("jsonpath needs a template: -o jsonpath='{.data.password}'".into());
            }
            Err(format!(
                "unable to match a printer suitable for the output format {s:?}, allowed formats are: {GET_FORMATS}"
            ))
        }
    }
}

/// Parses the `-o` value of `create` and `apply`: yaml, json, name or jsonpath=TEMPLATE.
pub fn parse_write_format(s: &str) -> Result<OutputFormat, String> {
    match parse_get_format(s) {
        Ok(OutputFormat::Table | OutputFormat::Wide) | Err(_) if !s.starts_with("jsonpath") => {
            Err(format!(
                "unable to match a printer suitable for the output format {s:?}, allowed formats are: json, jsonpath, name, yaml"
            ))
        }
        other => other,
    }
}

/// kubectl's human duration (`k8s.io/apimachinery/pkg/util/duration.HumanDuration`), as the AGE
/// column prints it.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Lays rows out as kubectl's tabwriter does (minimum cell width 6, padding 3, spaces): every
/// column but the last is padded to its widest cell plus three spaces.
pub fn tabulate(rows: &[Vec<String>]) -> String {
    tabulate_keeping(rows, &mut Vec::new())
}

/// As [`tabulate`], with column widths at least `widths`, which grow to fit these rows: watch
/// output uses it so that later rows stay aligned with the header printed before them.
pub fn tabulate_keeping(rows: &[Vec<String>], widths: &mut Vec<usize>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    if widths.len() < columns {
        widths.resize(columns, 0);
    }
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count() + 3).max(6);
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

/// Which columns a Secret table has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    /// A NAMESPACE column first (`-A`).
    pub namespace: bool,
    /// A LABELS column last (`--show-labels`).
    pub labels: bool,
    /// An EVENT column first (`--output-watch-events`).
    pub event: bool,
}

impl Columns {
    /// The header row.
    pub fn header(&self) -> Vec<String> {
        let mut h = Vec::new();
        if self.event {
            h.push("EVENT".to_owned());
        }
        if self.namespace {
            h.push("NAMESPACE".to_owned());
        }
        h.extend(["NAME", "TYPE", "DATA", "AGE"].map(str::to_owned));
        if self.labels {
            h.push("LABELS".to_owned());
        }
        h
    }

    /// One Secret's row; `now` is seconds since the Unix epoch, `event` the watch event type.
    pub fn row(&self, s: &Secret, now: i64, event: Option<&str>) -> Vec<String> {
        let mut r = Vec::new();
        if self.event {
            r.push(event.unwrap_or("").to_owned());
        }
        if self.namespace {
            r.push(s.metadata.namespace.clone());
        }
        r.push(s.metadata.name.clone());
        r.push(s.type_.clone());
        r.push(s.data.len().to_string());
        r.push(match s.metadata.creation_timestamp {
            Some(t) => human_duration(now - t),
            None => "<unknown>".to_owned(),
        });
        if self.labels {
            r.push(labels_cell(s));
        }
        r
    }
}

fn labels_cell(s: &Secret) -> String {
    if s.metadata.labels.is_empty() {
        return "<none>".into();
    }
    s.metadata
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Renders one object (`get secret NAME`, `create -o`, ...) in a non-table format.
pub fn render_one(format: &OutputFormat, s: &Secret) -> zeroize::Zeroizing<String> {
    match format {
        OutputFormat::Yaml => manifest::to_yaml(s),
        OutputFormat::Json => manifest::to_json(s),
        OutputFormat::Name => format!("secret/{}\n", s.metadata.name).into(),
        OutputFormat::JsonPath(t) => t.render(&manifest::to_value(s)).into(),
        OutputFormat::Table | OutputFormat::Wide => {
            let cols = Columns::default();
            tabulate(&[cols.header(), cols.row(s, now_secs(), None)]).into()
        }
    }
}

/// The process's standard output; a closed pipe ends the command quietly.
#[derive(Debug)]
pub struct Out {
    stdout: std::io::Stdout,
}

/// Returned when stdout's reader went away: the command stops, and exits 0.
#[derive(Debug)]
pub struct Closed;

impl Out {
    /// Standard output.
    pub fn new() -> Self {
        Self {
            stdout: std::io::stdout(),
        }
    }

    /// Writes and flushes `s`.
    pub fn print(&mut self, s: &str) -> Result<(), Closed> {
        let mut lock = self.stdout.lock();
        lock.write_all(s.as_bytes())
            .and_then(|()| lock.flush())
            .map_err(|_| Closed)
    }
}

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_match_kubectl() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (185, "3m5s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 30 * 60, "5h30m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (2 * 86400 + 5 * 3600, "2d5h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400, "2y"),
            (731 * 86400, "2y1d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn table_layout_matches_kubectl() {
        let cols = Columns::default();
        let mut a = Secret::new("default", "db-credentials")
            .with_type("Opaque")
            .with_data("a", "1")
            .with_data("b", "2");
        a.metadata.creation_timestamp = Some(1000);
        let mut b = Secret::new("default", "tls")
            .with_type("kubernetes.io/tls")
            .with_data("tls.crt", "")
            .with_data("tls.key", "");
        b.metadata.creation_timestamp = Some(1000 - 3 * 86400);
        let t = tabulate(&[
            cols.header(),
            cols.row(&a, 1005, None),
            cols.row(&b, 1005, None),
        ]);
        assert_eq!(
            t,
            "NAME             TYPE                DATA   AGE\n\
             db-credentials   Opaque              2      5s\n\
             tls              kubernetes.io/tls   2      3d\n"
        );
        let all = Columns {
            namespace: true,
            labels: true,
            event: false,
        };
        let t = tabulate(&[all.header(), all.row(&a, 1000 + 200, None)]);
        assert_eq!(
            t,
            "NAMESPACE   NAME             TYPE     DATA   AGE     LABELS\n\
             default     db-credentials   Opaque   2      3m20s   <none>\n"
        );
    }

    #[test]
    fn watch_rows_keep_earlier_widths() {
        let mut widths = Vec::new();
        let head = tabulate_keeping(
            &[
                vec!["NAME".into(), "AGE".into()],
                vec!["a-long-name".into(), "1s".into()],
            ],
            &mut widths,
        );
        assert_eq!(head, "NAME          AGE\na-long-name   1s\n");
        assert_eq!(
            tabulate_keeping(&[vec!["b".into(), "2s".into()]], &mut widths),
            "b             2s\n"
        );
    }

    #[test]
    fn minimum_width_is_six() {
        let t = tabulate(&[vec!["A".into(), "B".into()], vec!["x".into(), "y".into()]]);
        assert_eq!(t, "A     B\nx     y\n");
    }

    #[test]
    fn formats() {
        assert!(matches!(parse_get_format("yaml"), Ok(OutputFormat::Yaml)));
        assert!(matches!(
            parse_get_format("jsonpath={.data.a}"),
            Ok(OutputFormat::JsonPath(_))
        ));
        assert!(parse_get_format("xml").is_err());
        assert!(parse_write_format("wide").is_err());
    }
}
