//! Boot failures of enclaves, reported to the parent. A production enclave has no console, so a
//! failed boot (say `kms_refused`: the key policy did not admit its measurements) would go unseen:
//! `confidant-enclave serve --report-boot vsock:3:5006` sends one line, `confidant-boot-failure
//! <code>`, before it exits, and the relay (`--boot-reports vsock:5006`) logs it and counts it in its
//! metrics. Only a stable code crosses — never a message, a path or a secret — and anything else is
//! dropped.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use confidant_protocol::endpoint::Endpoint;
use confidant_runtime::endpoint::Listener;
use tokio::io::AsyncReadExt;

/// The line's prefix.
pub const PREFIX: &str = "confidant-boot-failure ";
/// Longest line read.
const MAX_LINE: usize = 128;
/// Distinct codes counted; later ones count as `other`.
const MAX_CODES: usize = 32;

/// Boot failures by code, since the relay started.
#[derive(Debug, Default)]
pub struct BootFailures(Mutex<BTreeMap<String, u64>>);

impl BootFailures {
    fn record(&self, code: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = if m.contains_key(code) || m.len() < MAX_CODES {
            code
        } else {
            "other"
        };
        *m.entry(key.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// The code of a report line, if it is one.
pub fn parse(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    let code = line.strip_prefix(PREFIX)?;
    let ok = !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    ok.then_some(code)
}

/// Listens for reports until the relay stops.
pub async fn listen(
    endpoint: &Endpoint,
    failures: std::sync::Arc<BootFailures>,
) -> Result<(), String> {
    let listener = Listener::bind(endpoint)
        .await
        .map_err(|e| format!("--boot-reports {endpoint}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut conn) = listener.accept().await else {
                continue;
            };
            let failures = failures.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(MAX_LINE);
                let mut limited = (&mut conn).take(MAX_LINE as u64);
                let read = limited.read_to_end(&mut buf);
                if tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .is_err()
                {
                    return;
                }
                match parse(&buf) {
                    Some(code) => {
                        tracing::error!(code, "an enclave failed to boot");
                        failures.record(code);
                    }
                    None => tracing::warn!(bytes = buf.len(), "a malformed boot report, dropped"),
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_code_is_taken() {
        assert_eq!(
            parse(b"confidant-boot-failure kms_refused\n"),
            Some("kms_refused")
        );
        assert_eq!(
            parse(b"confidant-boot-failure kms_refused"),
            None,
            "no newline"
        );
        assert_eq!(parse(b"confidant-boot-failure Secret Prompt\n"), None);
        assert_eq!(parse(b"confidant-boot-failure \n"), None);
        assert_eq!(parse(b"hello kms_refused\n"), None);
        let long = format!("{PREFIX}{}\n", "a".repeat(41));
        assert_eq!(parse(long.as_bytes()), None);
    }

    #[test]
    fn codes_are_bounded() {
        let f = BootFailures::default();
        for i in 0..40 {
            f.record(&format!("c{i}"));
        }
        f.record("c0");
        let s = f.snapshot();
        assert_eq!(s.len(), MAX_CODES + 1);
        assert!(s.contains(&("other".to_string(), 8)));
        assert!(s.contains(&("c0".to_string(), 2)));
    }
}
