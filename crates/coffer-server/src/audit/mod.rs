//! The audit log: one JSON line per request saying who did what to which Secret, and how it
//! ended. It never holds Secret data; values that must be correlated but not read (the
//! credential a caller used, a label selector) are written as HMAC-SHA256s under a key that is
//! random per process unless `--audit-hmac-key-file` gives one.
//!
//! A line:
//!
//! ```json
//! {"time":"2026-11-28T23:59:01.123Z","user":"alice","groups":["dev","system:authenticated"],
//!  "auth":"token","credential":"9f2c...","verb":"get","namespace":"prod","name":"db",
//!  "code":"Ok","resource_version":42,"source":"127.0.0.1:50514","connection":7}
//! ```
//!
//! Writing: each line is one `write` to a file opened for appending, so lines from concurrent
//! requests never interleave. A failed write drops the file handle; the next record reopens the
//! file. SIGHUP reopens it too (for log rotation). Every failure is counted here
//! ([`Auditor::errors`], which the metrics renderer reads as `coffer_audit_errors_total`) and
//! logged. With `fail_closed`, a request is refused with
//! `UNAVAILABLE` when its record cannot be written after it ran, and, once any write has failed,
//! before it runs until the log takes a marker line again ([`Auditor::ready`]); otherwise the
//! request goes on.
//!
//! Refusals that a flood can cause before the caller is known (unauthenticated calls, calls
//! over the connection's or the server's request rate) are sampled
//! ([`Auditor::sample_refusal`]): at most [`REFUSAL_LINES_PER_SECOND`] lines a second (bursts of
//! [`REFUSAL_LINE_BURST`]); the next refusal line written is preceded by one
//! `{"time":...,"event":"audit refusals sampled out","count":N}` line, and every refusal is
//! counted in the metrics whether or not it was written. Denials of authenticated callers are
//! always written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ring::hmac;
use serde::Serialize;

use crate::throttle::TokenBucket;

/// The audit log could not be written.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {reason}")]
pub struct AuditError {
    /// The log's path.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// The user (`system:anonymous` when authentication is off; empty when it failed).
    pub user: &'a str,
    /// The user's groups.
    pub groups: &'a [String],
    /// How the caller authenticated (`x509`, `token`, `unix-peer`, `none`).
    pub auth: &'a str,
    /// An HMAC of the credential, to correlate calls of one credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
    /// The verb.
    pub verb: &'a str,
    /// The namespace (empty: all namespaces).
    pub namespace: &'a str,
    /// The name (absent for a list or watch of many).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// An HMAC of the label selector, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector_hmac: Option<String>,
    /// The WatchMany watch id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_id: Option<u64>,
    /// The outcome: the code's audit name (`Ok`, `PermissionDenied`, ...; see
    /// [`coffer_kms::code::audit_name`]).
    pub code: String,
    /// The resource version the request read or wrote (0 when none).
    pub resource_version: u64,
    /// The client's address (`IP:PORT`, or `unix:uid=N`).
    pub source: &'a str,
    /// The connection's id (unique per accepted connection).
    pub connection: u64,
}

/// The sustained rate of sampled refusal lines (see the module doc).
pub const REFUSAL_LINES_PER_SECOND: f64 = 5.0;
/// The burst of sampled refusal lines.
pub const REFUSAL_LINE_BURST: f64 = 20.0;

/// The audit log writer.
pub struct Auditor {
    path: Option<PathBuf>,
    fail_closed: bool,
    key: hmac::Key,
    file: Mutex<Option<File>>,
    /// False from a failed open or write until a write succeeds again.
    healthy: AtomicBool,
    /// Failed opens and writes since start: counted where they happen, read by the metrics.
    errors: AtomicU64,
    /// The budget of sampled refusal lines.
    refusal_lines: TokenBucket,
    /// Refusal lines not written since start (read by the metrics).
    refusals_sampled_out: AtomicU64,
    /// Refusal lines not written since the last one written.
    refusals_pending: AtomicU64,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("path", &self.path)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// An auditor writing to `path` (none: records are dropped, HMACs still work). `key`: the
    /// HMAC key; `None` draws a random one for this process. A log that cannot be opened now is
    /// reported and retried on the next record.
    pub fn new(path: Option<PathBuf>, fail_closed: bool, key: Option<&[u8]>) -> Self {
        let key = match key {
            Some(k) => hmac::Key::new(hmac::HMAC_SHA256, k),
            None => {
                let mut k = zeroize::Zeroizing::new([0u8; 32]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut());
                hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
            }
        };
        let a = Self {
            path,
            fail_closed,
            key,
            file: Mutex::new(None),
            healthy: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            refusal_lines: TokenBucket::new(REFUSAL_LINES_PER_SECOND, REFUSAL_LINE_BURST),
            refusals_sampled_out: AtomicU64::new(0),
            refusals_pending: AtomicU64::new(0),
        };
        if let Some(p) = &a.path {
            match open(p) {
                Ok(f) => *a.lock() = Some(f),
                Err(e) => a.failed(&e),
            }
        }
        a
    }

