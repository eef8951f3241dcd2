//! The server core driven in memory: no sockets, no libtorch. A scripted engine double stands in for
//! the model (test only; the enclave serves only the real engine).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use confidant_nsm::emulated::{write_dev_ca, EmulatedNsm};
use confidant_nsm::measure::emulated_pcrs;
use confidant_protocol::frame::{Frame, FrameDecoder, MAX_BODY};
use confidant_protocol::message::{Ask, Finish, Trailer};
use confidant_protocol::request::{encapsulate, ClientRequest, CONFIDANT_LABELS};
use confidant_protocol::session::{ClientSession, SessionLimits};
use confidant_protocol::shape;
use confidant_protocol::{Code, Expectations, Recipient, UnixMillis};
use confidant_server::inference::{InferenceEvent, InferenceFailure, InferenceRequest};
use confidant_server::{Core, Identity, Output, ServeConfig, StreamId};
use confidant_verifier::{PcrPin, Policy, Verifier, VerifyAt};

const MODEL: [u8; 32] = [5; 32];

struct Harness {
    core: Core,
    now: UnixMillis,
    verifier: Verifier,
    pcrs: BTreeMap<usize, [u8; 48]>,
    _ca: tempfile::TempDir,
    rng_seed: u8,
}

/// What one stream received, decoded.
#[derive(Debug, Default)]
struct Received {
    frames: Vec<Frame>,
    closed: bool,
}

fn harness(config: ServeConfig) -> Harness {
    let ca = tempfile::tempdir().unwrap();
    write_dev_ca(ca.path()).unwrap();
    let pcrs = emulated_pcrs(&[1; 48], &MODEL);
    let nsm = EmulatedNsm::load(ca.path(), pcrs.clone()).unwrap();
    let verifier = Verifier::new(vec![nsm.root_der().to_vec()]).unwrap();
    // The emulated NSM stamps documents with the real clock: the core's clock follows it.
    let now = UnixMillis::now();
    let core = Core::new(
        Box::new(nsm),
        Identity {
            model: MODEL,
            settings: None,
            dtype: "f32".into(),
        },
        config,
        [9; 32],
        now,
    );
    Harness {
        core,
        now,
        verifier,
        pcrs,
        _ca: ca,
        rng_seed: 0,
    }
}

impl Harness {
    fn advance(&mut self, d: Duration) {
        self.now = self.now.saturating_add(d);
    }

