//! The results: a compact table, or one JSON object (`--json`).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::Op;

/// How the run was set up, printed above the results.
#[derive(Debug)]
pub(crate) struct RunInfo {
    /// The store loaded: `coffer` or `etcd`.
    pub(crate) target: &'static str,
    /// The address loaded.
    pub(crate) server: String,
    /// Set when the server was started by `--spawn`.
    pub(crate) spawn: Option<SpawnInfo>,
    pub(crate) connections: u32,
    pub(crate) concurrency: u32,
    pub(crate) value_size: u32,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) namespace: String,
}

/// The in-process server's settings.
#[derive(Debug)]
pub(crate) struct SpawnInfo {
    /// Writes acknowledged only once fsync'd.
    pub(crate) durable: bool,
    pub(crate) data_dir: String,
    /// The data directory is removed afterwards.
    pub(crate) temporary: bool,
    pub(crate) aead: String,
}

/// One phase's measurements.
#[derive(Debug)]
pub(crate) struct PhaseReport {
    pub(crate) op: Op,
    /// Successful calls started in the measured window.
    pub(crate) ok: u64,
    /// Failed calls started in the measured window.
    pub(crate) errors: u64,
    /// From the measured window's start to the last call's end.
    pub(crate) elapsed: Duration,
    /// Latency of every measured call (successes and errors), in microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// The first few error messages.
    pub(crate) error_samples: Vec<String>,
}

impl PhaseReport {
    /// Successful calls per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at `q` (0..=100), in µs; 0 when nothing was measured.
    fn percentile(&self, q: f64) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.value_at_percentile(q)
        }
    }

    fn max(&self) -> u64 {
        if self.latency_us.is_empty() {
            0
        } else {
            self.latency_us.max()
        }
    }

    /// The phase's name, with "(durable)" or "(relaxed)" for writes to a spawned server.
    fn label(&self, info: &RunInfo) -> String {
        match (&info.spawn, self.op) {
            (Some(s), Op::Create | Op::Update) => format!(
                "{} ({})",
                self.op.name(),
                if s.durable { "durable" } else { "relaxed" }
            ),
            _ => self.op.name().to_owned(),
        }
    }
}

/// A one-line description of the setup.
fn describe(info: &RunInfo) -> String {
    let server = match &info.spawn {
        Some(s) => format!(
            "in-process server {} ({} writes, {}, data in {}{})",
            info.server,
            if s.durable {
                "durable fsync'd"
            } else {
                "relaxed"
            },
            s.aead,
            s.data_dir,
            if s.temporary { ", removed" } else { "" }
        ),
        None => format!("{} server {}", info.target, info.server),
    };
    format!(
        "{server}; {} connections, {} callers, {}-byte values, {:.1} s per phase{}",
        info.connections,
        info.concurrency,
        info.value_size,
        info.duration.as_secs_f64(),
        if info.warmup.is_zero() {
            String::new()
        } else {
            format!(" after {:.1} s warm-up", info.warmup.as_secs_f64())
        }
    )
}

/// Formats microseconds as milliseconds with about three significant digits.
fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.3}ms")
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// The human-readable report.
pub(crate) fn table(info: &RunInfo, reports: &[PhaseReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", describe(info));
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "PHASE", "OPS/S", "OK", "ERRORS", "P50", "P90", "P99", "MAX"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<18} {:>10.0} {:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            r.label(info),
            r.ops_per_sec(),
            r.ok,
            r.errors,
            ms(r.percentile(50.0)),
            ms(r.percentile(90.0)),
            ms(r.percentile(99.0)),
            ms(r.max()),
        );
    }
    for r in reports.iter().filter(|r| !r.error_samples.is_empty()) {
        let _ = writeln!(
            out,
            "{} errors (first {}):",
            r.op.name(),
            r.error_samples.len()
        );
        for e in &r.error_samples {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

/// The machine-readable report: latencies in microseconds.
pub(crate) fn json(info: &RunInfo, reports: &[PhaseReport]) -> Value {
    let phases: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "op": r.op.name(),
                "ok": r.ok,
                "errors": r.errors,
                "elapsed_secs": r.elapsed.as_secs_f64(),
                "ops_per_sec": r.ops_per_sec(),
                "latency_us": {
                    "p50": r.percentile(50.0),
                    "p90": r.percentile(90.0),
                    "p99": r.percentile(99.0),
                    "max": r.max(),
                    "mean": if r.latency_us.is_empty() { 0.0 } else { r.latency_us.mean() },
                },
                "error_samples": r.error_samples,
            })
        })
        .collect();
    json!({
        "target": info.target,
        "server": info.server,
        "spawned": info.spawn.as_ref().map(|s| json!({
            "durable": s.durable,
            "data_dir": s.data_dir,
            "temporary": s.temporary,
            "aead": s.aead,
        })),
        "connections": info.connections,
        "concurrency": info.concurrency,
        "value_size": info.value_size,
        "duration_secs": info.duration.as_secs_f64(),
        "warmup_secs": info.warmup.as_secs_f64(),
        "namespace": info.namespace,
        "phases": phases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_milliseconds() {
        assert_eq!(ms(183), "0.183ms");
        assert_eq!(ms(3_412), "3.41ms");
        assert_eq!(ms(25_100), "25.1ms");
        assert_eq!(ms(250_000), "250ms");
    }
}