    /// Whether requests fail when the log cannot be written.
    pub fn fail_closed(&self) -> bool {
        self.fail_closed
    }

    /// Records that could not be written (and failed opens) since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Refusal lines left out by sampling since start.
    pub fn refusals_sampled_out(&self) -> u64 {
        self.refusals_sampled_out.load(Ordering::Relaxed)
    }

    /// Whether the line of a refusal a flood can cause (see the module doc) is written: true
    /// within the sampling budget (after a line counting those left out since the last one),
    /// false otherwise (the refusal is counted as sampled out). Always false without a log.
    pub fn sample_refusal(&self) -> bool {
        if self.path.is_none() {
            return false;
        }
        if !self.refusal_lines.try_take() {
            self.refusals_sampled_out.fetch_add(1, Ordering::Relaxed);
            self.refusals_pending.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let count = self.refusals_pending.swap(0, Ordering::Relaxed);
        if count > 0 {
            let line = SampledOut {
                time: now_rfc3339(),
                event: "audit refusals sampled out",
                count,
            };
            // A failure is counted and logged by write_line; the refusal's own line follows.
            let _ = self.write_line(serde_json::to_vec(&line).unwrap_or_default());
        }
        true
    }

    /// Whether a log is configured.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The first 16 bytes of HMAC-SHA256(key, `value`), in hex.
    pub fn hmac(&self, value: &[u8]) -> String {
        let tag = hmac::sign(&self.key, value);
        hex::encode(&tag.as_ref()[..16])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks, before a request runs, that the log can be written: after a failure, it is
    /// reopened and must take a marker line (`{"time":...,"event":"audit log writable"}`)
    /// before any request runs again.
    pub fn ready(&self) -> Result<(), AuditError> {
        if self.path.is_none() || self.healthy.load(Ordering::Acquire) {
            return Ok(());
        }
        let marker = Marker {
            time: now_rfc3339(),
            event: "audit log writable",
        };
        let line = serde_json::to_vec(&marker).unwrap_or_default();
        self.write_line(line)
    }

    /// Writes one record (a no-op without a log). A failure is counted and logged, and
    /// returned.
    pub fn write(&self, record: &Record<'_>) -> Result<(), AuditError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        match serde_json::to_vec(record) {
            Ok(line) => self.write_line(line),
            Err(e) => {
                let e = error(path, format!("cannot encode a record: {e}"));
                self.failed(&e);
                Err(e)
            }
        }
    }

    /// Appends `line` and a newline in one write, (re)opening the file if needed.
    fn write_line(&self, mut line: Vec<u8>) -> Result<(), AuditError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        line.push(b'\n');
        let mut file = self.lock();
        let result = (|| {
            if file.is_none() {
                *file = Some(open(path)?);
            }
            match file.as_mut() {
                Some(f) => f
                    .write_all(&line)
                    .map_err(|e| error(path, format!("write: {e}"))),
                None => Err(error(path, "not open".into())),
            }
        })();
        if let Err(e) = result {
            *file = None;
            drop(file);
            self.failed(&e);
            return Err(e);
        }
        self.healthy.store(true, Ordering::Release);
        Ok(())
    }

    /// Closes and reopens the log (after it was rotated; on SIGHUP).
    pub fn reopen(&self) -> Result<(), AuditError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut file = self.lock();
        *file = None;
        match open(path) {
            Ok(f) => {
                *file = Some(f);
                Ok(())
            }
            Err(e) => {
                drop(file);
                self.failed(&e);
                Err(e)
            }
        }
    }

    fn failed(&self, e: &AuditError) {
        self.healthy.store(false, Ordering::Release);
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %e, fail_closed = self.fail_closed, "audit log write failed");
    }
}

fn error(path: &Path, reason: String) -> AuditError {
    AuditError {
        path: path.display().to_string(),
        reason,
    }
}

/// Mode bits the audit log must not have: group write, and any access by others (records name
/// users and Secrets; whoever can write the log can forge or hide them).
const AUDIT_FORBIDDEN_MODE: u32 = 0o027;

