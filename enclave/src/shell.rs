//! The tokio shell around the server core: it accepts connections, feeds their bytes to the core,
//! writes what the core transmits, and carries jobs to the model engine and its events back. One task
//! (the driver) owns the core, so the core needs no locks; each connection has a task that reads it
//! and one that writes it, talking to the driver through channels.
//!
//! A connection is either a link from the relay (many streams multiplexed, `confidant_protocol::link`)
//! or one plain stream (`health`, tests). Every stream becomes a core stream; the core's deadlines
//! close streams that do not deliver a frame in time, and a connection must say which kind it is within
//! the same first-frame deadline.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use confidant_model::engine::{self, Engine};
use confidant_model::generate::GenerateParams;
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::link::{self, Kind, LinkDecoder};
use confidant_protocol::message::Finish;
use confidant_protocol::UnixMillis;
use confidant_runtime::endpoint::{Listener, Stream};
use confidant_server::inference::{
    ConversationId, EngineStatus, InferenceEvent, InferenceFailure, InferenceRequest, JobId,
};
use confidant_server::{Core, Output, StreamId};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Connections served at once (links from the relay and plain probes).
const MAX_CONNECTIONS: usize = 1024;
/// How long a new connection may take to show whether it is a link or a plain stream.
const SNIFF_DEADLINE: Duration = Duration::from_secs(5);
/// Writes queued for one connection before it counts as stuck (and is dropped).
const WRITE_QUEUE: usize = 1024;
/// How often the core's timers run.
const TICK: Duration = Duration::from_secs(1);

type ConnId = u64;
/// A stream of a connection: 0 for a plain connection, the link's stream id otherwise.
type Sub = u32;

/// What the connection tasks tell the driver.
enum NetEvent {
    Accepted(Stream, OwnedSemaphorePermit),
    Opened(ConnId, Sub),
    Data(ConnId, Sub, Vec<u8>),
    Eof(ConnId, Sub),
    Gone(ConnId, Sub),
    ConnGone(ConnId),
}

/// What a connection's writer is asked to do.
enum Write {
    Data(Sub, Vec<u8>),
    /// Nothing more on this stream (a plain connection shuts down).
    Finish(Sub),
}

/// What the engine sink forwards to the driver.
pub enum EngineNotice {
    Job(JobId, InferenceEvent),
    Evicted(ConversationId),
}

/// Maps the core's request to the engine's job (the engine applies the chat template and stops).
fn job(request: InferenceRequest) -> engine::Job {
    let p = request.params;
    engine::Job {
        id: request.job.0,
        conversation: request.conversation.0,
        first_turn: request.first_turn,
        keep: request.keep,
        text: request.text,
        params: GenerateParams {
            max_new_tokens: p.max_new_tokens as usize,
            temperature: p.temperature,
            top_k: p.top_k.map(|k| k as usize),
            top_p: p.top_p,
            seed: p.seed,
            stop: Vec::new(),
        },
    }
}

/// Maps an engine event to the core's.
pub fn notice(e: engine::Event) -> EngineNotice {
    use confidant_model::generate::Finish as F;
    let failed = |job, f| EngineNotice::Job(JobId(job), InferenceEvent::Failed(f));
    match e {
        engine::Event::Text { job, text } => {
            EngineNotice::Job(JobId(job), InferenceEvent::Text(text))
        }
        engine::Event::Done { job, outcome } => EngineNotice::Job(
            JobId(job),
            InferenceEvent::Done {
                finish: match outcome.finish {
                    F::Eos => Finish::Eos,
                    F::StopString => Finish::Stop,
                    // The engine reports no event for a cancelled job.
                    F::MaxTokens | F::Cancelled => Finish::Length,
                },
                prompt_tokens: outcome.prompt_tokens as u64,
                generated_tokens: outcome.generated_tokens.len() as u64,
            },
        ),
        engine::Event::Failed { job, failure } => failed(
            job,
            match failure {
                engine::Failure::UnknownConversation => InferenceFailure::UnknownConversation,
                engine::Failure::ContextLimit { limit } => InferenceFailure::ContextLimit {
                    limit: u32::try_from(limit).unwrap_or(u32::MAX),
                },
                engine::Failure::Busy => InferenceFailure::Busy,
                // The detail may name token ids of the prompt: it stays inside.
                engine::Failure::Model(_) => InferenceFailure::Model,
            },
        ),
        engine::Event::Evicted { conversation } => {
            EngineNotice::Evicted(ConversationId(conversation))
        }
    }
}

fn engine_status(engine: &Engine) -> EngineStatus {
    let s = engine.stats();
    EngineStatus {
        alive: s.alive.load(Ordering::Acquire),
        jobs: s.jobs.load(Ordering::Acquire),
        kv_bytes: s.kv_bytes.load(Ordering::Acquire),
        kv_budget_bytes: s.kv_budget_bytes.load(Ordering::Acquire),
        conversations: s.conversations.load(Ordering::Acquire),
        failed_jobs: s.failed_jobs.load(Ordering::Acquire),
    }
}

