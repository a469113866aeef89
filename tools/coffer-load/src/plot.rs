//! `coffer-load plot` (the `plot` feature): tables and PNG charts of benchmark results.
//!
//! `plot vs-etcd --dir D` reads the `--json` outputs of `coffer-load unary` and `coffer-load
//! watch` that `scripts/bench-vs-etcd.sh` leaves in `D` (for both targets), and writes a
//! markdown table (with the ratio Coffer/etcd), a CSV, and a PNG: throughput and p99 latency
//! against the number of callers. `plot soak --csv F` charts a soak's samples (server RSS and
//! open fds over time).
//!
//! Text is drawn with `ab_glyph` from a TTF file read at run time (`--font`, by default
//! DejaVu Sans from Debian's fonts-dejavu-core), so neither fontconfig nor freetype is needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use plotters::prelude::*;
use serde_json::Value;

/// The font used when `--font` is not given.
const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Flags of `coffer-load plot`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PlotArgs {
    #[command(subcommand)]
    kind: PlotKind,
    /// A TTF font for the labels.
    #[arg(long, global = true, default_value = DEFAULT_FONT)]
    font: PathBuf,
}

#[derive(Debug, Clone, Subcommand)]
enum PlotKind {
    /// Coffer against etcd: table, CSV and chart from a results directory.
    VsEtcd {
        /// The directory holding `unary-<target>-c<N>.json` and `watch-<target>.json`.
        #[arg(long)]
        dir: PathBuf,
        /// The PNG to write.
        #[arg(long)]
        png: PathBuf,
        /// The markdown table to write.
        #[arg(long)]
        markdown: PathBuf,
        /// The CSV to write.
        #[arg(long)]
        csv: PathBuf,
    },
    /// A soak's samples: server RSS and open fds over time.
    Soak {
        /// The CSV written by `coffer-load soak --csv`.
        #[arg(long)]
        csv: PathBuf,
        /// The PNG to write.
        #[arg(long)]
        png: PathBuf,
        /// The soak's JSON report (`--json`): its KMS rotation is marked on the chart.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

/// Runs `coffer-load plot`.
pub(crate) fn run(args: PlotArgs) -> Result<ExitCode, String> {
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "cannot read the font {} ({e}): install fonts-dejavu-core or give --font",
            args.font.display()
        )
    })?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| format!("{} is not a usable TTF font", args.font.display()))?;
    match args.kind {
        PlotKind::VsEtcd {
            dir,
            png,
            markdown,
            csv,
        } => vs_etcd(&dir, &png, &markdown, &csv)?,
        PlotKind::Soak { csv, png, report } => {
            let mark = match report {
                Some(r) => read_json(&r)?["rotation"]["at_secs"].as_f64(),
                None => None,
            };
            soak(&csv, &png, mark)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One unary phase of one run: (target, op, callers) -> (ops/s, p50 µs, p99 µs, errors).
type Unary = BTreeMap<(String, String, u64), (f64, u64, u64, u64)>;

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

fn load(dir: &Path) -> Result<(Unary, BTreeMap<String, Value>), String> {
    let mut unary = Unary::new();
    let mut watch = BTreeMap::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let v = read_json(&path)?;
        let target = v["target"].as_str().unwrap_or("coffer").to_owned();
        if let Some(phases) = v["phases"].as_array() {
            let callers = v["concurrency"].as_u64().unwrap_or(0);
            for p in phases {
                let op = p["op"].as_str().unwrap_or("?").to_owned();
                unary.insert(
                    (target.clone(), op, callers),
                    (
                        p["ops_per_sec"].as_f64().unwrap_or(0.0),
                        p["latency_us"]["p50"].as_u64().unwrap_or(0),
                        p["latency_us"]["p99"].as_u64().unwrap_or(0),
                        p["errors"].as_u64().unwrap_or(0),
                    ),
                );
            }
        } else if v.get("delivery_latency_us").is_some() {
            watch.insert(target, v);
        }
    }
    Ok((unary, watch))
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "n/a".into()
    }
}

/// What each op is called in the table.
fn op_label(op: &str) -> &str {
    match op {
        "create" => "put, new key (Create)",
        "update" => "put, existing key (Update)",
        "get" => "get",
        other => other,
    }
}