/// Opens the log for appending, creating it owner-only. A symbolic link is not followed
/// (`O_NOFOLLOW`: whoever can replace the log with a link must not redirect the records into
/// another file), and a log open to others ([`AUDIT_FORBIDDEN_MODE`]) is refused.
fn open(path: &Path) -> Result<File, AuditError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut o = OpenOptions::new();
    o.append(true).create(true).mode(0o600);
    o.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    let file = o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
            error(path, "is a symbolic link; refusing to follow it".into())
        } else {
            error(path, format!("cannot open: {e}"))
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| error(path, format!("cannot stat: {e}")))?;
    let mode = meta.permissions().mode() & 0o7777;
    // A regular file's mode is checked; a device (a pipe to a log collector, /dev/null) is the
    // operator's explicit choice.
    if meta.is_file() && mode & AUDIT_FORBIDDEN_MODE != 0 {
        return Err(error(
            path,
            format!(
                "has mode {mode:04o}: it must not be writable by group or open to others (chmod 600)"
            ),
        ));
    }
    Ok(file)
}

/// Checks, at start, an audit log that already exists: not a symbolic link, and not open to
/// others (see [`open`]). A missing log is fine: it is created owner-only.
pub fn check_existing(path: &Path) -> Result<(), AuditError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error(path, format!("cannot stat: {e}"))),
        Ok(m) if m.file_type().is_symlink() => Err(error(
            path,
            "is a symbolic link; refusing to follow it".into(),
        )),
        Ok(m) if m.is_file() => {
            use std::os::unix::fs::PermissionsExt;
            let mode = m.permissions().mode() & 0o7777;
            if mode & AUDIT_FORBIDDEN_MODE != 0 {
                return Err(error(
                    path,
                    format!(
                        "has mode {mode:04o}: it must not be writable by group or open to others (chmod 600)"
                    ),
                ));
            }
            Ok(())
        }
        // Anything else is reported when it is opened.
        Ok(_) => Ok(()),
    }
}

/// The line [`Auditor::ready`] writes after a failure.
#[derive(Serialize)]
struct Marker {
    time: String,
    event: &'static str,
}

/// The line saying how many refusal lines sampling left out.
#[derive(Serialize)]
struct SampledOut {
    time: String,
    event: &'static str,
    count: u64,
}

/// Now, in RFC 3339 (UTC) with nanoseconds.
pub fn now_rfc3339() -> String {
    coffer_core::model::timestamp::format_rfc3339_nanos(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(groups: &'a [String]) -> Record<'a> {
        Record {
            time: now_rfc3339(),
            user: "alice",
            groups,
            auth: "token",
            credential: Some("c"),
            verb: "get",
            namespace: "ns",
            name: Some("n"),
            label_selector_hmac: None,
            watch_id: None,
            code: "Ok".into(),
            resource_version: 3,
            source: "127.0.0.1:1",
            connection: 1,
        }
    }

    #[test]
    fn writes_lines_and_reports_failures() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let a = Auditor::new(Some(path.clone()), true, Some(b"k"));
        let groups = vec!["dev".to_owned()];
        a.write(&record(&groups)).expect("write");
        a.write(&record(&groups)).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        let v: serde_json::Value =
            serde_json::from_str(text.lines().next().unwrap_or("")).expect("json");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["resource_version"], 3);
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(a.errors(), 0);

        // A directory cannot be opened as the log.
        let bad = Auditor::new(Some(dir.path().to_owned()), true, None);
        assert!(bad.ready().is_err());
        assert!(bad.write(&record(&groups)).is_err());
        assert!(bad.errors() >= 2);
        // /dev/full opens but refuses writes: after the first failure, ready() fails too.
        if Path::new("/dev/full").exists() {
            let full = Auditor::new(Some("/dev/full".into()), true, None);
            assert!(full.ready().is_ok());
            assert!(full.write(&record(&groups)).is_err());
            assert!(full.ready().is_err());
        }
        // Recovery: a marker line, then records again.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        let log = sub.join("a.log");
        let r = Auditor::new(Some(log.clone()), true, None);
        std::fs::remove_dir_all(&sub).expect("rm");
        assert!(r.reopen().is_err());
        assert!(r.ready().is_err());
        std::fs::create_dir(&sub).expect("mkdir");
        r.ready().expect("ready again");
        r.write(&record(&groups)).expect("write");
        let text = std::fs::read_to_string(&log).expect("read");
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.contains("audit log writable")),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn hmac_is_keyed() {
        let a = Auditor::new(None, false, Some(b"k1"));
        let b = Auditor::new(None, false, Some(b"k2"));
        assert_eq!(a.hmac(b"x"), a.hmac(b"x"));
        assert_ne!(a.hmac(b"x"), b.hmac(b"x"));
        assert_eq!(a.hmac(b"x").len(), 32);
    }
}
