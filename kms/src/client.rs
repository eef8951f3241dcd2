//! The two KMS calls Confidant makes, through the AWS SDK: `GenerateDataKey` (the operator sealing
//! settings) and `Decrypt` with an attestation document as `Recipient` (the enclave at boot).
//!
//! The SDK is configured by hand — region, endpoint, credentials, HTTP client — rather than through
//! `aws-config`: an enclave has no profile files, no IMDS and no network but the tunnel.

use std::collections::HashMap;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyEncryptionMechanism, RecipientInfo};
use zeroize::Zeroizing;

use crate::transport::{Dial, TunnelClient};
use confidant_sealing::sealed;

/// How to reach KMS.
#[derive(Debug, Clone)]
pub struct KmsTarget {
    pub region: String,
    /// An endpoint URL other than the region's (local KMS-compatible servers, VPC endpoints).
    pub endpoint: Option<String>,
    /// Dial this for every connection (an enclave's vsock-proxy); TLS to the endpoint's host still
    /// runs end to end.
    pub tunnel: Option<Dial>,
}

/// A KMS call failed. The text carries KMS's error code and message (never request contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsCallError {
    #[error("KMS endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    #[error("KMS {operation}: {code}: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
    },
    #[error("KMS {operation}: could not reach KMS: {detail}")]
    Unreachable {
        operation: &'static str,
        detail: String,
    },
    #[error("KMS {operation}: the response lacks {field}")]
    Missing {
        operation: &'static str,
        field: &'static str,
    },
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
pub fn credentials_from_env() -> Result<Credentials, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        )),
        _ => Err(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (e.g. `eval \"$(aws configure export-credentials --format env)\"`)"
                .into(),
        ),
    }
}

/// An SDK client for `target`.
pub fn client(
    target: &KmsTarget,
    credentials: Credentials,
) -> Result<aws_sdk_kms::Client, KmsCallError> {
    let mut config = aws_sdk_kms::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(target.region.clone()))
        .credentials_provider(credentials);
    if let Some(url) = &target.endpoint {
        config = config.endpoint_url(url.clone());
    }
    let http = match (&target.tunnel, &target.endpoint) {
        (Some(dial), _) => Some(
            TunnelClient::tls(dial.clone())
                .map_err(|_| KmsCallError::Endpoint(format!("{dial:?}"), "TLS set-up failed"))?,
        ),
        (None, Some(url)) if url.starts_with("http://") => {
            // Plain HTTP only to a KMS-compatible server on this machine.
            let authority = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
                return Err(KmsCallError::Endpoint(
                    url.clone(),
                    "plain http is allowed to loopback only",
                ));
            }
            if !authority.contains(':') {
                return Err(KmsCallError::Endpoint(url.clone(), "give the port"));
            }
            Some(TunnelClient::plaintext(Dial::Tcp(authority.to_string())))
        }
        _ => None, // The SDK's own HTTPS client (operator machines).
    };
    if let Some(http) = http {
        config = config.http_client(http);
    }
    Ok(aws_sdk_kms::Client::from_conf(config.build()))
}

fn context() -> HashMap<String, String> {
    sealed::encryption_context().into_iter().collect()
}

fn call_error<E, R>(operation: &'static str, e: aws_sdk_kms::error::SdkError<E, R>) -> KmsCallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kms::error::SdkError;
    match &e {
        SdkError::ServiceError(s) => KmsCallError::Service {
            operation,
            code: s.err().code().unwrap_or("unknown").to_string(),
            message: s.err().message().unwrap_or("").to_string(),
        },
        _ => KmsCallError::Unreachable {
            operation,
            detail: aws_sdk_kms::error::DisplayErrorContext(&e).to_string(),
        },
    }
}

/// A fresh AES-256 data key under `key_id`, with the settings encryption context.
pub struct DataKey {
    /// The key ARN KMS reports.
    pub key_id: String,
    /// The encrypted copy, stored in the sealed file.
    pub blob: Vec<u8>,
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

pub async fn generate_data_key(
    client: &aws_sdk_kms::Client,
    key_id: &str,
) -> Result<DataKey, KmsCallError> {
    const OP: &str = "GenerateDataKey";
    let out = client
        .generate_data_key()
        .key_id(key_id)
        .key_spec(DataKeySpec::Aes256)
        .set_encryption_context(Some(context()))
        .send()
        .await
        .map_err(|e| call_error(OP, e))?;
    let missing = |field| KmsCallError::Missing {
        operation: OP,
        field,
    };
    let plaintext = Zeroizing::new(out.plaintext.ok_or(missing("Plaintext"))?.into_inner());
    Ok(DataKey {
        key_id: out.key_id.unwrap_or_else(|| key_id.to_string()),
        blob: out
            .ciphertext_blob
            .ok_or(missing("CiphertextBlob"))?
            .into_inner(),
        plaintext,
    })
}

/// What `Decrypt` with a `Recipient` returned.
#[derive(Debug)]
pub enum RecipientReply {
    /// The data key as CMS EnvelopedData to the attested key: the only acceptable answer.
    CiphertextForRecipient(Vec<u8>),
    /// The data key in plaintext: KMS (or whatever answered) ignored the attestation.
    PlaintextOnly,
    Neither,
}

/// `Decrypt` of `blob` under `key_id`, asking for the result to be encrypted to the key in
/// `attestation_document`.
pub async fn decrypt_for_recipient(
    client: &aws_sdk_kms::Client,
    key_id: &str,
    blob: &[u8],
    attestation_document: Vec<u8>,
) -> Result<RecipientReply, KmsCallError> {
    let out = client
        .decrypt()
        .key_id(key_id)
        .ciphertext_blob(Blob::new(blob))
        .set_encryption_context(Some(context()))
        .recipient(
            RecipientInfo::builder()
                .key_encryption_algorithm(KeyEncryptionMechanism::RsaesOaepSha256)
                .attestation_document(Blob::new(attestation_document))
                .build(),
        )
        .send()
        .await
        .map_err(|e| call_error("Decrypt", e))?;
    // A plaintext data key means the attestation was not honoured: refuse it even beside a
    // CiphertextForRecipient, and drop it zeroized.
    let plaintext = out.plaintext.map(|b| Zeroizing::new(b.into_inner()));
    Ok(match (out.ciphertext_for_recipient, plaintext) {
        (_, Some(p)) if !p.is_empty() => RecipientReply::PlaintextOnly,
        (Some(c), _) => RecipientReply::CiphertextForRecipient(c.into_inner()),
        (None, _) => RecipientReply::Neither,
    })
}