fn vs_etcd(dir: &Path, png: &Path, markdown: &Path, csv: &Path) -> Result<(), String> {
    let (unary, watch) = load(dir)?;
    if unary.is_empty() {
        return Err(format!("no unary results in {}", dir.display()));
    }
    let mut ops: Vec<String> = unary.keys().map(|(_, op, _)| op.clone()).collect();
    ops.sort_by_key(|op| match op.as_str() {
        "get" => 0,
        "update" => 1,
        _ => 2,
    });
    ops.dedup();
    let mut callers: Vec<u64> = unary.keys().map(|(_, _, c)| *c).collect();
    callers.sort_unstable();
    callers.dedup();

    let mut md = String::new();
    let mut out_csv = String::from(
        "kind,op,callers,coffer_ops_per_sec,etcd_ops_per_sec,ratio,coffer_p50_us,etcd_p50_us,coffer_p99_us,etcd_p99_us,coffer_errors,etcd_errors\n",
    );
    let _ = writeln!(
        md,
        "| op | callers | Coffer ops/s | etcd ops/s | Coffer/etcd | Coffer p50 / p99 ms | etcd p50 / p99 ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    let zero = (0.0, 0, 0, 0);
    for op in &ops {
        for &c in &callers {
            let co = unary
                .get(&("coffer".to_owned(), op.clone(), c))
                .unwrap_or(&zero);
            let et = unary
                .get(&("etcd".to_owned(), op.clone(), c))
                .unwrap_or(&zero);
            let _ = writeln!(
                md,
                "| {} | {c} | {:.0} | {:.0} | **{}** | {} / {} | {} / {} |",
                op_label(op),
                co.0,
                et.0,
                ratio(co.0, et.0),
                ms(co.1),
                ms(co.2),
                ms(et.1),
                ms(et.2)
            );
            let _ = writeln!(
                out_csv,
                "unary,{op},{c},{:.1},{:.1},{:.3},{},{},{},{},{},{}",
                co.0,
                et.0,
                if et.0 > 0.0 { co.0 / et.0 } else { 0.0 },
                co.1,
                et.1,
                co.2,
                et.2,
                co.3,
                et.3
            );
        }
    }
    if let (Some(co), Some(et)) = (watch.get("coffer"), watch.get("etcd")) {
        let p = |v: &Value, q: &str| v["delivery_latency_us"][q].as_u64().unwrap_or(0);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let _ = writeln!(md);
        let q = |v: &Value, m: &str, q: &str| v[m][q].as_u64().unwrap_or(0);
        let _ = writeln!(
            md,
            "| watch fan-out | streams | delivered / expected | sent -> event p50 / p99 ms | ack -> event p50 / p99 ms | write p50 / p99 ms | server bytes per stream |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        for (name, v) in [("Coffer", co), ("etcd", et)] {
            let _ = writeln!(
                md,
                "| {name} | {}/{} | {}/{} | {} / {} | {} / {} | {} / {} | {:.0} |",
                v["established"],
                v["streams"],
                v["delivered"],
                v["expected"],
                ms(q(v, "delivery_from_send_us", "p50")),
                ms(q(v, "delivery_from_send_us", "p99")),
                ms(p(v, "p50")),
                ms(p(v, "p99")),
                ms(q(v, "update_latency_us", "p50")),
                ms(q(v, "update_latency_us", "p99")),
                f(v, "rss_bytes_per_stream"),
            );
        }
        let r = |m: &str, k: &str| ratio(q(co, m, k) as f64, q(et, m, k) as f64);
        let _ = writeln!(
            md,
            "| Coffer/etcd (lower is better) | | | {} / {} | {} / {} | {} / {} | {} |",
            r("delivery_from_send_us", "p50"),
            r("delivery_from_send_us", "p99"),
            r("delivery_latency_us", "p50"),
            r("delivery_latency_us", "p99"),
            r("update_latency_us", "p50"),
            r("update_latency_us", "p99"),
            ratio(f(co, "rss_bytes_per_stream"), f(et, "rss_bytes_per_stream")),
        );
        let errs = |v: &Value| v["errors"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out_csv,
            "watch,delivery,{},{:.1},{:.1},{:.3},{},{},{},{},{},{}",
            co["streams"],
            f(co, "delivered_per_sec"),
            f(et, "delivered_per_sec"),
            f(co, "delivered_per_sec") / f(et, "delivered_per_sec").max(1e-9),
            q(co, "delivery_from_send_us", "p50"),
            q(et, "delivery_from_send_us", "p50"),
            q(co, "delivery_from_send_us", "p99"),
            q(et, "delivery_from_send_us", "p99"),
            errs(co),
            errs(et)
        );
    }
    std::fs::write(markdown, &md)
        .map_err(|e| format!("cannot write {}: {e}", markdown.display()))?;
    std::fs::write(csv, &out_csv).map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
    chart_vs_etcd(png, &unary, &ops, &callers, &watch).map_err(|e| format!("chart: {e}"))?;
    print!("{md}");
    Ok(())
}

type ChartResult = Result<(), Box<dyn std::error::Error>>;

fn chart_vs_etcd(
    png: &Path,
    unary: &Unary,
    ops: &[String],
    callers: &[u64],
    watch: &BTreeMap<String, Value>,
) -> ChartResult {
    let root = BitMapBackend::new(png, (1500, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Coffer vs etcd, same machine, same run (1 KiB values, durable writes)",
        ("sans-serif", 24),
    )?;
    let panels = root.split_evenly((1, 3));
    let colors = |target: &str, op: &str| -> RGBColor {
        match (target, op) {
            ("coffer", "get") => RGBColor(0, 90, 200),
            ("coffer", "update") => RGBColor(0, 160, 60),
            ("coffer", _) => RGBColor(120, 60, 200),
            (_, "get") => RGBColor(230, 120, 0),
            (_, "update") => RGBColor(200, 30, 30),
            _ => RGBColor(150, 110, 60),
        }
    };
    // x: the caller counts, evenly spaced (index i stands for callers[i]).
    let n = callers.len();
    let x_of = |c: u64| callers.iter().position(|&x| x == c).unwrap_or(0) as f64;
    let x_label = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 {
            callers
                .get(i as usize)
                .map(|c| c.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let x_range = -0.3..(n.max(2) as f64 - 0.7);
    // Throughput (linear).
    if let Some(panel) = panels.first() {
        let max_y = unary.values().map(|v| v.0).fold(0.0f64, f64::max).max(1.0) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption("throughput (ops/s, higher is better)", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range.clone(), 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("concurrent callers")
            .x_labels(n * 4 + 1)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        draw_lines(&mut chart, unary, ops, callers, &colors, &x_of, |v| v.0)?;
        legend(&mut chart)?;
    }
    // p99 latency (log).
    if let Some(panel) = panels.get(1) {
        let lat = |v: &(f64, u64, u64, u64)| (v.2 as f64 / 1000.0).max(0.01);
        let max_y = unary.values().map(lat).fold(0.1f64, f64::max) * 2.0;
        let min_y = unary.values().map(lat).fold(f64::MAX, f64::min).min(max_y) / 2.0;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                "p99 latency (ms, log scale, lower is better)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x_range, (min_y..max_y).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("concurrent callers")
            .x_labels(n * 4 + 1)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|y| {
                if *y < 1.0 {
                    format!("{y:.2}")
                } else {
                    format!("{y:.0}")
                }
            })
            .label_style(("sans-serif", 14))
            .draw()?;
        draw_lines(&mut chart, unary, ops, callers, &colors, &x_of, lat)?;
        legend(&mut chart)?;
    }
    // The watch fan-out: delivery p50 and p99 per target.
    if let Some(panel) = panels.get(2) {
        let mut bars: Vec<(String, f64, RGBColor)> = Vec::new();
        for (target, color) in [
            ("coffer", RGBColor(0, 90, 200)),
            ("etcd", RGBColor(230, 120, 0)),
        ] {
            if let Some(v) = watch.get(target) {
                for q in ["p50", "p99"] {
                    let us = v["delivery_from_send_us"][q].as_u64().unwrap_or(0);
                    bars.push((format!("{target} {q}"), us as f64 / 1000.0, color));
                }
            }
        }
        let streams = watch
            .values()
            .next()
            .and_then(|v| v["streams"].as_u64())
            .unwrap_or(0);
        let max_y = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1.0) * 1.2;
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("watch: update sent -> event, {streams} watchers (ms)"),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..bars.len().max(1) as f64, 0.0..max_y)?;
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len().max(1) * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v, c))| {
            Rectangle::new([(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)], c.filled())
        }))?;
        chart.draw_series(bars.iter().enumerate().map(|(i, (_, v, _))| {
            Text::new(
                format!("{v:.2}"),
                (i as f64 + 0.3, *v + max_y * 0.03),
                ("sans-serif", 14),
            )
        }))?;
    }
    root.present()?;
    Ok(())
}