    /// Sends `frame` on a new stream; returns the stream and the outputs (without inference).
    fn send(&mut self, frame: &Frame) -> (StreamId, Vec<Output>) {
        let s = self.core.accept(self.now);
        self.core.receive(s, &frame.encode(), self.now);
        self.core.finish(s);
        (s, self.drain())
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    /// Feeds `events` for a job and returns the outputs.
    fn events(&mut self, job: &InferenceRequest, events: Vec<InferenceEvent>) -> Vec<Output> {
        for e in events {
            self.core.inference_event(job.job, e, self.now);
        }
        self.drain()
    }

    fn attest(&mut self) -> (Vec<u8>, Recipient) {
        let nonce = [7u8; 32];
        let (_, out) = self.send(&Frame::Attest { nonce: Some(nonce) });
        let got = received(&out);
        let Some(Frame::Attestation {
            document,
            key_configs,
        }) = got.frames.first()
        else {
            panic!("{got:?}")
        };
        assert!(got.closed);
        let mut policy = Policy::default();
        policy.expect_nonce(nonce.to_vec());
        for (i, v) in &self.pcrs {
            policy.pin_pcr(PcrPin::new(*i, v).unwrap());
        }
        let verified = self
            .verifier
            .verify(document, &policy, VerifyAt::Instant(self.now))
            .unwrap();
        let recipient = Recipient::from_attestation(
            &verified,
            key_configs,
            &Expectations {
                model: Some(MODEL),
                settings: None,
                dtype: None,
                now: self.now,
            },
        )
        .unwrap();
        (document.clone(), recipient)
    }

    fn request_frame(&mut self, r: &Recipient, ask: &Ask) -> (Frame, ClientRequest) {
        self.rng_seed += 1;
        let mut rng = confidant_protocol::ReplayRng::new(&[self.rng_seed; 64]);
        let mut plaintext = ask.to_bytes();
        if ask.shape != Some(false) {
            // As the client pads a shaped question (binding, header, enc and tag around it).
            let overhead = 32 + 7 + r.suite.kem.enc_len() + 16;
            shape::pad_request(&mut plaintext, overhead, MAX_BODY as usize);
        }
        let (encapsulated, client) = encapsulate(
            &r.config,
            r.suite,
            &r.attestation_sha256,
            &plaintext,
            &CONFIDANT_LABELS,
            &mut rng,
        )
        .unwrap();
        (
            Frame::Request {
                attestation_sha256: r.attestation_sha256,
                encapsulated,
            },
            client,
        )
    }
}

fn received(outputs: &[Output]) -> Received {
    let mut dec = FrameDecoder::default();
    let mut r = Received::default();
    for o in outputs {
        match o {
            Output::Transmit { bytes, .. } => dec.push(bytes),
            Output::Close { .. } => r.closed = true,
            _ => {}
        }
    }
    while let Some(f) = dec.next_frame().unwrap() {
        r.frames.push(f);
    }
    r
}

fn submitted(outputs: &mut Vec<Output>) -> Option<InferenceRequest> {
    let i = outputs
        .iter()
        .position(|o| matches!(o, Output::Submit(_)))?;
    match outputs.remove(i) {
        Output::Submit(r) => Some(r),
        _ => None,
    }
}

fn error_code(outputs: &[Output]) -> Option<Code> {
    received(outputs).frames.iter().find_map(|f| match f {
        Frame::Error { code, .. } => Some(*code),
        _ => None,
    })
}

fn session_ask(prompt: &str) -> Ask {
    Ask {
        session: true,
        ..plain(prompt)
    }
}

/// A question that opts out of the traffic shape: each piece of text is sent as it comes, so these
/// tests see the answer at once (the shape has its own tests below).
fn plain(prompt: &str) -> Ask {
    Ask {
        shape: Some(false),
        ..Ask::new(prompt)
    }
}

fn text(s: &str) -> InferenceEvent {
    InferenceEvent::Text(s.into())
}

fn done(n: u64) -> InferenceEvent {
    InferenceEvent::Done {
        finish: Finish::Eos,
        prompt_tokens: 3,
        generated_tokens: n,
    }
}

/// Opens the chunks of a `REQUEST`'s response; returns the text and the trailer.
fn open_response(client: &ClientRequest, frames: &[Frame]) -> (String, Trailer) {
    let Some(Frame::Response { nonce }) = frames.first() else {
        panic!("{frames:?}")
    };
    let mut opener = client.response_opener(nonce).unwrap();
    open_chunks(&mut opener, &frames[1..])
}

fn open_chunks(
    opener: &mut confidant_protocol::chunks::ChunkOpener,
    frames: &[Frame],
) -> (String, Trailer) {
    let mut text = String::new();
    for f in frames {
        match f {
            Frame::Chunk {
                last: false,
                sealed,
            } => text.push_str(std::str::from_utf8(&opener.open(sealed, false).unwrap()).unwrap()),
            Frame::Chunk { last: true, sealed } => {
                let trailer = Trailer::from_bytes(&opener.open(sealed, true).unwrap()).unwrap();
                return (text, trailer);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no final chunk")
}

#[test]
fn attest_request_streamed_chunks_and_final_chunk() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &plain("What is a copay?"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).expect("a job");
    assert_eq!(job.text.as_str(), "What is a copay?");
    assert!(job.first_turn);
    assert_eq!(job.params.max_new_tokens, 64, "the default");
    let mut all = out;
    all.extend(h.events(
        &job,
        vec![text("A copay "), text("is a fixed fee."), done(5)],
    ));
    let got = received(&all);
    assert!(got.closed);
    let (answer, trailer) = open_response(&client, &got.frames);
    assert_eq!(answer, "A copay is a fixed fee.");
    assert_eq!(trailer.finish, Finish::Eos);
    assert_eq!(trailer.generated_tokens, 5);
}

#[test]
fn a_nonce_less_attest_is_answered_from_the_cache_for_a_minute() {
    let mut h = harness(ServeConfig::default());
    let doc = |h: &mut Harness| match received(&h.send(&Frame::Attest { nonce: None }).1)
        .frames
        .remove(0)
    {
        Frame::Attestation { document, .. } => document,
        other => panic!("{other:?}"),
    };
    let first = doc(&mut h);
    h.advance(Duration::from_secs(30));
    assert_eq!(doc(&mut h), first);
    h.advance(Duration::from_secs(31));
    assert_ne!(doc(&mut h), first);
}

#[test]
fn session_turns_continue_the_conversation_and_replays_are_refused() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job1 = submitted(&mut out).unwrap();
    h.events(&job1, vec![text("one"), done(1)]);
    let mut session: ClientSession = client.into_session();

    let (seq, turn) = session.seal_turn(&plain("second").to_bytes());
    let (_, mut out) = h.send(&turn);
    let job2 = submitted(&mut out).expect("the turn runs");
    assert!(!job2.first_turn);
    assert_eq!(job2.conversation, job1.conversation, "same conversation");
    let mut all = out;
    all.extend(h.events(&job2, vec![text("two"), done(1)]));
    let mut opener = session.reply_opener(seq);
    let (answer, _) = open_chunks(&mut opener, &received(&all).frames);
    assert_eq!(answer, "two");

    // The same turn again: its sequence number is used.
    let (_, out) = h.send(&turn);
    assert_eq!(error_code(&out), Some(Code::SequenceReused));
    // The same request again: replay.
    let (_, out) = h.send(&frame);
    assert_eq!(error_code(&out), Some(Code::Replayed));
    // A forged turn: the session stays usable.
    let (_, mut forged) = session.seal_turn(&plain("x").to_bytes());
    if let Frame::Session { ciphertext, .. } = &mut forged {
        ciphertext[0] ^= 1;
    }
    let (_, out) = h.send(&forged);
    assert_eq!(error_code(&out), Some(Code::SessionAuth));
    let (_, turn) = session.seal_turn(&plain("third").to_bytes());
    let (_, mut out) = h.send(&turn);
    assert!(submitted(&mut out).is_some());
}

#[test]
fn a_second_turn_while_one_runs_is_refused_as_session_busy() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job1 = submitted(&mut out).unwrap();
    h.events(&job1, vec![done(0)]);
    let mut session = client.into_session();
    let (_, t2) = session.seal_turn(&plain("a").to_bytes());
    let (_, mut out) = h.send(&t2);
    assert!(submitted(&mut out).is_some());
    let (_, t3) = session.seal_turn(&plain("b").to_bytes());
    let (_, out) = h.send(&t3);
    assert_eq!(error_code(&out), Some(Code::SessionBusy));
}

#[test]
fn sessions_expire_when_idle_and_their_conversation_is_forgotten() {
    let mut h = harness(ServeConfig {
        session_limits: SessionLimits {
            idle: Duration::from_secs(10),
            absolute: Duration::from_secs(100),
        },
        ..ServeConfig::default()
    });
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    h.events(&job, vec![done(0)]);
    h.advance(Duration::from_secs(11));
    h.core.handle_timeout(h.now);
    let out = h.drain();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Forget(c) if *c == job.conversation)),
        "{out:?}"
    );
    let mut session = client.into_session();
    let (_, turn) = session.seal_turn(&plain("late").to_bytes());
    let (_, out) = h.send(&turn);
    assert_eq!(error_code(&out), Some(Code::UnknownSession));
}

