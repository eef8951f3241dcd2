//! `--at now|doc|UNIX_MS|RFC3339` and time formatting.

use confidant_verifier::{UnixMillis, VerifyAt};

/// Parses an `--at` value.
pub fn parse_at(value: &str) -> Result<VerifyAt, String> {
    match value {
        "now" => Ok(VerifyAt::Instant(UnixMillis::now())),
        "doc" => Ok(VerifyAt::DocumentTime),
        v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(|ms| VerifyAt::Instant(UnixMillis::from_millis(ms)))
            .map_err(|_| format!("--at {v}: out of range")),
        v => UnixMillis::parse_rfc3339(v)
            .map(VerifyAt::Instant)
            .ok_or_else(|| {
                format!("--at {v}: expected now, doc, unix milliseconds or RFC 3339 (after 1970)")
            }),
    }
}

/// RFC 3339 form of unix milliseconds, e.g. `2022-11-09T22:52:00.696Z`.
pub fn format_ms(ms: u64) -> String {
    UnixMillis::from_millis(ms).to_rfc3339()
}

/// RFC 3339 form of unix seconds (certificate times; none are before 1970).
pub fn format_secs(secs: i64) -> String {
    UnixMillis::from_secs(u64::try_from(secs).unwrap_or(0)).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_at("doc"), Ok(VerifyAt::DocumentTime));
        assert_eq!(
            parse_at("1668034320696"),
            Ok(VerifyAt::Instant(UnixMillis::from_millis(
                1_668_034_320_696
            )))
        );
        assert_eq!(
            parse_at("2022-11-09T22:52:00.696Z"),
            Ok(VerifyAt::Instant(UnixMillis::from_millis(
                1_668_034_320_696
            )))
        );
        assert!(
            matches!(parse_at("now"), Ok(VerifyAt::Instant(t)) if t.as_millis() > 1_700_000_000_000)
        );
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("1969-01-01T00:00:00Z").is_err());
        assert_eq!(format_ms(1_668_034_320_696), "2022-11-09T22:52:00.696Z");
    }
}
