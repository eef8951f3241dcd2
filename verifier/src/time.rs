//! Wall-clock instants as unix milliseconds: the one time type for document timestamps, key expiry
//! and session lifetimes, so seconds and milliseconds are never mixed in bare integers.
//!
//! The verifier reads no clock: callers make an instant with [`UnixMillis::from_system_time`] (their
//! clock) or from a number they were given.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// An instant, milliseconds since the unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(u64);

impl UnixMillis {
    /// The epoch itself.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// An instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> UnixMillis {
        UnixMillis(ms)
    }

    /// An instant `secs` seconds after the epoch (saturating).
    pub const fn from_secs(secs: u64) -> UnixMillis {
        UnixMillis(secs.saturating_mul(1000))
    }

    /// A `SystemTime` as an instant; times before the epoch are the epoch.
    pub fn from_system_time(t: SystemTime) -> UnixMillis {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        UnixMillis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The system clock's current time. Only I/O shells call this; cores take `now` as an argument.
    pub fn now() -> UnixMillis {
        UnixMillis::from_system_time(SystemTime::now())
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole seconds since the epoch (rounded down).
    pub const fn as_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This instant plus `d`, saturating at the end of time.
    pub fn saturating_add(self, d: Duration) -> UnixMillis {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero if it is not after it.
    pub fn saturating_since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// RFC 3339 form, e.g. `2022-11-09T22:52:00.696Z`.
    pub fn to_rfc3339(self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| format!("{} ms after the epoch", self.0))
    }

    /// Parses an RFC 3339 time.
    pub fn parse_rfc3339(text: &str) -> Option<UnixMillis> {
        let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(UnixMillis)
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_milliseconds_convert_and_saturate() {
        let t = UnixMillis::from_secs(1_700_000_000);
        assert_eq!(t.as_millis(), 1_700_000_000_000);
        assert_eq!(UnixMillis::from_millis(1_999).as_secs(), 1);
        assert_eq!(
            t.saturating_add(Duration::from_millis(5))
                .saturating_since(t),
            Duration::from_millis(5)
        );
        assert_eq!(UnixMillis::EPOCH.saturating_since(t), Duration::ZERO);
        assert_eq!(
            UnixMillis::from_millis(u64::MAX).saturating_add(Duration::from_secs(1)),
            UnixMillis::from_millis(u64::MAX)
        );
        assert_eq!(UnixMillis::from_secs(u64::MAX).as_millis(), u64::MAX);
    }

    #[test]
    fn rfc3339_round_trips() {
        let t = UnixMillis::from_millis(1_668_034_320_696);
        assert_eq!(t.to_rfc3339(), "2022-11-09T22:52:00.696Z");
        assert_eq!(UnixMillis::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(UnixMillis::parse_rfc3339("yesterday"), None);
        assert_eq!(UnixMillis::parse_rfc3339("1969-12-31T23:59:59Z"), None);
    }
}