#[test]
fn a_one_shot_question_leaves_no_session_and_its_state_is_not_kept() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &plain("once"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    assert!(!job.keep, "the engine drops a one-shot conversation itself");
    h.events(&job, vec![text("a"), done(1)]);
    let health: serde_json::Value = serde_json::from_str(&h.core.health(h.now)).unwrap();
    assert_eq!(health["sessions"], 0);
    // Its session keys lead nowhere.
    let mut session = client.into_session();
    let (_, turn) = session.seal_turn(&plain("again").to_bytes());
    let (_, out) = h.send(&turn);
    assert_eq!(error_code(&out), Some(Code::UnknownSession));
}

#[test]
fn close_ends_a_session_only_for_its_owner_and_is_acknowledged() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    h.events(&job, vec![done(0)]);
    let mut session = client.into_session();
    // A forged close (wrong tag) is refused and the session stays.
    let Frame::Close { id, seq, mut tag } = session.seal_close() else {
        panic!()
    };
    tag[0] ^= 1;
    let (_, out) = h.send(&Frame::Close { id, seq, tag });
    assert_eq!(error_code(&out), Some(Code::SessionAuth));
    let close = session.seal_close();
    let (_, out) = h.send(&close);
    assert_eq!(
        received(&out).frames,
        vec![close.clone()],
        "echoed as the ack"
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Forget(c) if *c == job.conversation)),
        "its model state goes"
    );
    let (_, out) = h.send(&close);
    assert_eq!(error_code(&out), Some(Code::UnknownSession));
}

