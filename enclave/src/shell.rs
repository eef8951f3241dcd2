//! The tokio shell around the server core: it accepts connections, feeds their bytes to the core,
//! writes what the core transmits, and carries jobs to the model engine and its events back. One task
//! (the driver) owns the core, so the core needs no locks; each connection has a reader and a writer
//! task that talk to the driver through channels.

use std::collections::HashMap;
use std::time::Duration;

use confidant_model::engine::{self, Engine};
use confidant_model::generate::GenerateParams;
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::message::Finish;
use confidant_protocol::UnixMillis;
use confidant_runtime::endpoint::{Listener, Stream};
use confidant_server::inference::{InferenceEvent, InferenceFailure, InferenceRequest, JobId};
use confidant_server::{Core, Output, StreamId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 512;
/// How long a connection may stay silent before its request arrives.
const READ_IDLE: Duration = Duration::from_secs(60);
/// Frames queued for one connection's writer before the connection counts as stuck.
const WRITE_QUEUE: usize = 256;
/// How often the core's timers run.
const TICK: Duration = Duration::from_secs(1);

/// What the connection tasks tell the driver.
enum NetEvent {
    Accepted(Stream, tokio::sync::OwnedSemaphorePermit),
    Data(StreamId, Vec<u8>),
    Eof(StreamId),
    Gone(StreamId),
}

/// What a connection's writer is asked to do.
enum Write {
    Bytes(Vec<u8>),
}

/// Maps the core's request to the engine's job (the engine applies the chat template and stops).
fn job(request: InferenceRequest) -> engine::Job {
    let p = request.params;
    engine::Job {
        id: request.job.0,
        conversation: request.conversation.0,
        first_turn: request.first_turn,
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
pub fn event(e: engine::Event) -> (JobId, InferenceEvent) {
    use confidant_model::generate::Finish as F;
    match e {
        engine::Event::Text { job, text } => (JobId(job), InferenceEvent::Text(text)),
        engine::Event::Done { job, outcome } => (
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
        engine::Event::Failed { job, failure } => (
            JobId(job),
            InferenceEvent::Failed(match failure {
                engine::Failure::UnknownConversation => InferenceFailure::UnknownConversation,
                // The detail may name token ids of the prompt: it stays inside.
                engine::Failure::Model(_) => InferenceFailure::Model,
            }),
        ),
    }
}

/// Serves `endpoint` until the process ends: `on_bound` hears the bound address.
pub async fn serve(
    mut core: Core,
    engine: Engine,
    mut inference: mpsc::UnboundedReceiver<(JobId, InferenceEvent)>,
    endpoint: &Endpoint,
    on_bound: impl FnOnce(String),
) -> std::io::Result<()> {
    let listener = Listener::bind(endpoint).await?;
    on_bound(listener.local(endpoint)?);
    let (net_tx, mut net_rx) = mpsc::channel::<NetEvent>(1024);
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

    let mut writers: HashMap<StreamId, mpsc::Sender<Write>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            Some(ev) = net_rx.recv() => match ev {
                NetEvent::Accepted(stream, permit) => {
                    let id = core.accept();
                    let (w_tx, w_rx) = mpsc::channel(WRITE_QUEUE);
                    writers.insert(id, w_tx);
                    spawn_connection(id, stream, permit, w_rx, net_tx.clone());
                }
                NetEvent::Data(id, bytes) => core.receive(id, &bytes, UnixMillis::now()),
                NetEvent::Eof(id) => core.finish(id),
                NetEvent::Gone(id) => {
                    writers.remove(&id);
                    core.closed(id);
                }
            },
            Some((job, ev)) = inference.recv() => core.inference_event(job, ev, UnixMillis::now()),
            _ = tick.tick() => core.handle_timeout(UnixMillis::now()),
        }
        while let Some(output) = core.poll_output() {
            match output {
                Output::Transmit { stream, bytes } => {
                    let stuck = writers
                        .get(&stream)
                        .is_some_and(|w| w.try_send(Write::Bytes(bytes)).is_err());
                    if stuck {
                        // A peer that does not read is dropped rather than buffered without end.
                        writers.remove(&stream);
                        core.closed(stream);
                    }
                }
                // Dropping the sender lets the writer flush what is queued, then shut down.
                Output::Close { stream } => {
                    writers.remove(&stream);
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
}

/// The reader and writer tasks of one connection. The connection ends (and its slot is released)
/// when the writer has sent everything the core closed the stream with, or on any error.
fn spawn_connection(
    id: StreamId,
    stream: Stream,
    permit: tokio::sync::OwnedSemaphorePermit,
    mut writes: mpsc::Receiver<Write>,
    net: mpsc::Sender<NetEvent>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader_net = net.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tokio::time::timeout(READ_IDLE, rd.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    let _ = reader_net.send(NetEvent::Eof(id)).await;
                    return;
                }
                Ok(Ok(n)) => {
                    if reader_net
                        .send(NetEvent::Data(id, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    let _ = reader_net.send(NetEvent::Gone(id)).await;
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Write::Bytes(bytes)) = writes.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
        reader.abort();
        let _ = net.send(NetEvent::Gone(id)).await;
        drop(permit);
    });
}
