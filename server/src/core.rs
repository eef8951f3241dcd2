//! The state machine: streams, their exchanges, and the jobs answering them.
//!
//! Each stream carries one exchange: `ATTEST` → `ATTESTATION`; `HEALTH` → `HEALTH`; `REQUEST` →
//! `RESPONSE`, `CHUNK`…(final); `SESSION` → `CHUNK`…(final); `CLOSE` → `CLOSE`; or an `ERROR`. The
//! core then closes the stream. A stream must deliver its frame in time: a first frame within
//! `first_frame_timeout` of opening, and each frame within `frame_timeout` of its first byte, so an
//! idle or dripping peer cannot hold a stream. Logs carry counts, timings and codes, never prompts,
//! answers or keys.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use chacha20::ChaCha20Rng;
use confidant_nsm::Nsm;
use confidant_protocol::chunks::ChunkSealer;
use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::message::{Ask, Trailer};
use confidant_protocol::receipt::{self, Receipt, ReceiptSigner};
use confidant_protocol::shape;
use confidant_protocol::user_data::{sha256, Limits, UserData};
use confidant_protocol::{Code, ProtocolError, UnixMillis};
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{Identity, ServeConfig};
use crate::inference::{
    AnswerParams, ConversationId, EngineStatus, InferenceEvent, InferenceFailure, InferenceRequest,
    JobId,
};
use crate::keys::KeyRing;
use crate::sessions::{SessionTable, TableFull};
use crate::Refusal;

/// Names a stream (one exchange) between the shell and the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// What the core asks of its shell, in order.
#[derive(Debug)]
pub enum Output {
    /// Send these bytes (one or more encoded frames) on the stream.
    Transmit { stream: StreamId, bytes: Vec<u8> },
    /// Nothing more will be sent on the stream: shut it down once its bytes are out.
    Close { stream: StreamId },
    /// Start answering; report with [`Core::inference_event`].
    Submit(InferenceRequest),
    /// Stop a job (its stream is gone); it reports nothing more.
    Cancel(JobId),
    /// Drop a conversation's model state (its session ended).
    Forget(ConversationId),
}

/// An answer streaming into a stream.
#[derive(Debug)]
struct Answer {
    job: JobId,
    sealer: ChunkSealer,
    /// The session this turn belongs to; `None` for a one-shot question.
    session: Option<[u8; 16]>,
    started: UnixMillis,
    /// What this answer's receipt will state, gathered as it streams.
    receipt: Draft,
    /// The model is still producing it (a shaped answer outlives its job until its last chunk).
    computing: bool,
    /// The traffic shape, unless the question opted out.
    pacing: Option<Pacing>,
}

/// A shaped answer's schedule: one chunk of one size every cadence until done and a bucket full.
#[derive(Debug)]
struct Pacing {
    next: UnixMillis,
    /// Chunks sent so far.
    sent: u64,
    /// Text produced and not yet sent.
    pending: Zeroizing<Vec<u8>>,
    /// The final chunk's padded plaintext, once the model is done.
    last: Option<Vec<u8>>,
    tokens: u64,
}

/// A receipt in the making: what the question was, and the answer's text hashed as it is sealed.
struct Draft {
    document: [u8; 32],
    request: [u8; 32],
    question: [u8; 32],
    answer: Sha256,
    previous: Option<[u8; 32]>,
}

impl std::fmt::Debug for Draft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Draft")
    }
}

#[derive(Debug)]
enum StreamState {
    /// Waiting for the exchange's one frame.
    Open,
    /// A job is answering.
    Answering(Box<Answer>),
    /// The exchange is over; input is ignored until the shell reports the stream gone.
    Done,
}

#[derive(Debug)]
struct Stream {
    decoder: FrameDecoder,
    state: StreamState,
    opened: UnixMillis,
    /// When the bytes now pending in the decoder began to arrive.
    frame_started: Option<UnixMillis>,
    /// A `ROUTE` frame came first (at most one, and only first).
    routed: bool,
}