#[test]
fn streams_that_do_not_deliver_a_whole_frame_in_time_are_closed() {
    let mut h = harness(ServeConfig::default());
    // Silent since it opened.
    let silent = h.core.accept(h.now);
    // A frame begun but dripping.
    let dripping = h.core.accept(h.now);
    h.core.receive(
        dripping,
        &Frame::Attest { nonce: None }.encode()[..2],
        h.now,
    );
    h.advance(Duration::from_secs(4));
    h.core.handle_timeout(h.now);
    assert!(h.drain().is_empty(), "within the deadlines");
    h.advance(Duration::from_secs(2));
    h.core.handle_timeout(h.now);
    let out = h.drain();
    for s in [silent, dripping] {
        let mine: Vec<Output> = out
            .iter()
            .filter(|o| matches!(o, Output::Transmit { stream, .. } | Output::Close { stream } if *stream == s))
            .map(|o| match o {
                Output::Transmit { stream, bytes } => Output::Transmit { stream: *stream, bytes: bytes.clone() },
                Output::Close { stream } => Output::Close { stream: *stream },
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(error_code(&mine), Some(Code::FrameDeadline), "{s:?}");
        assert!(received(&mine).closed);
    }
}

#[test]
fn context_limits_are_refused_with_the_limit_and_keep_the_session() {
    let mut h = harness(ServeConfig {
        context_tokens: 100,
        max_new_tokens: 100,
        ..ServeConfig::default()
    });
    let (_, recipient) = h.attest();
    let ask = Ask {
        max_tokens: Some(100),
        ..plain("q")
    };
    let (frame, _) = h.request_frame(&recipient, &ask);
    let (_, out) = h.send(&frame);
    assert_eq!(error_code(&out), Some(Code::ContextLimit));

    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    h.events(&job, vec![done(0)]);
    let mut session = client.into_session();
    let (_, turn) = session.seal_turn(&plain("a very long turn").to_bytes());
    let (_, mut out) = h.send(&turn);
    let job = submitted(&mut out).unwrap();
    let out = h.events(
        &job,
        vec![InferenceEvent::Failed(InferenceFailure::ContextLimit {
            limit: 100,
        })],
    );
    match &received(&out).frames[0] {
        Frame::Error { code, message } => {
            assert_eq!(*code, Code::ContextLimit);
            assert!(message.contains("100 tokens"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // Nothing was computed: the session goes on.
    let (_, turn) = session.seal_turn(&plain("short").to_bytes());
    let (_, mut out) = h.send(&turn);
    assert!(submitted(&mut out).is_some());
}

#[test]
fn an_evicted_conversation_ends_its_session() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, client) = h.request_frame(&recipient, &session_ask("first"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    h.events(&job, vec![done(0)]);
    h.core.conversation_evicted(job.conversation);
    let mut session = client.into_session();
    let (_, turn) = session.seal_turn(&plain("again").to_bytes());
    let (_, out) = h.send(&turn);
    assert_eq!(error_code(&out), Some(Code::UnknownSession));
    let health: serde_json::Value = serde_json::from_str(&h.core.health(h.now)).unwrap();
    assert_eq!(health["evicted_sessions"], 1);
}

#[test]
fn busy_and_failed_jobs_are_refused_with_their_codes() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, _) = h.request_frame(&recipient, &plain("q"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    let out = h.events(&job, vec![InferenceEvent::Failed(InferenceFailure::Busy)]);
    assert_eq!(error_code(&out), Some(Code::Busy));
    assert!(received(&out).closed);

    let (frame, _) = h.request_frame(&recipient, &session_ask("q2"));
    let (_, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    let out = h.events(
        &job,
        vec![
            text("partial"),
            InferenceEvent::Failed(InferenceFailure::Model),
        ],
    );
    assert_eq!(error_code(&out), Some(Code::GenerationFailed));
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Forget(c) if *c == job.conversation)),
        "a failed turn ends its session"
    );
}

#[test]
fn bad_questions_are_refused_naming_the_field_never_the_value() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let ask = Ask {
        max_tokens: Some(100_000),
        ..plain("SECRET question")
    };
    let (frame, _) = h.request_frame(&recipient, &ask);
    let (_, out) = h.send(&frame);
    let got = received(&out);
    match &got.frames[0] {
        Frame::Error { code, message } => {
            assert_eq!(*code, Code::BadRequest);
            assert_eq!(message, "max_tokens must be within 1..=512");
        }
        other => panic!("{other:?}"),
    }
    assert!(got.closed);
}

#[test]
fn a_stream_that_goes_away_cancels_its_job_and_late_events_are_dropped() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let (frame, _) = h.request_frame(&recipient, &session_ask("q"));
    let (stream, mut out) = h.send(&frame);
    let job = submitted(&mut out).unwrap();
    h.core.closed(stream);
    let out = h.drain();
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Cancel(j) if *j == job.job)));
    assert!(out.iter().any(|o| matches!(o, Output::Forget(_))));
    assert!(h.events(&job, vec![text("late"), done(1)]).is_empty());
}

