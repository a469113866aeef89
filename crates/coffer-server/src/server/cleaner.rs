//! The bootstrap token cleaner, as the Kubernetes `tokencleaner` controller: Secrets of type
//! `bootstrap.kubernetes.io/token` whose data `expiration` (RFC 3339) is in the past, or cannot be
//! parsed, are deleted. A token without `expiration` never expires.
//!
//! Each delete carries preconditions on the uid and the resource_version the cleaner saw, so a
//! token re-created or updated (say, its expiration extended) since the list is left alone; the
//! next round looks at it again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use coffer_core::model::validation::SECRET_TYPE_BOOTSTRAP_TOKEN;
use coffer_core::store::{ListOptions, Preconditions, Store, StoreError};

/// The data key holding a bootstrap token's expiry time.
pub const EXPIRATION_KEY: &str = "expiration";

/// What one cleaning round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Bootstrap tokens looked at.
    pub examined: usize,
    /// Tokens deleted.
    pub deleted: usize,
}

/// Runs [`clean_once`] every `interval` until `shutdown` is cancelled.
pub(crate) async fn run(store: Arc<Store>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match clean_once(&store, SystemTime::now()).await {
            Ok(r) if r.deleted > 0 => {
                tracing::info!(
                    deleted = r.deleted,
                    examined = r.examined,
                    "expired bootstrap tokens deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "bootstrap token cleaner round failed"),
        }
    }
}

/// One round: lists every bootstrap token and deletes those expired at `now`.
pub async fn clean_once(store: &Store, now: SystemTime) -> Result<CleanReport, StoreError> {
    let mut report = CleanReport::default();
    let mut opts = ListOptions {
        field_selector: format!("type={SECRET_TYPE_BOOTSTRAP_TOKEN}"),
        limit: 500,
        ..ListOptions::default()
    };
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
    loop {
        let page = store.list(&opts).await?;
        for token in &page.items {
            report.examined += 1;
            let expired = match token.data.get(EXPIRATION_KEY) {
                None => false,
                Some(v) => std::str::from_utf8(v.expose())
                    .ok()
                    .and_then(parse_rfc3339)
                    .is_none_or(|t| t < now),
            };
            if !expired {
                continue;
            }
            let m = &token.metadata;
            let pre = Preconditions {
                resource_version: m.resource_version,
                uid: Some(m.uid.clone()),
            };
            match store.delete_with(&m.namespace, &m.name, &pre).await {
                Ok(_) => {
                    report.deleted += 1;
                    tracing::info!(namespace = %m.namespace, name = %m.name, "deleted expired bootstrap token");
                }
                // Changed or gone since the list: the next round decides again.
                Err(
                    StoreError::NotFound { .. }
                    | StoreError::Conflict { .. }
                    | StoreError::UidMismatch { .. },
                ) => {}
                Err(e) => return Err(e),
            }
        }
        if page.continue_token.is_empty() {
            return Ok(report);
        }
        opts.continue_token = page.continue_token;
    }
}

/// Parses an RFC 3339 date-time (`2006-01-02T15:04:05Z`, `...05.123+02:00`) as Go's
/// `time.Parse(time.RFC3339, ..)` accepts it, into (seconds, nanoseconds) since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let lit = |at: usize, c: u8| b.get(at) == Some(&c);
    let year = num(0, 4)?;
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    let hour = num(11, 2)?;
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if !(lit(4, b'-') && lit(7, b'-') && lit(10, b'T') && lit(13, b':') && lit(16, b':')) {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if lit(i, b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &b[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        for (k, d) in digits.iter().enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
        }
    }
    let offset = match b.get(i) {
        Some(b'Z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && lit(i + 3, b':') => {
            let oh = num(i + 1, 2)?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some((secs, nanos))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_rfc3339("2000-03-01T00:00:00Z"),
            Some((951_868_800, 0))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:45.5+02:00"),
            Some((1_709_202_645, 500_000_000))
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T12:30:45.123456789-00:30"),
            Some((1_709_211_645, 123_456_789))
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
        for bad in [
            "",
            "garbage",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00z",
            "2024-01-01T00:00:00+0200",
            "2024-01-01T00:00:00Zjunk",
            "2024-1-01T00:00:00Z",
            "+024-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