#[derive(Debug, Default)]
struct Stats {
    streams: u64,
    attestations: u64,
    requests: u64,
    turns: u64,
    closed_sessions: u64,
    evicted_sessions: u64,
    rejected: u64,
    answered: u64,
    deadlines: u64,
}

/// The server core.
pub struct Core {
    config: ServeConfig,
    identity: Identity,
    nsm: Box<dyn Nsm>,
    keys: KeyRing,
    sessions: SessionTable,
    streams: HashMap<StreamId, Stream>,
    /// Which stream each running job answers.
    jobs: HashMap<JobId, StreamId>,
    next_stream: u64,
    next_job: u64,
    next_conversation: u64,
    rng: ChaCha20Rng,
    /// This enclave instance (random at boot): attested in `user_data`, named by `ROUTE` frames.
    instance: [u8; 16],
    /// Signs every answer's receipt; made at boot, its public key attested as `rk`.
    receipts: ReceiptSigner,
    /// When each shaped answer's next chunk is due, earliest first (stale entries are skipped).
    schedule: BinaryHeap<Reverse<(UnixMillis, StreamId)>>,
    /// When deadlines, expired sessions and key rotation are next checked.
    next_upkeep: UnixMillis,
    out: VecDeque<Output>,
    stats: Stats,
    engine: EngineStatus,
    started: UnixMillis,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("nsm", &self.nsm.kind())
            .field("streams", &self.streams.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core attesting through `nsm`, with randomness from `seed` (the shell draws it from the
    /// operating system; tests fix it).
    pub fn new(
        nsm: Box<dyn Nsm>,
        identity: Identity,
        config: ServeConfig,
        seed: [u8; 32],
        now: UnixMillis,
    ) -> Core {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let keys = KeyRing::new(now, config.key_ttl, config.key_grace, &mut rng);
        let mut instance = [0u8; 16];
        let mut seed = Zeroizing::new([0u8; 32]);
        {
            use rand_core::Rng;
            rng.fill_bytes(&mut instance);
            rng.fill_bytes(&mut seed[..]);
        }
        Core {
            instance,
            receipts: ReceiptSigner::from_seed(seed),
            schedule: BinaryHeap::new(),
            next_upkeep: now,
            sessions: SessionTable::new(config.max_sessions),
            config,
            identity,
            nsm,
            keys,
            streams: HashMap::new(),
            jobs: HashMap::new(),
            next_stream: 0,
            next_job: 0,
            next_conversation: 0,
            rng,
            out: VecDeque::new(),
            stats: Stats::default(),
            engine: EngineStatus {
                alive: true,
                ..EngineStatus::default()
            },
            started: now,
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A new stream (a connection, or a multiplexed stream on one).
    pub fn accept(&mut self, now: UnixMillis) -> StreamId {
        self.next_stream += 1;
        let id = StreamId(self.next_stream);
        self.streams.insert(
            id,
            Stream {
                decoder: FrameDecoder::default(),
                state: StreamState::Open,
                opened: now,
                frame_started: None,
                routed: false,
            },
        );
        self.stats.streams += 1;
        id
    }

    /// Streams the core holds (open, answering, or waiting for the shell to report them gone).
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Bytes received on `stream`.
    pub fn receive(&mut self, stream: StreamId, bytes: &[u8], now: UnixMillis) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.decoder.pending() == 0 && !bytes.is_empty() {
            s.frame_started = Some(now);
        }
        s.decoder.push(bytes);
        loop {
            let Some(s) = self.streams.get_mut(&stream) else {
                return;
            };
            if matches!(s.state, StreamState::Done) {
                return; // The exchange is over: the rest is ignored.
            }
            match s.decoder.next_frame() {
                Ok(None) => return,
                Ok(Some(frame)) => {
                    s.frame_started = (s.decoder.pending() > 0).then_some(now);
                    if !matches!(s.state, StreamState::Open) {
                        // One exchange per stream.
                        let got = frame.name();
                        self.fail(
                            stream,
                            ProtocolError::UnexpectedFrame {
                                got,
                                expected: "nothing after the exchange's frame",
                            }
                            .into(),
                        );
                        return;
                    }
                    self.handle(stream, frame, now);
                }
                Err(e) => {
                    self.fail(stream, e.into());
                    return;
                }
            }
        }
    }

    /// The peer finished sending on `stream` (normal once its frame is sent).
    pub fn finish(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        if matches!(s.state, StreamState::Done) {
            return;
        }
        if let Err(e) = s.decoder.finish() {
            self.fail(stream, e.into());
        } else if matches!(s.state, StreamState::Open) {
            // Nothing asked: nothing to answer.
            self.end_stream(stream);
        }
    }

    /// The stream is gone (reset, closed, or its writer failed): a running job is cancelled and its
    /// session ended, since the client will not see the rest of the answer.
    pub fn closed(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.remove(&stream) {
            if let StreamState::Answering(answer) = s.state {
                self.jobs.remove(&answer.job);
                if answer.computing {
                    self.out.push_back(Output::Cancel(answer.job));
                }
                self.end_turn(&answer, false);
            }
        }
    }

    /// Periodic upkeep: shaped answers' chunks, frame deadlines, expired sessions (with their model
    /// state), key rotation.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        self.pace(now);
        // Shaped answers call in every cadence; the rest is upkeep, once a second is enough.
        if now < self.next_upkeep {
            return;
        }
        self.next_upkeep = now.saturating_add(UPKEEP);
        let (first, frame) = (self.config.first_frame_timeout, self.config.frame_timeout);
        let late: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| match s.state {
                StreamState::Open => {
                    now.saturating_since(s.opened) > first
                        || s.frame_started
                            .is_some_and(|t| now.saturating_since(t) > frame)
                }
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for stream in late {
            self.stats.deadlines += 1;
            self.fail(
                stream,
                Refusal::new(
                    Code::FrameDeadline,
                    format!(
                        "no whole frame within {} s (a frame must arrive within {} s of its first byte)",
                        first.as_secs(),
                        frame.as_secs()
                    ),
                ),
            );
        }
        for c in self.sessions.sweep(now) {
            self.out.push_back(Output::Forget(c));
        }
        self.keys.rotate_if_due(now, &mut self.rng);
    }

    /// What a job produced.
    pub fn inference_event(&mut self, job: JobId, event: InferenceEvent, now: UnixMillis) {
        let Some(&stream) = self.jobs.get(&job) else {
            return; // Cancelled: late events are dropped.
        };
        match event {
            InferenceEvent::Text(text) => {
                let Some(StreamState::Answering(answer)) =
                    self.streams.get_mut(&stream).map(|s| &mut s.state)
                else {
                    return;
                };
                answer.receipt.answer.update(text.as_bytes());
                if let Some(p) = &mut answer.pacing {
                    // Shaped: the text waits for the next chunk on the cadence.
                    p.pending.extend_from_slice(text.as_bytes());
                    return;
                }
                let chunk = data_chunk(&mut answer.sealer, text.as_bytes());
                self.send_chunk(stream, chunk);
            }
            InferenceEvent::Done {
                finish,
                prompt_tokens,
                generated_tokens,
            } => {
                let Some(StreamState::Answering(answer)) =
                    self.streams.get_mut(&stream).map(|s| &mut s.state)
                else {
                    return;
                };
                self.jobs.remove(&job);
                answer.computing = false;
                let draft = &answer.receipt;
                let signed = self.receipts.sign(&Receipt {
                    document: draft.document,
                    request: draft.request,
                    question: draft.question,
                    answer: draft.answer.clone().finalize().into(),
                    model: self.identity.model,
                    settings: self.identity.settings,
                    dtype: self.identity.dtype.clone(),
                    prompt_tokens,
                    generated_tokens,
                    finish,
                    time: now,
                    previous: draft.previous,
                });
                if let Some(id) = &answer.session {
                    self.sessions.chain(id, receipt::hash(&signed));
                }
                let trailer = Trailer {
                    finish,
                    prompt_tokens,
                    generated_tokens,
                    receipt: Some(Trailer::encode_receipt(&signed)),
                }
                .to_bytes();
                let session = answer.session;
                let shaped = match &mut answer.pacing {
                    Some(p) => {
                        // Sent when its chunk count comes round (`handle_timeout`).
                        p.last = Some(shape::pad_final(trailer.clone()));
                        p.tokens = generated_tokens;
                        true
                    }
                    None => false,
                };
                // The model's part is done: a session may take its next turn once this one is out.
                self.end_session_turn(session.as_ref(), true);
                if !shaped {
                    self.send_final(stream, trailer, generated_tokens, now);
                }
            }
            InferenceEvent::Failed(failure) => {
                // Nothing was computed for a busy engine or a context overflow: a session keeps its
                // state. After a model failure it does not match what the client has.
                let (refusal, keep) = match failure {
                    InferenceFailure::Busy => (
                        Refusal::new(Code::Busy, "the enclave is at capacity; retry after 1 s"),
                        true,
                    ),
                    InferenceFailure::ContextLimit { limit } => (
                        Refusal::new(
                            Code::ContextLimit,
                            format!(
                                "the question and its answer would exceed the context limit of {limit} tokens"
                            ),
                        ),
                        true,
                    ),
                    InferenceFailure::UnknownConversation => {
                        (ProtocolError::UnknownSession.into(), false)
                    }
                    InferenceFailure::Model => (
                        Refusal::new(Code::GenerationFailed, "the model failed to answer"),
                        false,
                    ),
                };
                let Some(answer) = self.take_answer(stream, job) else {
                    return;
                };
                self.end_session_turn(answer.session.as_ref(), keep);
                self.refuse(stream, refusal);
                self.end_stream(stream);
            }
        }
    }

    /// The engine dropped an idle conversation to make room in its KV budget: its session ends, and
    /// the client's next turn is told so (it then starts a new session).
    pub fn conversation_evicted(&mut self, conversation: ConversationId) {
        if self.sessions.evicted(conversation) {
            self.stats.evicted_sessions += 1;
        }
    }

    /// The engine's latest report of itself, for `HEALTH`.
    pub fn set_engine_status(&mut self, status: EngineStatus) {
        self.engine = status;
    }

    /// The health report: counts only, never anything secret. `status` is `ok` only while the
    /// engine takes jobs.
    pub fn health(&self, now: UnixMillis) -> String {
        let e = &self.engine;
        serde_json::json!({
            "status": if e.alive { "ok" } else { "degraded" },
            "instance": hex::encode(self.instance),
            "nsm": self.nsm.kind(),
            "dtype": self.identity.dtype,
            "uptime_s": now.saturating_since(self.started).as_secs(),
            "engine": {
                "alive": e.alive,
                "jobs": e.jobs,
                "conversations": e.conversations,
                "kv_bytes": e.kv_bytes,
                "kv_budget_bytes": e.kv_budget_bytes,
                "failed_jobs": e.failed_jobs,
            },
            "limits": {
                "context_tokens": self.config.context_tokens,
                "max_new_tokens": self.config.max_new_tokens,
            },
            "sessions": self.sessions.len(),
            "streams_open": self.streams.len(),
            "answering": self.jobs.len(),
            "streams": self.stats.streams,
            "attestations": self.stats.attestations,
            "requests": self.stats.requests,
            "turns": self.stats.turns,
            "answered": self.stats.answered,
            "closed_sessions": self.stats.closed_sessions,
            "evicted_sessions": self.stats.evicted_sessions,
            "frame_deadlines": self.stats.deadlines,
            "rejected": self.stats.rejected,
        })
        .to_string()
    }

    // --- exchanges ---

    fn handle(&mut self, stream: StreamId, frame: Frame, now: UnixMillis) {
        // The frame's type and stream only: never its contents.
        tracing::debug!(stream = stream.0, frame = frame.name(), "frame");
        let result = match frame {
            Frame::Route { enclave } => self.route(stream, enclave),
            Frame::Attest { nonce } => self.attest(stream, nonce, now),
            Frame::Health { .. } => {
                let status = self.health(now);
                self.transmit(stream, &Frame::Health { status });
                self.end_stream(stream);
                Ok(())
            }
            Frame::Request {
                attestation_sha256,
                encapsulated,
            } => self.request(stream, &attestation_sha256, &encapsulated, now),
            Frame::Session {
                id,
                seq,
                ciphertext,
            } => self.turn(stream, id, seq, &ciphertext, now),
            Frame::Close { id, seq, tag } => self.close_session(stream, id, seq, tag),
            other => Err(ProtocolError::UnexpectedFrame {
                got: other.name(),
                expected: "ATTEST, REQUEST, SESSION, CLOSE or HEALTH",
            }
            .into()),
        };
        if let Err(refusal) = result {
            self.fail(stream, refusal);
        }
    }

    /// This enclave instance's id (what `ROUTE` frames and `user_data` name).
    pub fn instance(&self) -> [u8; 16] {
        self.instance
    }

    /// A `ROUTE` frame: only first on a stream, and only naming this enclave (a relay that routed it
    /// elsewhere is refused here rather than failing later on keys this enclave never had).
    fn route(&mut self, stream: StreamId, enclave: [u8; 16]) -> Result<(), Refusal> {
        let Some(s) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if s.routed {
            return Err(ProtocolError::UnexpectedFrame {
                got: "ROUTE",
                expected: "one ROUTE frame, first",
            }
            .into());
        }
        s.routed = true;
        if enclave != self.instance {
            return Err(Refusal::new(
                Code::EnclaveUnknown,
                "the stream was routed to another enclave; attest again",
            ));
        }
        Ok(())
    }

    /// A document for the current keys (fresh for a nonce; the cached one otherwise) and the
    /// key-config list it commits to.
    fn attest(
        &mut self,
        stream: StreamId,
        nonce: Option<[u8; 32]>,
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        self.keys.rotate_if_due(now, &mut self.rng);
        let max_age = self.config.cached_document_max_age;
        let identity = &self.identity;
        let limits = Limits {
            context_tokens: self.config.context_tokens,
            max_new_tokens: self.config.max_new_tokens,
        };
        let generation = self.keys.current();
        let cached = nonce
            .is_none()
            .then(|| generation.cached_document(now, max_age).map(<[u8]>::to_vec))
            .flatten();
        let document = match cached {
            Some(doc) => doc,
            None => {
                let user_data = UserData {
                    kc: sha256(generation.list()),
                    model: identity.model,
                    settings: identity.settings,
                    dtype: Some(identity.dtype.clone()),
                    limits: Some(limits),
                    exp: generation.expires(),
                    id: Some(self.instance),
                    rk: Some(self.receipts.public_key()),
                };
                let doc = self
                    .nsm
                    .attest(&user_data.encode(), nonce.as_ref().map(|n| &n[..]), None)
                    .map_err(|_| {
                        Refusal::new(Code::NsmFailed, "the NSM produced no attestation document")
                    })?;
                generation.record_issued(&doc);
                if nonce.is_none() {
                    generation.cache_document(doc.clone(), now);
                }
                doc
            }
        };
        let key_configs = generation.list().to_vec();
        self.stats.attestations += 1;
        self.transmit(
            stream,
            &Frame::Attestation {
                document,
                key_configs,
            },
        );
        self.end_stream(stream);
        Ok(())
    }

    fn params(&self, ask: &Ask) -> Result<AnswerParams, Refusal> {
        let bad = |m: &str| Err(Refusal::new(Code::BadRequest, m));
        let max = ask.max_tokens.unwrap_or(self.config.default_new_tokens);
        if max == 0 || max > self.config.max_new_tokens {
            return Err(Refusal::new(
                Code::BadRequest,
                format!(
                    "max_tokens must be within 1..={}",
                    self.config.max_new_tokens
                ),
            ));
        }
        if max >= self.config.context_tokens {
            return Err(Refusal::new(
                Code::ContextLimit,
                format!(
                    "max_tokens leaves no room for the question in the context limit of {} tokens",
                    self.config.context_tokens
                ),
            ));
        }
        let temperature = ask.temperature.unwrap_or(0.0);
        if !(0.0..=100.0).contains(&temperature) {
            return bad("temperature must be within 0..=100");
        }
        if ask.top_k == Some(0) {
            return bad("top_k must be at least 1");
        }
        if ask.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
            return bad("top_p must be within (0, 1]");
        }
        Ok(AnswerParams {
            max_new_tokens: max,
            temperature,
            top_k: ask.top_k,
            top_p: ask.top_p,
            seed: ask.seed.unwrap_or(0),
        })
    }

    fn request(
        &mut self,
        stream: StreamId,
        binding: &[u8; 32],
        encapsulated: &[u8],
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        self.keys.rotate_if_due(now, &mut self.rng);
        let request = self.keys.open(binding, encapsulated)?;
        let ask = Ask::from_bytes(&request.plaintext)
            .map_err(|e| Refusal::new(Code::BadRequest, e.to_string()))?;
        let params = self.params(&ask)?;
        let job = self.next_job();
        let conversation = self.next_conversation();
        // Only a question that asks for a session leaves one behind.
        let session = if ask.session {
            let mut forget = Vec::new();
            let opened = self.sessions.open(
                request.session(now, self.config.session_limits),
                *binding,
                conversation,
                job,
                now,
                &mut forget,
            );
            self.out.extend(forget.into_iter().map(Output::Forget));
            Some(opened.map_err(|TableFull| {
                Refusal::new(Code::Busy, "too many open sessions; retry after 1 s")
            })?)
        } else {
            None
        };
        let (nonce, sealer) = request.respond(&mut self.rng);
        drop(request);
        self.stats.requests += 1;
        self.transmit(stream, &Frame::Response { nonce });
        let draft = Draft {
            document: *binding,
            request: sha256(encapsulated),
            question: sha256(ask.prompt.as_bytes()),
            answer: Sha256::new(),
            previous: None,
        };
        self.start(
            stream,
            job,
            conversation,
            true,
            ask,
            params,
            sealer,
            session,
            draft,
            now,
        );
        Ok(())
    }

    fn turn(
        &mut self,
        stream: StreamId,
        id: [u8; 16],
        seq: u64,
        ciphertext: &[u8],
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        let job = self.next_job();
        let mut forget = Vec::new();
        let begun = self
            .sessions
            .begin_turn(&id, seq, ciphertext, job, now, &mut forget);
        self.out.extend(forget.into_iter().map(Output::Forget));
        let turn = begun?;
        // A turn that authenticated but is not a valid question leaves the session idle.
        let ask = match Ask::from_bytes(&turn.plaintext)
            .map_err(|e| Refusal::new(Code::BadRequest, e.to_string()))
            .and_then(|ask| self.params(&ask).map(|p| (ask, p)))
        {
            Ok(v) => v,
            Err(r) => {
                self.sessions.end_turn(&id, true);
                return Err(r);
            }
        };
        drop(turn.plaintext);
        self.stats.turns += 1;
        let (ask, params) = ask;
        let draft = Draft {
            document: turn.document,
            request: receipt::turn_request(&id, seq, ciphertext),
            question: sha256(ask.prompt.as_bytes()),
            answer: Sha256::new(),
            previous: turn.previous,
        };
        self.start(
            stream,
            job,
            turn.conversation,
            false,
            ask,
            params,
            turn.sealer,
            Some(id),
            draft,
            now,
        );
        Ok(())
    }

    fn close_session(
        &mut self,
        stream: StreamId,
        id: [u8; 16],
        seq: u64,
        tag: Vec<u8>,
    ) -> Result<(), Refusal> {
        let conversation = self.sessions.close(&id, seq, &tag)?;
        self.out.push_back(Output::Forget(conversation));
        self.stats.closed_sessions += 1;
        // The ack echoes the frame.
        self.transmit(stream, &Frame::Close { id, seq, tag });
        self.end_stream(stream);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        stream: StreamId,
        job: JobId,
        conversation: ConversationId,
        first_turn: bool,
        ask: Ask,
        params: AnswerParams,
        sealer: ChunkSealer,
        session: Option<[u8; 16]>,
        receipt: Draft,
        now: UnixMillis,
    ) {
        let pacing = ask.shape.unwrap_or(true).then(|| Pacing {
            next: now.saturating_add(self.config.shape_cadence),
            sent: 0,
            pending: Zeroizing::new(Vec::new()),
            last: None,
            tokens: 0,
        });
        if let Some(p) = &pacing {
            self.schedule.push(Reverse((p.next, stream)));
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.state = StreamState::Answering(Box::new(Answer {
                job,
                sealer,
                session,
                started: now,
                receipt,
                computing: true,
                pacing,
            }));
        }
        self.jobs.insert(job, stream);
        self.out.push_back(Output::Submit(InferenceRequest {
            job,
            conversation,
            first_turn,
            keep: session.is_some(),
            text: ask.prompt,
            params,
        }));
    }

    // --- helpers ---

    fn next_job(&mut self) -> JobId {
        self.next_job += 1;
        JobId(self.next_job)
    }

    fn next_conversation(&mut self) -> ConversationId {
        self.next_conversation += 1;
        ConversationId(self.next_conversation)
    }

    /// Sends an answer's final chunk (its trailer, padded if shaped) and ends the stream.
    fn send_final(&mut self, stream: StreamId, trailer: Vec<u8>, tokens: u64, now: UnixMillis) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let StreamState::Answering(answer) = std::mem::replace(&mut s.state, StreamState::Done)
        else {
            return;
        };
        let mut sealed = Vec::with_capacity(trailer.len() + 32);
        match answer.sealer.seal_last(&trailer, &mut sealed) {
            Ok(()) => {
                self.transmit(stream, &Frame::Chunk { last: true, sealed });
                self.stats.answered += 1;
                tracing::info!(
                    tokens,
                    ms = now.saturating_since(answer.started).as_millis() as u64,
                    "answered"
                );
            }
            Err(_) => {
                self.end_session_turn(answer.session.as_ref(), false);
                self.refuse(
                    stream,
                    Refusal::new(Code::Internal, "the answer is too long"),
                );
            }
        }
        self.end_stream(stream);
    }

    /// Sends each shaped answer's chunk that is due: text if any is ready, else an empty one; the
    /// final chunk once the model is done, the text is out, and the count reaches its bucket.
    fn pace(&mut self, now: UnixMillis) {
        let cadence = self.config.shape_cadence;
        while let Some(&Reverse((at, stream))) = self.schedule.peek() {
            if at > now {
                break;
            }
            self.schedule.pop();
            // An entry of a stream that has ended, or whose answer was rescheduled, is stale.
            let Some(StreamState::Answering(answer)) =
                self.streams.get_mut(&stream).map(|s| &mut s.state)
            else {
                continue;
            };
            let Some(p) = answer.pacing.as_mut().filter(|p| p.next == at) else {
                continue;
            };
            let count = p.sent + 1;
            if p.last.is_some() && p.pending.is_empty() && shape::chunk_bucket(count) == count {
                let (last, tokens) = (p.last.take().unwrap_or_default(), p.tokens);
                self.send_final(stream, last, tokens, now);
                continue;
            }
            let text = shape::take_text(&mut p.pending, shape::DATA_CHUNK - 2);
            p.sent = count;
            // A fixed schedule; after a stall of the whole enclave, from now.
            p.next = p.next.saturating_add(cadence);
            if p.next <= now {
                p.next = now.saturating_add(cadence);
            }
            self.schedule.push(Reverse((p.next, stream)));
            let chunk = data_chunk(&mut answer.sealer, &shape::encode_data(&text));
            self.send_chunk(stream, chunk);
        }
    }

    /// Sends a non-final chunk, or fails the stream when its sealer ran out of chunks.
    fn send_chunk(&mut self, stream: StreamId, chunk: Option<Frame>) {
        match chunk {
            Some(frame) => self.transmit(stream, &frame),
            None => self.fail(
                stream,
                Refusal::new(Code::Internal, "the answer is too long"),
            ),
        }
    }

    /// When the core next needs [`Core::handle_timeout`] for a shaped answer's chunk (the shell
    /// also calls it on its own tick for deadlines and upkeep).
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        // A stale entry only wakes the shell early once.
        self.schedule.peek().map(|Reverse((at, _))| *at)
    }

