//! RFC 3339 timestamps as Kubernetes writes and reads them, through the `time` crate.
//!
//! - [`format_rfc3339`]: whole seconds in UTC, `2026-11-28T15:04:05Z` (`creationTimestamp`, the
//!   CLI's seed table, the mount agent's timestamped directories).
//! - [`format_rfc3339_nanos`]: nanoseconds in UTC, always nine digits,
//!   `2026-11-28T15:04:05.123456789Z` (audit records: fixed width, so they sort as text).
//! - [`parse_rfc3339`]: what Go's `time.Parse(time.RFC3339, ..)` accepts (bootstrap token
//!   expirations are written by Kubernetes tooling).

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::{Iso8601, Rfc3339};
use time::formatting::Formattable;

/// Formats seconds since the Unix epoch as RFC 3339 in UTC, as Kubernetes prints timestamps:
/// `2026-11-28T15:04:05Z`.
///
/// RFC 3339 has four-digit years only: a time before year 0 or after year 9999 (which only a
/// hostile or corrupt object carries) is written as the nearest time it can hold.
pub fn format_rfc3339(secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(secs.clamp(FIRST_SECOND, LAST_SECOND))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format(t, &Rfc3339)
}

/// Formats a time as RFC 3339 in UTC with nanoseconds, always nine digits:
/// `2026-11-28T15:04:05.123456789Z`. Times outside years 0 to 9999 are clamped as in
/// [`format_rfc3339`].
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    let nanos = OffsetDateTime::from(t).unix_timestamp_nanos().clamp(
        i128::from(FIRST_SECOND) * 1_000_000_000,
        i128::from(LAST_SECOND) * 1_000_000_000 + 999_999_999,
    );
    let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // ISO 8601's default profile is RFC 3339 with nine fractional digits and `Z` for UTC.
    format(t, &Iso8601::DEFAULT)
}

/// Formats a UTC time that is within years 0 to 9999, where neither description can fail.
fn format(t: OffsetDateTime, description: &impl Formattable) -> String {
    t.format(description).unwrap_or_default()
}

/// Parses an RFC 3339 date-time (`2006-01-02T15:04:05Z`, `...05.123+02:00`) as Go's
/// `time.Parse(time.RFC3339, ..)` accepts it, into (seconds, nanoseconds) since the Unix epoch.
///
/// Go is stricter than RFC 3339 (and the `time` crate) in three ways, kept here so that a value
/// means the same to Coffer as to Kubernetes: the separator is an upper-case `T`, UTC is an
/// upper-case `Z`, and there is no leap second `:60`.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.get(10) != Some(&b'T') || s.contains('z') || b.get(17..19) == Some(b"60") {
        return None;
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((t.unix_timestamp(), t.nanosecond()))
}

/// `0000-01-01T00:00:00Z`, the earliest second RFC 3339 can write.
const FIRST_SECOND: i64 = -62_167_219_200;
/// `9999-12-31T23:59:59Z`, the latest second RFC 3339 can write.
const LAST_SECOND: i64 = 253_402_300_799;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_795_878_245), "2026-11-28T15:04:05Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(i64::MIN), "0000-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn nanos_have_nine_digits() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_795_878_245, 120_000_000);
        assert_eq!(format_rfc3339_nanos(t), "2026-11-28T15:04:05.120000000Z");
        assert_eq!(
            format_rfc3339_nanos(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn parses_what_go_parses() {
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
            "2024-01-01t00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:60Z",
            "2016-12-31T23:59:60Z",
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

    #[test]
    fn round_trips() {
        for secs in [0, -1, 1_795_878_245, 253_402_300_799, -62_167_219_200] {
            assert_eq!(parse_rfc3339(&format_rfc3339(secs)), Some((secs, 0)));
        }
    }
}
