//! `--at now|doc|UNIX_MS|RFC3339` and time formatting.

use confidant_verifier::VerifyAt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current time in unix milliseconds.
pub fn now_ms() -> u64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    u64::try_from(nanos / 1_000_000).unwrap_or(0)
}

/// Parses an `--at` value.
pub fn parse_at(value: &str) -> Result<VerifyAt, String> {
    match value {
        "now" => Ok(VerifyAt::Instant(now_ms())),
        "doc" => Ok(VerifyAt::DocumentTime),
        v if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map(VerifyAt::Instant)
            .map_err(|_| format!("--at {v}: out of range")),
        v => {
            let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                format!("--at {v}: expected now, doc, unix milliseconds or RFC 3339")
            })?;
            let ms = t.unix_timestamp_nanos() / 1_000_000;
            u64::try_from(ms)
                .map(VerifyAt::Instant)
                .map_err(|_| format!("--at {v}: before 1970"))
        }
    }
}

/// RFC 3339 form of unix milliseconds, e.g. `2022-11-09T22:52:00.696Z`.
pub fn format_ms(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// RFC 3339 form of unix seconds.
pub fn format_secs(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_at("doc"), Ok(VerifyAt::DocumentTime));
        assert_eq!(
            parse_at("1668034320696"),
            Ok(VerifyAt::Instant(1_668_034_320_696))
        );
        assert_eq!(
            parse_at("2022-11-09T22:52:00.696Z"),
            Ok(VerifyAt::Instant(1_668_034_320_696))
        );
        assert!(matches!(parse_at("now"), Ok(VerifyAt::Instant(t)) if t > 1_700_000_000_000));
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("1969-01-01T00:00:00Z").is_err());
        assert_eq!(format_ms(1_668_034_320_696), "2022-11-09T22:52:00.696Z");
    }
}