    /// Ends `job`'s answer on `stream`, returning it.
    fn take_answer(&mut self, stream: StreamId, job: JobId) -> Option<Box<Answer>> {
        self.jobs.remove(&job);
        let s = self.streams.get_mut(&stream)?;
        match std::mem::replace(&mut s.state, StreamState::Done) {
            StreamState::Answering(a) => Some(a),
            other => {
                s.state = other;
                None
            }
        }
    }

    fn transmit(&mut self, stream: StreamId, frame: &Frame) {
        self.out.push_back(Output::Transmit {
            stream,
            bytes: frame.encode(),
        });
    }

    fn refuse(&mut self, stream: StreamId, refusal: Refusal) {
        self.stats.rejected += 1;
        tracing::info!(code = refusal.code.as_str(), "refused");
        self.transmit(
            stream,
            &Frame::Error {
                code: refusal.code,
                message: refusal.message,
            },
        );
    }

    /// Refuses and ends the stream, cancelling a job that was answering on it.
    fn fail(&mut self, stream: StreamId, refusal: Refusal) {
        if let Some(s) = self.streams.get_mut(&stream) {
            if let StreamState::Answering(answer) =
                std::mem::replace(&mut s.state, StreamState::Done)
            {
                self.jobs.remove(&answer.job);
                if answer.computing {
                    self.out.push_back(Output::Cancel(answer.job));
                }
                self.end_turn(&answer, false);
            }
        }
        self.refuse(stream, refusal);
        self.end_stream(stream);
    }

    fn end_stream(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.state = StreamState::Done;
        }
        self.out.push_back(Output::Close { stream });
    }

    /// A cancelled or failed answer: its session (if any) ends with it.
    fn end_turn(&mut self, answer: &Answer, keep: bool) {
        self.end_session_turn(answer.session.as_ref(), keep);
    }

    fn end_session_turn(&mut self, session: Option<&[u8; 16]>, keep: bool) {
        if let Some(c) = session.and_then(|s| self.sessions.end_turn(s, keep)) {
            self.out.push_back(Output::Forget(c));
        }
    }
}

/// How often [`Core::handle_timeout`] checks deadlines, sessions and keys (the enclave shell's tick).
const UPKEEP: Duration = Duration::from_secs(1);

/// A non-final chunk sealing `plaintext`; `None` when the sealer has no chunk left.
fn data_chunk(sealer: &mut ChunkSealer, plaintext: &[u8]) -> Option<Frame> {
    let mut sealed = Vec::with_capacity(plaintext.len() + 32);
    sealer.seal(plaintext, &mut sealed).ok()?;
    Some(Frame::Chunk {
        last: false,
        sealed,
    })
}
