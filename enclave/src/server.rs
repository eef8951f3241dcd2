//! The enclave server: answers `ATTEST`, `REQUEST`, `SESSION` and `HEALTH` frames on many connections
//! at once. Decryption, replay and binding checks happen here; generation runs on the inference thread
//! and its text is sealed chunk by chunk as it arrives. Logs carry counts, timings and error codes,
//! never prompts, answers or keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confidant_protocol::chunks::ChunkSealer;
use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::message::{Ask, Trailer};
use confidant_protocol::request::{decapsulate, CONFIDANT_LABELS};
use confidant_protocol::session::{EnclaveSession, SessionLimits};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{system_rng, ProtocolError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::keys::KeyRing;
use crate::model::generate::{Conversation, Finish, GenerateParams};
use crate::model::worker::{Event, Job, Worker};
use crate::nsm::Nsm;

/// Limits and lifetimes.
#[derive(Clone)]
pub struct ServeConfig {
    pub key_ttl_secs: u64,
    pub key_grace_secs: u64,
    pub session_limits: SessionLimits,
    pub max_sessions: usize,
    /// Upper bound on `max_tokens` a client may ask for.
    pub max_new_tokens: u32,
    pub default_new_tokens: u32,
    /// How long a connection may stay silent between frames.
    pub idle_timeout: Duration,
    /// The system prompt before every conversation (from the sealed settings, when present).
    pub system_prompt: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The system prompt is a sealed setting: its length only.
        f.debug_struct("ServeConfig")
            .field("key_ttl_secs", &self.key_ttl_secs)
            .field("key_grace_secs", &self.key_grace_secs)
            .field("session_limits", &self.session_limits)
            .field("max_sessions", &self.max_sessions)
            .field("max_new_tokens", &self.max_new_tokens)
            .field("default_new_tokens", &self.default_new_tokens)
            .field("idle_timeout", &self.idle_timeout)
            .field("system_prompt_bytes", &self.system_prompt.len())
            .finish()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            key_ttl_secs: 3600,
            key_grace_secs: 300,
            session_limits: SessionLimits::default(),
            max_sessions: 1024,
            max_new_tokens: 512,
            default_new_tokens: 64,
            idle_timeout: Duration::from_secs(60),
            system_prompt: zeroize::Zeroizing::new(String::new()),
        }
    }
}

/// A chat session: its keys and, between turns, its model state (taken while a turn runs).
struct Slot {
    session: EnclaveSession,
    conversation: Option<Conversation>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    attestations: AtomicU64,
    requests: AtomicU64,
    turns: AtomicU64,
    rejected: AtomicU64,
}