#[test]
fn framing_errors_unexpected_frames_and_unknown_keys_have_their_codes() {
    let mut h = harness(ServeConfig::default());
    let s = h.core.accept(h.now);
    h.core.receive(s, &[0x42], h.now);
    assert_eq!(error_code(&h.drain()), Some(Code::UnknownFrame));

    let s = h.core.accept(h.now);
    h.core
        .receive(s, &Frame::Attest { nonce: None }.encode()[..3], h.now);
    h.core.finish(s);
    assert_eq!(error_code(&h.drain()), Some(Code::TruncatedFrame));

    let (_, out) = h.send(&Frame::Response { nonce: vec![0; 16] });
    assert_eq!(error_code(&out), Some(Code::UnexpectedFrame));

    let (_, recipient) = h.attest();
    let (mut frame, _) = h.request_frame(&recipient, &plain("q"));
    if let Frame::Request { encapsulated, .. } = &mut frame {
        encapsulated[0] = encapsulated[0].wrapping_add(100);
    }
    let (_, out) = h.send(&frame);
    assert_eq!(error_code(&out), Some(Code::UnknownKeyId));

    let (mut frame, _) = h.request_frame(&recipient, &plain("q"));
    if let Frame::Request {
        attestation_sha256, ..
    } = &mut frame
    {
        *attestation_sha256 = [0; 32];
    }
    let (_, out) = h.send(&frame);
    assert_eq!(error_code(&out), Some(Code::UnknownAttestation));
}

#[test]
fn keys_rotate_and_the_previous_generation_is_honoured_for_its_grace() {
    let mut h = harness(ServeConfig {
        key_ttl: Duration::from_secs(100),
        key_grace: Duration::from_secs(30),
        ..ServeConfig::default()
    });
    let (_, old) = h.attest();
    h.advance(Duration::from_secs(101));
    h.core.handle_timeout(h.now);
    let (frame, _) = h.request_frame(&old, &plain("q"));
    let (_, mut out) = h.send(&frame);
    assert!(submitted(&mut out).is_some(), "within the grace period");
    h.advance(Duration::from_secs(31));
    h.core.handle_timeout(h.now);
    let (frame, _) = h.request_frame(&old, &plain("q"));
    let (_, out) = h.send(&frame);
    assert_eq!(error_code(&out), Some(Code::UnknownKeyId));
}