/// The driver's view of the connections and their streams.
#[derive(Default)]
struct Routes {
    writers: HashMap<ConnId, mpsc::Sender<Write>>,
    streams: HashMap<(ConnId, Sub), StreamId>,
    by_stream: HashMap<StreamId, (ConnId, Sub)>,
}

impl Routes {
    fn remove_stream(&mut self, stream: StreamId) -> Option<(ConnId, Sub)> {
        let key = self.by_stream.remove(&stream)?;
        self.streams.remove(&key);
        Some(key)
    }
}

/// Serves `endpoint` until the process ends: `on_bound` hears the bound address.
pub async fn serve(
    mut core: Core,
    engine: Engine,
    mut notices: mpsc::UnboundedReceiver<EngineNotice>,
    endpoint: &Endpoint,
    on_bound: impl FnOnce(String),
) -> std::io::Result<()> {
    let listener = Listener::bind(endpoint).await?;
    on_bound(listener.local(endpoint)?);
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(4096);
    let accept_tx = net_tx.clone();
    tokio::spawn(async move {
        let permits = std::sync::Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok(stream) => {
                    if accept_tx
                        .send(NetEvent::Accepted(stream, permit))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    });

    let mut routes = Routes::default();
    let mut next_conn: ConnId = 0;
    let mut tick = tokio::time::interval(TICK);
    loop {
        // The next shaped-answer chunk, if any is scheduled before the tick.
        let paced = core
            .poll_timeout()
            .map(|at| tokio::time::Instant::now() + at.saturating_since(UnixMillis::now()));
        tokio::select! {
            Some(ev) = net_rx.recv() => {
                let now = UnixMillis::now();
                match ev {
                    NetEvent::Accepted(stream, permit) => {
                        next_conn += 1;
                        let (w_tx, w_rx) = mpsc::channel(WRITE_QUEUE);
                        routes.writers.insert(next_conn, w_tx);
                        spawn_connection(next_conn, stream, permit, w_rx, net_tx.clone());
                    }
                    NetEvent::Opened(conn, sub) => {
                        if routes.writers.contains_key(&conn) && !routes.streams.contains_key(&(conn, sub)) {
                            let id = core.accept(now);
                            routes.streams.insert((conn, sub), id);
                            routes.by_stream.insert(id, (conn, sub));
                        }
                    }
                    NetEvent::Data(conn, sub, bytes) => {
                        if let Some(&id) = routes.streams.get(&(conn, sub)) {
                            // HEALTH reports the engine as it is now.
                            core.set_engine_status(engine_status(&engine));
                            core.receive(id, &bytes, now);
                        }
                    }
                    NetEvent::Eof(conn, sub) => {
                        if let Some(&id) = routes.streams.get(&(conn, sub)) {
                            core.finish(id);
                        }
                    }
                    NetEvent::Gone(conn, sub) => {
                        if let Some(id) = routes.streams.get(&(conn, sub)).copied() {
                            routes.remove_stream(id);
                            core.closed(id);
                        }
                    }
                    NetEvent::ConnGone(conn) => {
                        routes.writers.remove(&conn);
                        let gone: Vec<StreamId> = routes
                            .streams
                            .iter()
                            .filter(|((c, _), _)| *c == conn)
                            .map(|(_, id)| *id)
                            .collect();
                        for id in gone {
                            routes.remove_stream(id);
                            core.closed(id);
                        }
                    }
                }
            },
            Some(n) = notices.recv() => match n {
                EngineNotice::Job(job, ev) => core.inference_event(job, ev, UnixMillis::now()),
                EngineNotice::Evicted(c) => core.conversation_evicted(c),
            },
            _ = tick.tick() => {
                core.set_engine_status(engine_status(&engine));
                core.handle_timeout(UnixMillis::now());
            }
            _ = async { tokio::time::sleep_until(paced.unwrap_or_else(tokio::time::Instant::now)).await }, if paced.is_some() => {
                core.handle_timeout(UnixMillis::now());
            }
        }
        drain(&mut core, &engine, &mut routes);
    }
}

/// Carries out what the core asked for.
fn drain(core: &mut Core, engine: &Engine, routes: &mut Routes) {
    while let Some(output) = core.poll_output() {
        match output {
            Output::Transmit { stream, bytes } => {
                let Some(&(conn, sub)) = routes.by_stream.get(&stream) else {
                    continue;
                };
                let stuck = routes
                    .writers
                    .get(&conn)
                    .is_some_and(|w| w.try_send(Write::Data(sub, bytes)).is_err());
                if stuck {
                    // A peer that does not read is dropped rather than buffered without end.
                    routes.writers.remove(&conn);
                    routes.remove_stream(stream);
                    core.closed(stream);
                }
            }
            Output::Close { stream } => {
                if let Some((conn, sub)) = routes.remove_stream(stream) {
                    if let Some(w) = routes.writers.get(&conn) {
                        let _ = w.try_send(Write::Finish(sub));
                    }
                }
                // The exchange is over: the core forgets the stream now.
                core.closed(stream);
            }
            Output::Submit(request) => {
                let id = request.job;
                if engine.submit(job(request)).is_err() {
                    core.inference_event(
                        id,
                        InferenceEvent::Failed(InferenceFailure::Busy),
                        UnixMillis::now(),
                    );
                }
            }
            Output::Cancel(job) => engine.cancel(job.0),
            Output::Forget(conversation) => engine.forget(conversation.0),
        }
    }
}

/// The tasks of one connection. It ends (and its slot is released) when the peer closes it, on any
/// error, or when a plain stream has been answered.
fn spawn_connection(
    conn: ConnId,
    stream: Stream,
    permit: OwnedSemaphorePermit,
    writes: mpsc::Receiver<Write>,
    net: mpsc::Sender<NetEvent>,
) {
    tokio::spawn(async move {
        let (mut rd, wr) = tokio::io::split(stream);
        // Sniff: the link preamble, or the first bytes of a plain stream.
        let mut first = Vec::with_capacity(link::PREAMBLE.len());
        let mut buf = vec![0u8; 16 * 1024];
        let sniffed = tokio::time::timeout(SNIFF_DEADLINE, async {
            while first.len() < link::PREAMBLE.len() && link::may_be_preamble(&first) {
                let n = rd
                    .read(&mut buf[..link::PREAMBLE.len() - first.len()])
                    .await?;
                if n == 0 {
                    break;
                }
                first.extend_from_slice(&buf[..n]);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let is_link = first.as_slice() == link::PREAMBLE;
        if !matches!(sniffed, Ok(Ok(()))) || first.is_empty() {
            let _ = net.send(NetEvent::ConnGone(conn)).await;
            return;
        }
        let mut writer = tokio::spawn(write_loop(wr, writes, is_link));
        if is_link {
            // A link lives until the relay closes it (or breaks it).
            read_link(conn, &mut rd, &net).await;
            writer.abort();
        } else {
            // A plain stream ends when its answer is written, whatever the peer does after.
            tokio::select! {
                () = read_plain(conn, &mut rd, first, &net) => { let _ = writer.await; }
                _ = &mut writer => {}
            }
        }
        let _ = net.send(NetEvent::ConnGone(conn)).await;
        drop(permit);
    });
}

async fn read_plain<R: AsyncRead + Unpin>(
    conn: ConnId,
    rd: &mut R,
    first: Vec<u8>,
    net: &mpsc::Sender<NetEvent>,
) {
    if net.send(NetEvent::Opened(conn, 0)).await.is_err()
        || net.send(NetEvent::Data(conn, 0, first)).await.is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) => {
                let _ = net.send(NetEvent::Eof(conn, 0)).await;
                return;
            }
            Ok(n) => {
                if net
                    .send(NetEvent::Data(conn, 0, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(_) => {
                let _ = net.send(NetEvent::Gone(conn, 0)).await;
                return;
            }
        }
    }
}

async fn read_link<R: AsyncRead + Unpin>(conn: ConnId, rd: &mut R, net: &mpsc::Sender<NetEvent>) {
    let mut dec = LinkDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        loop {
            let frame = match dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "link closed");
                    return;
                }
            };
            let ev = match frame.kind {
                Kind::Open => NetEvent::Opened(conn, frame.stream),
                Kind::Data => NetEvent::Data(conn, frame.stream, frame.payload),
                Kind::Fin => NetEvent::Eof(conn, frame.stream),
                Kind::Reset => NetEvent::Gone(conn, frame.stream),
            };
            if net.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Writes what the driver sends. On a plain connection, `Finish` shuts the connection down; on a
/// link, it is a `FIN` frame.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut writes: mpsc::Receiver<Write>,
    link: bool,
) {
    let mut out = Vec::with_capacity(64 * 1024);
    while let Some(w) = writes.recv().await {
        out.clear();
        let mut finish = false;
        match w {
            Write::Data(sub, bytes) if link => link::encode_data(sub, &bytes, &mut out),
            Write::Data(_, bytes) => out = bytes,
            Write::Finish(sub) if link => link::encode_control(sub, Kind::Fin, &mut out),
            Write::Finish(_) => finish = true,
        }
        if !out.is_empty() && wr.write_all(&out).await.is_err() {
            return;
        }
        if finish {
            let _ = wr.shutdown().await;
            return;
        }
    }
}
