//! Wall-clock helpers: epoch milliseconds and RFC 3339 timestamps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2024-05-01T12:34:56.789Z` for the current time.
pub fn rfc3339_now() -> String {
    rfc3339(epoch_ms())
}

/// The last millisecond RFC 3339's four-digit year can show (9999-12-31T23:59:59.999Z).
const LAST_MS: u64 = 253_402_300_799_999;

/// `YYYY-MM-DDThh:mm:ss.mmmZ` for epoch milliseconds (UTC). A clock past the year 9999 shows
/// that year's last millisecond: humantime refuses to format it, and a log line must not panic.
pub fn rfc3339(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS));
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            super::rfc3339(1_714_566_896_789),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(super::rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