#[test]
fn health_reports_counts_only() {
    let mut h = harness(ServeConfig::default());
    h.attest();
    let (_, out) = h.send(&Frame::Health {
        status: String::new(),
    });
    let Frame::Health { status } = &received(&out).frames[0] else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(status).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["attestations"], 1);
    assert_eq!(v["nsm"], "emulated");
}

/// Sends `frames` one after another on one new stream.
fn send_all(h: &mut Harness, frames: &[Frame]) -> Vec<Output> {
    let s = h.core.accept(h.now);
    let mut bytes = Vec::new();
    for f in frames {
        f.encode_into(&mut bytes);
    }
    h.core.receive(s, &bytes, h.now);
    h.core.finish(s);
    h.drain()
}

#[test]
fn a_route_to_this_enclave_goes_on_and_a_route_elsewhere_is_refused() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let me = h.core.instance();
    assert_eq!(
        recipient.user_data.id,
        Some(me),
        "the instance id is attested"
    );
    let health: serde_json::Value =
        serde_json::from_str(&h.core.health(h.now)).expect("health is JSON");
    assert_eq!(health["instance"], hex::encode(me));

    let (frame, _) = h.request_frame(&recipient, &plain("routed"));
    let mut out = send_all(&mut h, &[Frame::Route { enclave: me }, frame]);
    assert!(submitted(&mut out).is_some(), "routed here: answered");

    let (frame, _) = h.request_frame(&recipient, &plain("misrouted"));
    let mut other = me;
    other[0] ^= 1;
    let mut out = send_all(&mut h, &[Frame::Route { enclave: other }, frame]);
    assert!(submitted(&mut out).is_none());
    assert_eq!(error_code(&out), Some(Code::EnclaveUnknown));

    let (frame, _) = h.request_frame(&recipient, &plain("twice"));
    let route = Frame::Route { enclave: me };
    let mut out = send_all(&mut h, &[route.clone(), route, frame]);
    assert!(submitted(&mut out).is_none());
    assert_eq!(error_code(&out), Some(Code::UnexpectedFrame));
}

