//! AWS credentials for an enclave, handed in by the parent at boot: the enclave has no IMDS, so the
//! parent reads its instance role's credentials and serves them on a vsock port, in the very JSON
//! IMDS returns (`AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`). The credentials only let
//! the enclave *ask*; the key policy decides on the attestation document, which the parent cannot
//! forge.

use std::time::{Duration, SystemTime};

use aws_sdk_kms::config::Credentials;
use confidant_protocol::UnixMillis;
use serde::Deserialize;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::transport::Dial;

/// The most the parent may send (IMDS credentials are about 1.5 KB).
const MAX_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials from {0:?}: {1}")]
    Io(Dial, String),
    #[error("credentials: more than {MAX_BYTES} bytes")]
    TooLong,
    #[error("credentials: not IMDS credentials JSON ({0})")]
    Json(String),
    #[error("credentials: Expiration is not an RFC 3339 time")]
    Expiration,
    #[error("credentials: they expired at {0}")]
    Expired(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Imds {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// Parses IMDS-format credentials, refusing expired ones.
pub fn parse(json: &[u8], now: SystemTime) -> Result<Credentials, CredentialsError> {
    // serde's message may quote a value: give the position only.
    let imds: Imds = serde_json::from_slice(json)
        .map_err(|e| CredentialsError::Json(format!("line {}, column {}", e.line(), e.column())))?;
    let expiry = match &imds.expiration {
        None => None,
        Some(t) => {
            let at = UnixMillis::parse_rfc3339(t).ok_or(CredentialsError::Expiration)?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(at.as_millis());
            if at <= now {
                return Err(CredentialsError::Expired(t.clone()));
            }
            Some(at)
        }
    };
    Ok(Credentials::new(
        imds.access_key_id,
        imds.secret_access_key,
        imds.token,
        expiry,
        "parent-vsock",
    ))
}

/// Connects to the parent and reads one credentials document (until the parent closes).
pub async fn fetch(dial: &Dial) -> Result<Credentials, CredentialsError> {
    let io = |e: std::io::Error| CredentialsError::Io(dial.clone(), e.to_string());
    let mut buf = Zeroizing::new(Vec::new());
    let limit = (MAX_BYTES + 1) as u64;
    let read = async {
        match dial {
            Dial::Vsock { cid, port } => {
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await?
                    .take(limit)
                    .read_to_end(&mut buf)
                    .await
            }
            Dial::Tcp(addr) => {
                tokio::net::TcpStream::connect(addr)
                    .await?
                    .take(limit)
                    .read_to_end(&mut buf)
                    .await
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| CredentialsError::Io(dial.clone(), "no answer within 10 s".into()))?
        .map_err(io)?;
    if buf.len() > MAX_BYTES {
        return Err(CredentialsError::TooLong);
    }
    parse(&buf, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::config::ProvideCredentials;

    const IMDS: &str = r#"{
      "Code" : "Success", "LastUpdated" : "2026-11-25T10:00:00Z", "Type" : "AWS-HMAC",
      "AccessKeyId" : "ASIAEXAMPLE", "SecretAccessKey" : "c2VjcmV0",
      "Token" : "token", "Expiration" : "2026-11-25T16:00:00Z"
    }"#;

    fn at(rfc3339: &str) -> SystemTime {
        let t = UnixMillis::parse_rfc3339(rfc3339).expect("time");
        SystemTime::UNIX_EPOCH + Duration::from_millis(t.as_millis())
    }

    #[test]
    fn imds_json_parses_and_expired_credentials_are_refused() {
        let c = parse(IMDS.as_bytes(), at("2026-11-25T12:00:00Z")).expect("valid");
        assert_eq!(c.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(c.session_token(), Some("token"));
        assert_eq!(c.expiry(), Some(at("2026-11-25T16:00:00Z")));
        assert!(matches!(
            parse(IMDS.as_bytes(), at("2026-11-25T16:00:00Z")),
            Err(CredentialsError::Expired(_))
        ));
        let e = parse(br#"{"AccessKeyId":"a"}"#, at("2026-11-25T12:00:00Z")).expect_err("missing");
        assert!(matches!(e, CredentialsError::Json(_)), "{e}");
        let bad = IMDS.replace("2026-11-25T16:00:00Z", "tomorrow");
        assert_eq!(
            parse(bad.as_bytes(), at("2026-11-25T12:00:00Z")).err(),
            Some(CredentialsError::Expiration)
        );
    }

    #[tokio::test]
    async fn fetched_from_the_parent_over_a_stream() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let body = IMDS.replace("2026-11-25T16:00:00Z", "2999-01-01T00:00:00Z");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(body.as_bytes()).await.expect("write");
        });
        let c = fetch(&Dial::Tcp(addr)).await.expect("fetch");
        let provided = c.provide_credentials().await.expect("provide");
        assert_eq!(provided.secret_access_key(), "c2VjcmV0");
    }
}
