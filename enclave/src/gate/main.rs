//! `confidant-kms-gate`: the attestation gate in front of a KMS-compatible test server (moto).
//!
//! moto implements the KMS API but ignores `Recipient` and key policies. The gate adds what AWS KMS
//! does for Nitro Enclaves: for `Decrypt` with a `Recipient`, it verifies the attestation document
//! against the given root and requires the given PCRs (as a key policy's
//! `kms:RecipientAttestation:PCRn` conditions do), forwards the call without the recipient, and
//! returns the plaintext only as `CiphertextForRecipient` — CMS EnvelopedData to the document's
//! public key — never as `Plaintext`. Every other call passes through unchanged. For tests and the
//! local demo only.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use confidant_enclave::kms::envelope;
use confidant_enclave::kms::transport::{Dial, TunnelClient};
use confidant_verifier::{Policy, Verifier, VerifyAt};
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
    /// Required PCR value, IDX=HEX; repeatable. At least one.
    #[arg(long = "pcr", value_name = "IDX=HEX", required = true)]
    pcrs: Vec<String>,
    /// Oldest acceptable document, in seconds.
    #[arg(long, default_value_t = 300)]
    max_age: u64,
    /// TEST ONLY: ignore `Recipient` and pass moto's `Plaintext` through, as a KMS that ignored the
    /// attestation would.
    #[arg(long, hide = true)]
    ignore_recipient_test_only: bool,
}

struct Gate {
    upstream: String,
    verifier: Verifier,
    policy: Policy,
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
    let mut policy = Policy {
        max_age_ms: Some(args.max_age * 1000),
        ..Policy::default()
    };
    for p in &args.pcrs {
        let (i, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--pcr {p:?}: expected IDX=HEX"))?;
        let i: usize = i.parse().map_err(|_| format!("--pcr {p:?}: bad index"))?;
        let v = hex::decode(v).map_err(|_| format!("--pcr {p:?}: bad hex"))?;
        policy
            .pin_pcr(i, v)
            .map_err(|e| format!("--pcr {p:?}: {e}"))?;
    }
    let gate = Arc::new(Gate {
        upstream: args.upstream,
        verifier,
        policy,
        ignore_recipient: args.ignore_recipient_test_only,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
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
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let recipient = json.as_ref().and_then(|j| j.get("Recipient")).cloned();
        let Some(recipient) = recipient.filter(|_| !self.ignore_recipient) else {
            return self.forward(parts, body).await.unwrap_or_else(|e| e);
        };
        if target != "TrentService.Decrypt" {
            // Fail closed: the gate only knows how to honour a recipient for Decrypt.
            return kms_error(
                400,
                "UnsupportedOperationException",
                "Recipient is gated for Decrypt only",
            );
        }
        let public_key = match self.admit(&recipient) {
            Ok(k) => k,
            Err((kind, message)) => return kms_error(400, kind, &message),
        };
        let mut json = json.unwrap_or_default();
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
        eprintln!("gate: Decrypt with Recipient: released to the attested key");
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

    /// Checks the recipient as KMS would, returning the document's public key.
    /// Refusals are KMS error types with a message.
    fn admit(&self, recipient: &Value) -> Result<Vec<u8>, (&'static str, String)> {
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let verified = self
            .verifier
            .verify(&document, &self.policy, VerifyAt::Instant(now))
            .map_err(|e| {
                eprintln!("gate: Decrypt with Recipient: refused ({})", e.code());
                (
                    "AccessDeniedException",
                    format!(
                        "the attestation document does not satisfy the key policy: {}: {}",
                        e.code(),
                        e.detail()
                    ),
                )
            })?;
        let key = verified
            .doc()
            .public_key
            .as_ref()
            .map(|k| k.to_vec())
            .ok_or_else(|| invalid("the attestation document has no public_key"))?;
        Ok(key)
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