type Chart<'a, Y> =
    ChartContext<'a, BitMapBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

/// One line per (target, op): Coffer with circles, etcd with triangles.
fn draw_lines<'a, Y>(
    chart: &mut Chart<'a, Y>,
    unary: &Unary,
    ops: &[String],
    callers: &[u64],
    colors: &dyn Fn(&str, &str) -> RGBColor,
    x_of: &dyn Fn(u64) -> f64,
    value: impl Fn(&(f64, u64, u64, u64)) -> f64,
) -> ChartResult
where
    Y: Ranged<ValueType = f64>,
{
    for target in ["coffer", "etcd"] {
        for op in ops {
            let points: Vec<(f64, f64)> = callers
                .iter()
                .filter_map(|c| {
                    unary
                        .get(&(target.to_owned(), op.clone(), *c))
                        .map(|v| (x_of(*c), value(v)))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            let color = colors(target, op);
            let (width, dashed) = if target == "coffer" {
                (3, false)
            } else {
                (2, true)
            };
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))?
                .label(format!("{target} {}", op_label(op)))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            if dashed {
                chart.draw_series(
                    points
                        .iter()
                        .map(|p| TriangleMarker::new(*p, 6, color.filled())),
                )?;
            } else {
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            }
        }
    }
    Ok(())
}