/// Everything the server shares between connections.
pub struct Enclave {
    nsm: Box<dyn Nsm>,
    model_digest: [u8; 32],
    settings_digest: Option<[u8; 32]>,
    keys: Mutex<KeyRing>,
    sessions: Mutex<HashMap<[u8; 16], Slot>>,
    worker: Worker,
    config: ServeConfig,
    started: Instant,
    stats: Stats,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("nsm", &self.nsm.kind())
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A refusal sent as an `ERROR` frame.
#[derive(Debug)]
struct Refusal {
    code: &'static str,
    message: String,
}

impl From<ProtocolError> for Refusal {
    fn from(e: ProtocolError) -> Refusal {
        Refusal {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl Enclave {
    pub fn new(
        nsm: Box<dyn Nsm>,
        model_digest: [u8; 32],
        settings_digest: Option<[u8; 32]>,
        worker: Worker,
        config: ServeConfig,
    ) -> Enclave {
        let keys = KeyRing::new(now_unix(), config.key_ttl_secs, config.key_grace_secs);
        Enclave {
            nsm,
            model_digest,
            settings_digest,
            keys: Mutex::new(keys),
            sessions: Mutex::new(HashMap::new()),
            worker,
            config,
            started: Instant::now(),
            stats: Stats::default(),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyRing> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Slot>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A document for the current keys (fresh for a nonce; the cached one, at most a minute old,
    /// otherwise) and the key-config list it commits to.
    fn attest(&self, nonce: Option<[u8; 32]>) -> Result<(Vec<u8>, Vec<u8>), Refusal> {
        let now = now_unix();
        let mut keys = self.keys();
        keys.rotate_if_due(now);
        let generation = &mut keys.current;
        if nonce.is_none() {
            if let Some((doc, at)) = &generation.cached_document {
                if now.saturating_sub(*at) < 60 {
                    return Ok((doc.clone(), generation.list.clone()));
                }
            }
        }
        let user_data = UserData {
            kc: sha256(&generation.list),
            model: self.model_digest,
            settings: self.settings_digest,
            exp: generation.expires_unix,
        };
        let doc = self
            .nsm
            .attest(&user_data.encode(), nonce.as_ref().map(|n| &n[..]), None)
            .map_err(|e| refuse("nsm_failed", e.to_string()))?;
        generation.record_issued(&doc);
        if nonce.is_none() {
            generation.cached_document = Some((doc.clone(), now));
        }
        self.stats.attestations.fetch_add(1, Ordering::Relaxed);
        Ok((doc, generation.list.clone()))
    }

    fn health(&self) -> String {
        serde_json::json!({
            "status": "ok",
            "nsm": self.nsm.kind(),
            "uptime_s": self.started.elapsed().as_secs(),
            "sessions": self.sessions().len(),
            "connections": self.stats.connections.load(Ordering::Relaxed),
            "attestations": self.stats.attestations.load(Ordering::Relaxed),
            "requests": self.stats.requests.load(Ordering::Relaxed),
            "turns": self.stats.turns.load(Ordering::Relaxed),
            "rejected": self.stats.rejected.load(Ordering::Relaxed),
        })
        .to_string()
    }

    fn params(&self, ask: &Ask) -> Result<GenerateParams, Refusal> {
        let max = ask.max_tokens.unwrap_or(self.config.default_new_tokens);
        if max == 0 || max > self.config.max_new_tokens {
            return Err(refuse(
                "bad_request",
                format!(
                    "max_tokens must be within 1..={}",
                    self.config.max_new_tokens
                ),
            ));
        }
        let params = GenerateParams {
            max_new_tokens: max as usize,
            temperature: ask.temperature.unwrap_or(0.0),
            top_k: ask.top_k.map(|k| k as usize),
            top_p: ask.top_p,
            seed: ask.seed.unwrap_or(0),
            stop: vec!["\nUser:".to_string()],
        };
        params
            .validate()
            .map_err(|e| refuse("bad_request", e.to_string()))?;
        Ok(params)
    }

    fn first_turn(&self, prompt: &str) -> String {
        let system = self.config.system_prompt.as_str();
        let sep = if system.is_empty() { "" } else { "\n" };
        format!("{system}{sep}User: {prompt}\nAssistant:")
    }

    fn insert_session(&self, session: EnclaveSession) -> Result<[u8; 16], Refusal> {
        let mut sessions = self.sessions();
        if sessions.len() >= self.config.max_sessions {
            let now = now_ms();
            sessions.retain(|_, s| !s.session.is_expired(now));
            if sessions.len() >= self.config.max_sessions {
                return Err(refuse("busy", "too many open sessions"));
            }
        }
        let id = *session.id();
        sessions.insert(
            id,
            Slot {
                session,
                conversation: None,
            },
        );
        Ok(id)
    }

    /// Drops expired sessions (their keys and KV caches go with them).
    pub fn sweep(&self) -> usize {
        let now = now_ms();
        let mut sessions = self.sessions();
        let before = sessions.len();
        sessions.retain(|_, s| !s.session.is_expired(now));
        self.keys().rotate_if_due(now_unix());
        before - sessions.len()
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await
}

/// Serves one connection until it closes, errs or idles out.
pub async fn serve_connection<S>(enclave: Arc<Enclave>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    enclave.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(enclave.config.idle_timeout, rd.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let outcome = handle(&enclave, frame, &mut wr).await;
                    match outcome {
                        Ok(()) => {}
                        Err(Handled::Refused(r)) => {
                            enclave.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(code = r.code, "refused");
                            let _ = write_frame(
                                &mut wr,
                                &Frame::Error {
                                    code: r.code.into(),
                                    message: r.message,
                                },
                            )
                            .await;
                            let _ = wr.shutdown().await;
                            return;
                        }
                        Err(Handled::Gone) => return,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    enclave.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = write_frame(&mut wr, &Frame::error(&e)).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            }
        }
    }
    if let Err(e) = decoder.finish() {
        let _ = write_frame(&mut wr, &Frame::error(&e)).await;
    }
    let _ = wr.shutdown().await;
}

enum Handled {
    Refused(Refusal),
    /// The client went away.
    Gone,
}

impl From<Refusal> for Handled {
    fn from(r: Refusal) -> Handled {
        Handled::Refused(r)
    }
}

impl From<ProtocolError> for Handled {
    fn from(e: ProtocolError) -> Handled {
        Handled::Refused(e.into())
    }
}

async fn handle<W: AsyncWrite + Unpin>(
    enclave: &Arc<Enclave>,
    frame: Frame,
    wr: &mut W,
) -> Result<(), Handled> {
    match frame {
        Frame::Attest { nonce } => {
            let (document, key_configs) = enclave.attest(nonce)?;
            write_frame(
                wr,
                &Frame::Attestation {
                    document,
                    key_configs,
                },
            )
            .await
            .map_err(|_| Handled::Gone)
        }
        Frame::Health { .. } => write_frame(
            wr,
            &Frame::Health {
                status: enclave.health(),
            },
        )
        .await
        .map_err(|_| Handled::Gone),
        Frame::Request {
            attestation_sha256,
            encapsulated,
        } => request(enclave, attestation_sha256, &encapsulated, wr).await,
        Frame::Session {
            id,
            seq,
            ciphertext,
        } => turn(enclave, id, seq, &ciphertext, wr).await,
        other => Err(ProtocolError::UnexpectedFrame {
            got: other.name(),
            expected: "ATTEST, REQUEST, SESSION or HEALTH",
        }
        .into()),
    }
}

async fn request<W: AsyncWrite + Unpin>(
    enclave: &Arc<Enclave>,
    binding: [u8; 32],
    encapsulated: &[u8],
    wr: &mut W,
) -> Result<(), Handled> {
    let started = Instant::now();
    let key_id = *encapsulated.first().ok_or(ProtocolError::RequestDecrypt)?;
    let server = {
        let mut keys = enclave.keys();
        keys.rotate_if_due(now_unix());
        let generation = keys.bound_generation(key_id, &binding)?;
        let server = decapsulate(&generation.keys, &binding, encapsulated, &CONFIDANT_LABELS)?;
        keys.admit(key_id, &binding, server.enc())?;
        server
    };
    let ask = Ask::from_bytes(&server.plaintext)
        .map_err(|e| refuse("bad_request", format!("request body: {e}")))?;
    let params = enclave.params(&ask)?;
    let prompt = enclave.first_turn(&ask.prompt);
    drop(ask);
    let id = enclave.insert_session(server.session(now_ms(), enclave.config.session_limits))?;
    let (nonce, sealer) = server.respond(&mut system_rng());
    drop(server);
    write_frame(wr, &Frame::Response { nonce })
        .await
        .map_err(|_| Handled::Gone)?;
    enclave.stats.requests.fetch_add(1, Ordering::Relaxed);
    let outcome = stream_answer(enclave, None, prompt, params, sealer, wr).await;
    finish_turn(enclave, id, outcome, started)
}

async fn turn<W: AsyncWrite + Unpin>(
    enclave: &Arc<Enclave>,
    id: [u8; 16],
    seq: u64,
    ciphertext: &[u8],
    wr: &mut W,
) -> Result<(), Handled> {
    let started = Instant::now();
    // Authenticate and parse the turn before touching the conversation, so a bad turn leaves the
    // session as it was.
    let plaintext = {
        let mut sessions = enclave.sessions();
        let slot = sessions.get_mut(&id).ok_or(ProtocolError::UnknownSession)?;
        if slot.conversation.is_none() {
            return Err(refuse(
                "session_busy",
                "the previous turn of this session is still running",
            )
            .into());
        }
        slot.session.open_turn(seq, ciphertext, now_ms())?
    };
    let ask = Ask::from_bytes(&plaintext)
        .map_err(|e| refuse("bad_request", format!("turn body: {e}")))?;
    drop(plaintext);
    let params = enclave.params(&ask)?;
    let prompt = format!("\nUser: {}\nAssistant:", ask.prompt);
    let (conversation, sealer) = {
        let mut sessions = enclave.sessions();
        let slot = sessions.get_mut(&id).ok_or(ProtocolError::UnknownSession)?;
        let conversation = slot.conversation.take().ok_or_else(|| {
            refuse(
                "session_busy",
                "the previous turn of this session is still running",
            )
        })?;
        (Some(conversation), slot.session.reply_sealer(seq))
    };
    enclave.stats.turns.fetch_add(1, Ordering::Relaxed);
    let outcome = stream_answer(enclave, conversation, prompt, params, sealer, wr).await;
    finish_turn(enclave, id, outcome, started)
}

/// What a streamed answer left behind.
struct Streamed {
    conversation: Option<Conversation>,
    result: Result<(), Handled>,
    tokens: usize,
}

fn finish_turn(
    enclave: &Enclave,
    id: [u8; 16],
    outcome: Streamed,
    started: Instant,
) -> Result<(), Handled> {
    let mut sessions = enclave.sessions();
    match outcome.conversation {
        Some(c) if outcome.result.is_ok() => {
            if let Some(slot) = sessions.get_mut(&id) {
                slot.conversation = Some(c);
            }
        }
        // A failed or abandoned turn ends the session: its state is no longer what the client has.
        _ => {
            sessions.remove(&id);
        }
    }
    tracing::info!(
        tokens = outcome.tokens,
        ms = started.elapsed().as_millis() as u64,
        ok = outcome.result.is_ok(),
        "answered"
    );
    outcome.result
}

async fn stream_answer<W: AsyncWrite + Unpin>(
    enclave: &Arc<Enclave>,
    conversation: Option<Conversation>,
    prompt: String,
    params: GenerateParams,
    mut sealer: ChunkSealer,
    wr: &mut W,
) -> Streamed {
    let (tx, mut rx) = mpsc::channel::<Event>(256);
    let job = Job {
        conversation,
        prompt,
        params,
        // Runs on the inference thread; a closed channel (client gone) cancels generation.
        sink: Box::new(move |event| tx.blocking_send(event).is_ok()),
    };
    if enclave.worker.submit(job).is_err() {
        return Streamed {
            conversation: None,
            result: Err(refuse("busy", "the model is busy; try again").into()),
            tokens: 0,
        };
    }
    let mut out = Vec::with_capacity(256);
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(text) => {
                out.clear();
                if sealer.seal(text.as_bytes(), &mut out).is_err() {
                    return Streamed {
                        conversation: None,
                        result: Err(refuse("internal", "response too long").into()),
                        tokens: 0,
                    };
                }
                if write_frame(
                    wr,
                    &Frame::Chunk {
                        last: false,
                        sealed: std::mem::take(&mut out),
                    },
                )
                .await
                .is_err()
                {
                    // Dropping `rx` stops the generation.
                    return Streamed {
                        conversation: None,
                        result: Err(Handled::Gone),
                        tokens: 0,
                    };
                }
            }
            Event::Done {
                outcome,
                conversation,
            } => {
                let tokens = outcome.generated_tokens.len();
                if outcome.finish == Finish::Cancelled {
                    return Streamed {
                        conversation: None,
                        result: Err(Handled::Gone),
                        tokens,
                    };
                }
                let trailer = Trailer {
                    finish: outcome.finish.as_str().to_string(),
                    prompt_tokens: outcome.prompt_tokens as u64,
                    generated_tokens: tokens as u64,
                };
                out.clear();
                let sealed = sealer.seal_last(&trailer.to_bytes(), &mut out);
                let result = match sealed {
                    Ok(()) => write_frame(
                        wr,
                        &Frame::Chunk {
                            last: true,
                            sealed: out,
                        },
                    )
                    .await
                    .map_err(|_| Handled::Gone),
                    Err(_) => Err(refuse("internal", "response too long").into()),
                };
                return Streamed {
                    conversation: Some(conversation),
                    result,
                    tokens,
                };
            }
            Event::Failed(_) => {
                // The detail may mention token ids of the prompt: it stays inside.
                return Streamed {
                    conversation: None,
                    result: Err(refuse("generation_failed", "the model failed to answer").into()),
                    tokens: 0,
                };
            }
        }
    }
    Streamed {
        conversation: None,
        result: Err(refuse("generation_failed", "the model stopped without a result").into()),
        tokens: 0,
    }
}