/// What the relay sees of one shaped exchange: every frame the core transmits, as (size, gap since
/// the previous frame in cadences), and the answer the client reads from them. `script` gives each
/// piece of text with the millisecond it is generated at; the model is done at `done_ms`.
fn capture(
    h: &mut Harness,
    r: &Recipient,
    prompt: &str,
    script: &[(u64, &str)],
    done_ms: u64,
) -> (Vec<(usize, u64)>, String, Trailer) {
    let cadence = ServeConfig::default().shape_cadence.as_millis() as u64;
    let (frame, client) = h.request_frame(r, &Ask::new(prompt));
    let request_size = frame.encode().len();
    let start = h.now;
    let s = h.core.accept(h.now);
    h.core.receive(s, &frame.encode(), h.now);
    h.core.finish(s);
    let mut seen = vec![(request_size, 0)];
    let mut bytes = Vec::new();
    let mut last = start;
    let mut job = None;
    let mut closed = false;
    let mut ms = 0;
    while !closed {
        assert!(ms < 60_000, "the answer never ended");
        for (at, piece) in script {
            if *at == ms {
                h.core.inference_event(job.unwrap(), text(piece), h.now);
            }
        }
        if ms == done_ms {
            h.core
                .inference_event(job.unwrap(), done(script.len() as u64), h.now);
        }
        h.core.handle_timeout(h.now);
        while let Some(o) = h.core.poll_output() {
            match o {
                Output::Submit(req) => job = Some(req.job),
                Output::Transmit { bytes: b, .. } => {
                    let gap = h.now.saturating_since(last).as_millis() as u64;
                    // Rounded to the cadence, as a network observer's clock would see it.
                    seen.push((b.len(), (gap + cadence / 2) / cadence));
                    last = h.now;
                    bytes.extend(b);
                }
                Output::Close { .. } => closed = true,
                _ => {}
            }
        }
        h.advance(Duration::from_millis(1));
        ms += 1;
    }
    let mut dec = FrameDecoder::default();
    dec.push(&bytes);
    let mut frames = Vec::new();
    while let Some(f) = dec.next_frame().unwrap() {
        frames.push(f);
    }
    let Some(Frame::Response { nonce }) = frames.first() else {
        panic!("{frames:?}")
    };
    let mut opener = client.response_opener(nonce).unwrap();
    let mut answer = String::new();
    for f in &frames[1..] {
        match f {
            Frame::Chunk {
                last: false,
                sealed,
            } => {
                let plain = opener.open(sealed, false).unwrap();
                answer.push_str(std::str::from_utf8(shape::decode_data(&plain).unwrap()).unwrap());
            }
            Frame::Chunk { last: true, sealed } => {
                let trailer = Trailer::from_bytes(&opener.open(sealed, true).unwrap()).unwrap();
                return (seen, answer, trailer);
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("no final chunk")
}

#[test]
fn shaped_answers_in_one_bucket_look_the_same_to_the_relay() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    // Different questions, answers of different words and lengths, tokens at different times.
    let short: Vec<(u64, &str)> = vec![(40, "A copay "), (95, "is a "), (230, "fixed fee.")];
    let words = [
        "Your ",
        "deductible ",
        "is what ",
        "you pay ",
        "before ",
        "insurance ",
        "pays; ",
    ];
    let long: Vec<(u64, &str)> = (0..70)
        .map(|i| (5 + i * 9, words[i as usize % 7]))
        .collect();
    let (a, text_a, trailer_a) = capture(&mut h, &recipient, "What is a copay?", &short, 260);
    let (b, text_b, trailer_b) = capture(
        &mut h,
        &recipient,
        "Please explain, in as much detail as you can, what a deductible is and how it works.",
        &long,
        640,
    );
    assert_eq!(text_a, "A copay is a fixed fee.");
    assert_eq!(
        text_b.len(),
        long.iter().map(|(_, w)| w.len()).sum::<usize>()
    );
    assert!(text_b.len() > 500, "{}", text_b.len());
    assert!(trailer_a.receipt.is_some() && trailer_b.receipt.is_some());
    // The request, the RESPONSE, 7 chunks of one size a cadence apart, and the final chunk.
    assert_eq!(a, b, "the relay could tell these answers apart");
    assert_eq!(a.len(), 2 + shape::MIN_CHUNKS as usize, "{a:?}");
    assert!(a[2..].iter().all(|&(_, gap)| gap == 1), "{a:?}");
    assert!(
        (a[0].0 - 5).is_power_of_two(),
        "the request fills its bucket: {}",
        a[0].0
    );

    // An answer past the bucket takes the next one (12 chunks), so lengths show only by bucket.
    let (c, _, _) = capture(&mut h, &recipient, "What is a copay?", &short, 850);
    assert_eq!(c.len(), 2 + 12, "{c:?}");
    assert_eq!(c[..8], a[..8]);
}

#[test]
fn unshaped_answers_show_their_length_and_timing_which_is_why_shape_is_the_default() {
    let mut h = harness(ServeConfig::default());
    let (_, recipient) = h.attest();
    let sizes = |h: &mut Harness, pieces: &[&str]| -> Vec<usize> {
        let (frame, _) = h.request_frame(&recipient, &plain("q"));
        let (_, mut out) = h.send(&frame);
        let job = submitted(&mut out).unwrap();
        let mut events: Vec<_> = pieces.iter().map(|p| text(p)).collect();
        events.push(done(pieces.len() as u64));
        out.extend(h.events(&job, events));
        out.iter()
            .filter_map(|o| match o {
                Output::Transmit { bytes, .. } => Some(bytes.len()),
                _ => None,
            })
            .collect()
    };
    let a = sizes(&mut h, &["A copay ", "is a ", "fixed fee."]);
    let b = sizes(&mut h, &["Yes."]);
    assert_ne!(a, b);
    assert_eq!(a.len(), 1 + 3 + 1, "one frame per piece: {a:?}");
}
