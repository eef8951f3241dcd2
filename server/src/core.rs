//! The state machine: streams, their exchanges, and the jobs answering them.
//!
//! Each stream carries one exchange: `ATTEST` → `ATTESTATION`; `HEALTH` → `HEALTH`; `REQUEST` →
//! `RESPONSE`, `CHUNK`…(final); `SESSION` → `CHUNK`…(final); or an `ERROR`. The core then closes the
//! stream. Logs carry counts, timings and codes, never prompts, answers or keys.

use std::collections::{HashMap, VecDeque};

use chacha20::ChaCha20Rng;
use confidant_nsm::Nsm;
use confidant_protocol::chunks::ChunkSealer;
use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::message::{Ask, Trailer};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{Code, ProtocolError, UnixMillis};
use rand_core::SeedableRng;

use crate::config::{Identity, ServeConfig};
use crate::inference::{
    AnswerParams, ConversationId, InferenceEvent, InferenceFailure, InferenceRequest, JobId,
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
    /// The session this turn belongs to (every `REQUEST` opens one).
    session: [u8; 16],
    tokens: u64,
    started: UnixMillis,
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
}

#[derive(Debug, Default)]
struct Stats {
    streams: u64,
    attestations: u64,
    requests: u64,
    turns: u64,
    rejected: u64,
    answered: u64,
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
    out: VecDeque<Output>,
    stats: Stats,
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
        Core {
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
            started: now,
        }
    }

    /// The next thing for the shell to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A new stream (a connection, or a multiplexed stream on one).
    pub fn accept(&mut self) -> StreamId {
        self.next_stream += 1;
        let id = StreamId(self.next_stream);
        self.streams.insert(
            id,
            Stream {
                decoder: FrameDecoder::default(),
                state: StreamState::Open,
            },
        );
        self.stats.streams += 1;
        id
    }

    /// Bytes received on `stream`.
    pub fn receive(&mut self, stream: StreamId, bytes: &[u8], now: UnixMillis) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
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
                self.out.push_back(Output::Cancel(answer.job));
                self.end_session_turn(&answer.session, false);
            }
        }
    }

    /// Periodic upkeep: expired sessions go (with their model state), keys rotate.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
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
        let Some(StreamState::Answering(answer)) =
            self.streams.get_mut(&stream).map(|s| &mut s.state)
        else {
            return;
        };
        match event {
            InferenceEvent::Text(text) => {
                let mut sealed = Vec::with_capacity(text.len() + 32);
                if answer.sealer.seal(text.as_bytes(), &mut sealed).is_err() {
                    self.fail(
                        stream,
                        Refusal::new(Code::Internal, "the answer is too long"),
                    );
                    return;
                }
                answer.tokens += 1;
                self.transmit(
                    stream,
                    &Frame::Chunk {
                        last: false,
                        sealed,
                    },
                );
            }
            InferenceEvent::Done {
                finish,
                prompt_tokens,
                generated_tokens,
            } => {
                let Some(StreamState::Answering(answer)) = self
                    .streams
                    .get_mut(&stream)
                    .map(|s| std::mem::replace(&mut s.state, StreamState::Done))
                else {
                    return;
                };
                self.jobs.remove(&job);
                let trailer = Trailer {
                    finish,
                    prompt_tokens,
                    generated_tokens,
                };
                let mut sealed = Vec::with_capacity(96);
                match answer.sealer.seal_last(&trailer.to_bytes(), &mut sealed) {
                    Ok(()) => {
                        self.transmit(stream, &Frame::Chunk { last: true, sealed });
                        self.stats.answered += 1;
                        self.end_session_turn(&answer.session, true);
                        tracing::info!(
                            tokens = generated_tokens,
                            ms = now.saturating_since(answer.started).as_millis() as u64,
                            "answered"
                        );
                    }
                    Err(_) => {
                        self.end_session_turn(&answer.session, false);
                        self.refuse(
                            stream,
                            Refusal::new(Code::Internal, "the answer is too long"),
                        );
                    }
                }
                self.end_stream(stream);
            }
            InferenceEvent::Failed(failure) => {
                let (refusal, keep) = match failure {
                    InferenceFailure::Busy => (
                        Refusal::new(Code::Busy, "the model is at capacity; try again"),
                        true,
                    ),
                    InferenceFailure::UnknownConversation => {
                        (ProtocolError::SessionExpired.into(), false)
                    }
                    InferenceFailure::Model => (
                        Refusal::new(Code::GenerationFailed, "the model failed to answer"),
                        false,
                    ),
                };
                let Some(StreamState::Answering(answer)) = self
                    .streams
                    .get_mut(&stream)
                    .map(|s| std::mem::replace(&mut s.state, StreamState::Done))
                else {
                    return;
                };
                self.jobs.remove(&job);
                self.end_session_turn(&answer.session, keep);
                self.refuse(stream, refusal);
                self.end_stream(stream);
            }
        }
    }

    /// The health report: counts only, never anything secret.
    pub fn health(&self, now: UnixMillis) -> String {
        serde_json::json!({
            "status": "ok",
            "nsm": self.nsm.kind(),
            "uptime_s": now.saturating_since(self.started).as_secs(),
            "sessions": self.sessions.len(),
            "streams_open": self.streams.len(),
            "answering": self.jobs.len(),
            "streams": self.stats.streams,
            "attestations": self.stats.attestations,
            "requests": self.stats.requests,
            "turns": self.stats.turns,
            "answered": self.stats.answered,
            "rejected": self.stats.rejected,
        })
        .to_string()
    }

    // --- exchanges ---

    fn handle(&mut self, stream: StreamId, frame: Frame, now: UnixMillis) {
        let result = match frame {
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
            other => Err(ProtocolError::UnexpectedFrame {
                got: other.name(),
                expected: "ATTEST, REQUEST, SESSION or HEALTH",
            }
            .into()),
        };
        if let Err(refusal) = result {
            self.fail(stream, refusal);
        }
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
        let identity = self.identity;
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
                    exp: generation.expires(),
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
        let mut forget = Vec::new();
        let opened = self.sessions.open(
            request.session(now, self.config.session_limits),
            conversation,
            job,
            now,
            &mut forget,
        );
        self.out.extend(forget.into_iter().map(Output::Forget));
        let session = opened
            .map_err(|TableFull| Refusal::new(Code::Busy, "too many open sessions; try again"))?;
        let (nonce, sealer) = request.respond(&mut self.rng);
        drop(request);
        self.stats.requests += 1;
        self.transmit(stream, &Frame::Response { nonce });
        self.start(
            stream,
            job,
            conversation,
            true,
            ask,
            params,
            sealer,
            session,
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
        self.start(
            stream,
            job,
            turn.conversation,
            false,
            ask,
            params,
            turn.sealer,
            id,
            now,
        );
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
        session: [u8; 16],
        now: UnixMillis,
    ) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.state = StreamState::Answering(Box::new(Answer {
                job,
                sealer,
                session,
                tokens: 0,
                started: now,
            }));
        }
        self.jobs.insert(job, stream);
        self.out.push_back(Output::Submit(InferenceRequest {
            job,
            conversation,
            first_turn,
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
                self.out.push_back(Output::Cancel(answer.job));
                self.end_session_turn(&answer.session, false);
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

    fn end_session_turn(&mut self, session: &[u8; 16], keep: bool) {
        if let Some(c) = self.sessions.end_turn(session, keep) {
            self.out.push_back(Output::Forget(c));
        }
    }
}
