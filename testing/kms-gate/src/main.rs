//! `confidant-kms-gate` (TEST ONLY): the attestation gate in front of a KMS-compatible test server
//! (moto).
//!
//! moto implements the KMS API but ignores `Recipient` and key policies. The gate adds what AWS KMS
//! does for Nitro Enclaves: it evaluates every call against the key policy (`confidant-ops
//! kms-policy`'s output, read by `confidant_sealing::policy`, which says what subset is enforced). For `Decrypt` with a `Recipient`, it first verifies the
//! attestation document against the given root, so the policy's `kms:RecipientAttestation:*`
//! conditions see its PCRs; it forwards the call without the recipient and returns the plaintext
//! only as `CiphertextForRecipient` — CMS EnvelopedData to the document's public key — never as
//! `Plaintext`. Allowed calls otherwise pass through unchanged. For tests and the local demo only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use confidant_kms::transport::{Dial, TunnelClient};
use confidant_sealing::envelope;
use confidant_sealing::policy::{Facts, KeyPolicy};
use confidant_verifier::{Policy, UnixMillis, Verifier, VerifyAt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Request bodies larger than this are refused (KMS's own limit is far below).
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-kms-gate",
    version,
    about = "Attestation gate in front of a KMS-compatible test server"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The KMS-compatible server (moto), host:port, plain HTTP.
    #[arg(long, value_name = "HOST:PORT")]
    upstream: String,
    /// Root certificate (PEM) attestation documents must chain to.
    #[arg(long, value_name = "PEM")]
    root: PathBuf,
    /// The key policy to enforce (JSON, as `confidant-ops kms-policy` prints it).
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Oldest acceptable document, in seconds.
    #[arg(long, default_value_t = 300)]
    max_age: u64,
    /// TEST ONLY: ignore `Recipient` and the key policy and pass moto's `Plaintext` through, as a
    /// KMS that ignored the attestation would.
    #[arg(long, hide = true)]
    ignore_recipient_test_only: bool,
}

struct Gate {
    upstream: String,
    verifier: Verifier,
    /// Chain and freshness only: the PCRs are the key policy's to judge.
    document_policy: Policy,
    key_policy: KeyPolicy,
    ignore_recipient: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confidant-kms-gate: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let pem =
        std::fs::read_to_string(&args.root).map_err(|e| format!("{}: {e}", args.root.display()))?;
    let roots = confidant_certs::pem::certificates_from_pem(&pem)
        .map_err(|e| format!("{}: {e}", args.root.display()))?;
    let verifier = Verifier::new(roots).map_err(|e| format!("--root: {}", e.detail()))?;
    let mut document_policy = Policy::default();
    document_policy.set_max_age(Some(std::time::Duration::from_secs(args.max_age)));
    let text =
        std::fs::read(&args.policy).map_err(|e| format!("{}: {e}", args.policy.display()))?;
    let key_policy =
        KeyPolicy::from_json(&text).map_err(|e| format!("{}: {e}", args.policy.display()))?;
    let gate = Arc::new(Gate {
        upstream: args.upstream,
        verifier,
        document_policy,
        key_policy,
        ignore_recipient: args.ignore_recipient_test_only,
    });
    let runtime = confidant_runtime::runtime(Some(2)).map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("{}: {e}", args.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        // One line on stdout that scripts and tests wait for.
        println!("listening {bound}");
        loop {
            let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let gate = gate.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let gate = gate.clone();
                    async move { Ok::<_, Infallible>(gate.handle(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

type Reply = http::Response<Full<Bytes>>;

/// A recipient whose attestation document verified.
struct Admitted {
    pcrs: BTreeMap<usize, Vec<u8>>,
    public_key: Vec<u8>,
}

/// The call's `EncryptionContext` (absent: empty); `None` if it is not a map of strings.
fn encryption_context(json: &Value) -> Option<BTreeMap<String, String>> {
    match json.get("EncryptionContext") {
        None | Some(Value::Null) => Some(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        Some(_) => None,
    }
}

/// A KMS-shaped JSON error.
fn kms_error(status: u16, kind: &str, message: &str) -> Reply {
    let body = json!({ "__type": kind, "message": message }).to_string();
    http::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

impl Gate {
    async fn handle(&self, req: http::Request<Incoming>) -> Reply {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return kms_error(
                    400,
                    "ValidationException",
                    "request body too large or broken",
                )
            }
        };
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(action) = target
            .strip_prefix("TrentService.")
            .filter(|op| !op.is_empty())
            .map(|op| format!("kms:{op}"))
        else {
            return kms_error(
                400,
                "UnknownOperationException",
                "not a KMS call (X-Amz-Target)",
            );
        };
        if self.ignore_recipient {
            return self.forward(parts, body).await.unwrap_or_else(|e| e);
        }
        let Ok(mut json) = serde_json::from_slice::<Value>(&body) else {
            return kms_error(400, "SerializationException", "the body is not JSON");
        };
        let Some(encryption_context) = encryption_context(&json) else {
            return kms_error(
                400,
                "ValidationException",
                "EncryptionContext must map strings to strings",
            );
        };
        let recipient = json.get("Recipient").cloned();
        let what = if recipient.is_some() {
            format!("{action} with Recipient")
        } else {
            action.clone()
        };
        if recipient.is_some() && action != "kms:Decrypt" {
            // Fail closed: the gate only knows how to honour a recipient for Decrypt.
            return kms_error(
                400,
                "UnsupportedOperationException",
                "Recipient is gated for Decrypt only",
            );
        }
        let admitted = match recipient.as_ref().map(|r| self.admit(r)).transpose() {
            Ok(a) => a,
            Err((kind, message)) => return kms_error(400, kind, &message),
        };
        let facts = Facts {
            pcrs: admitted.as_ref().map(|a| a.pcrs.clone()),
            encryption_context,
        };
        if let Some(reason) = self.key_policy.decide(&action, &facts).refusal() {
            eprintln!("gate: {what}: refused by the key policy: {reason}");
            return kms_error(
                400,
                "AccessDeniedException",
                &format!("{action} is not allowed by the key policy: {reason}"),
            );
        }
        let Some(Admitted { public_key, .. }) = admitted else {
            return self.forward(parts, body).await.unwrap_or_else(|e| e);
        };
        if let Some(map) = json.as_object_mut() {
            map.remove("Recipient");
        }
        let forwarded = Bytes::from(json.to_string());
        let reply = match self.forward(parts, forwarded).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        if reply.status() != 200 {
            return reply;
        }
        let Ok(body) = reply.into_body().collect().await.map(|b| b.to_bytes());
        let Ok(out) = serde_json::from_slice::<Value>(&body) else {
            return kms_error(500, "KMSInternalException", "upstream answer is not JSON");
        };
        let plaintext = out
            .get("Plaintext")
            .and_then(Value::as_str)
            .and_then(|p| B64.decode(p).ok())
            .map(Zeroizing::new);
        let Some(plaintext) = plaintext else {
            return kms_error(
                500,
                "KMSInternalException",
                "upstream answer has no Plaintext",
            );
        };
        let envelope = match envelope::build(&public_key, &plaintext, 1024) {
            Ok(e) => e,
            Err(e) => {
                return kms_error(
                    400,
                    "ValidationException",
                    &format!("Recipient public key: {e}"),
                )
            }
        };
        eprintln!("gate: kms:Decrypt with Recipient: released to the attested key");
        let body = json!({
            "KeyId": out.get("KeyId").cloned().unwrap_or(Value::Null),
            "EncryptionAlgorithm": out.get("EncryptionAlgorithm").cloned().unwrap_or(json!("SYMMETRIC_DEFAULT")),
            "CiphertextForRecipient": B64.encode(envelope),
        });
        http::Response::builder()
            .status(200)
            .header("content-type", "application/x-amz-json-1.1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_default()
    }

    /// Checks the recipient as KMS would. Refusals are KMS error types with a message.
    fn admit(&self, recipient: &Value) -> Result<Admitted, (&'static str, String)> {
        let invalid = |m: &str| ("ValidationException", m.to_string());
        if recipient
            .get("KeyEncryptionAlgorithm")
            .and_then(Value::as_str)
            != Some("RSAES_OAEP_SHA_256")
        {
            return Err(invalid(
                "Recipient.KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256",
            ));
        }
        let document = recipient
            .get("AttestationDocument")
            .and_then(Value::as_str)
            .and_then(|d| B64.decode(d).ok())
            .ok_or_else(|| invalid("Recipient.AttestationDocument is missing or not base64"))?;
        let verified = self
            .verifier
            .verify(
                &document,
                &self.document_policy,
                VerifyAt::Instant(UnixMillis::now()),
            )
            .map_err(|e| {
                eprintln!("gate: kms:Decrypt with Recipient: refused ({})", e.code());
                (
                    "AccessDeniedException",
                    format!(
                        "the attestation document does not verify: {}: {}",
                        e.code(),
                        e.detail()
                    ),
                )
            })?;
        let doc = verified.doc();
        let public_key = doc
            .public_key
            .as_ref()
            .map(|k| k.to_vec())
            .ok_or_else(|| invalid("the attestation document has no public_key"))?;
        let pcrs = doc.pcrs.iter().map(|(i, v)| (*i, v.to_vec())).collect();
        Ok(Admitted { pcrs, public_key })
    }

    /// Sends the request to the upstream server as is (headers kept, body replaced).
    async fn forward(&self, parts: http::request::Parts, body: Bytes) -> Result<Reply, Reply> {
        let unreachable = |m: String| kms_error(503, "KMSInternalException", &m);
        let mut request = http::Request::builder().method(parts.method).uri(format!(
            "http://{}{}",
            self.upstream,
            parts.uri.path()
        ));
        for (name, value) in &parts.headers {
            if name != http::header::CONTENT_LENGTH && name != http::header::HOST {
                request = request.header(name, value);
            }
        }
        let request = request
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(Full::new(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let client = TunnelClient::plaintext(Dial::Tcp(self.upstream.clone()));
        let response = client
            .send(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, Full::new(body)))
    }
}