fn legend<Y>(chart: &mut Chart<'_, Y>) -> ChartResult
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// One row of a soak CSV.
#[derive(Debug, Clone, Copy)]
struct Row {
    secs: f64,
    rss_mib: f64,
    fds: f64,
}

fn soak(csv: &Path, png: &Path, mark: Option<f64>) -> Result<(), String> {
    let text =
        std::fs::read_to_string(csv).map_err(|e| format!("cannot read {}: {e}", csv.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        let num = |i: usize| -> Result<f64, String> {
            cols.get(i)
                .and_then(|c| c.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("{}: line {}: bad column {i}", csv.display(), n + 1))
        };
        rows.push(Row {
            secs: num(0)?,
            rss_mib: num(1)? / 1024.0,
            fds: num(2)?,
        });
    }
    if rows.is_empty() {
        return Err(format!("{}: no samples", csv.display()));
    }
    chart_soak(png, &rows, mark).map_err(|e| format!("chart: {e}"))
}

fn chart_soak(png: &Path, rows: &[Row], mark: Option<f64>) -> ChartResult {
    let root = BitMapBackend::new(png, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "coffer-load soak: server RSS and open file descriptors",
        ("sans-serif", 24),
    )?;
    let panels = root.split_evenly((2, 1));
    let max_x = rows.iter().map(|r| r.secs).fold(1.0f64, f64::max);
    type Series = (&'static str, fn(&Row) -> f64, RGBColor);
    let series: [Series; 2] = [
        ("RSS (MiB)", |r| r.rss_mib, RGBColor(0, 90, 200)),
        ("open fds", |r| r.fds, RGBColor(200, 30, 30)),
    ];
    for (panel, (name, f, color)) in panels.iter().zip(series) {
        let max_y = rows.iter().map(f).fold(1.0f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .margin(12)
            .caption(name, ("sans-serif", 18))
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .label_style(("sans-serif", 14))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart.draw_series(LineSeries::new(
            rows.iter().map(|r| (r.secs, f(r))),
            color.stroke_width(2),
        ))?;
        if let Some(m) = mark {
            chart.draw_series(LineSeries::new(
                vec![(m, 0.0), (m, max_y)],
                BLACK.mix(0.5).stroke_width(1),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                "KMS rotation",
                (m, max_y * 0.95),
                ("sans-serif", 14),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}
