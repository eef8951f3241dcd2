//! The inference engine: one dedicated OS thread owns the model and every conversation's KV cache, so
//! the async server never blocks on libtorch. It takes commands (submit a turn, cancel one, forget a
//! conversation) and reports events (text, done, failed) through a sink. Admission is bounded: a full
//! engine refuses at once instead of queueing without end.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use crate::generate::{generate, Conversation, GenerateParams, Outcome};
use crate::template::ChatTemplate;
use crate::{LoadedModel, ModelError};

/// Names a job (one answer) for the engine and its caller.
pub type JobId = u64;
/// Names a conversation whose KV cache the engine keeps between turns.
pub type ConversationId = u64;

/// One turn to answer.
pub struct Job {
    pub id: JobId,
    pub conversation: ConversationId,
    /// The first turn starts the conversation (after the system prompt); a later one continues it.
    pub first_turn: bool,
    /// The user's text (the engine applies the chat template).
    pub text: Zeroizing<String>,
    /// How to sample; the engine sets the stop strings.
    pub params: GenerateParams,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("conversation", &self.conversation)
            .field("first_turn", &self.first_turn)
            .finish_non_exhaustive()
    }
}

/// Why a job failed. The detail of a model failure stays inside the enclave (it may name token ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A later turn for a conversation the engine does not hold (forgotten, or never begun).
    UnknownConversation,
    /// The model failed.
    Model(String),
}

/// What a job reports, in order: text pieces, then exactly one `Done` or `Failed`. A cancelled job
/// reports nothing more.
#[derive(Debug)]
pub enum Event {
    Text { job: JobId, text: String },
    Done { job: JobId, outcome: Outcome },
    Failed { job: JobId, failure: Failure },
}

/// The engine is full: try later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the inference engine is at capacity")]
pub struct Busy;

/// How the engine runs.
#[derive(Clone)]
pub struct EngineConfig {
    /// Jobs admitted at once (running and waiting); more are refused with [`Busy`].
    pub capacity: usize,
    /// libtorch intra-op threads.
    pub threads: Option<i32>,
    pub template: ChatTemplate,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("capacity", &self.capacity)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

enum Command {
    Submit(Job),
    Cancel(JobId),
    Forget(ConversationId),
}

/// Receives the engine's events (called on the engine thread; must not block for long).
pub type Sink = Box<dyn FnMut(Event) + Send>;

/// Handle to the engine thread. Dropping it lets the thread finish and exit.
#[derive(Debug)]
pub struct Engine {
    tx: Option<Sender<Command>>,
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the engine thread, which takes the model.
    pub fn spawn(
        model: LoadedModel,
        config: EngineConfig,
        sink: Sink,
    ) -> Result<Engine, ModelError> {
        let (tx, rx) = channel();
        let admitted = Arc::new(AtomicUsize::new(0));
        let state = Worker {
            template: config.template,
            model,
            rx,
            sink,
            admitted: admitted.clone(),
            waiting: VecDeque::new(),
            conversations: HashMap::new(),
        };
        let threads = config.threads;
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                if let Some(t) = threads {
                    tch::set_num_threads(t);
                }
                state.run();
            })
            .map_err(|e| ModelError::Io(format!("spawning the inference thread: {e}")))?;
        Ok(Engine {
            tx: Some(tx),
            admitted,
            capacity: config.capacity,
            thread: Some(thread),
        })
    }

    /// Admits a job, or refuses at once when the engine is at capacity.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let tx = self.tx.as_ref().ok_or(Busy)?;
        let admitted = self
            .admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Busy);
        }
        tx.send(Command::Submit(job)).map_err(|_| {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            Busy
        })
    }

    /// Stops a job (its client went away); it reports nothing more.
    pub fn cancel(&self, job: JobId) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Cancel(job));
        }
    }

    /// Drops a conversation's KV cache (its session ended).
    pub fn forget(&self, conversation: ConversationId) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Forget(conversation));
        }
    }

    /// Jobs admitted and not yet finished.
    pub fn load(&self) -> usize {
        self.admitted.load(Ordering::Acquire)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine thread's state.
struct Worker {
    model: LoadedModel,
    template: ChatTemplate,
    rx: Receiver<Command>,
    sink: Sink,
    admitted: Arc<AtomicUsize>,
    waiting: VecDeque<Job>,
    conversations: HashMap<ConversationId, Conversation>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(c) => self.apply(c),
                    Err(_) => return,
                }
            }
            if self.drain() {
                return;
            }
            if let Some(job) = self.waiting.pop_front() {
                self.answer(job);
            }
        }
    }

    /// Applies a command that arrived while no job runs.
    fn apply(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.waiting.push_back(job),
            Command::Cancel(id) => {
                let before = self.waiting.len();
                self.waiting.retain(|j| j.id != id);
                if self.waiting.len() < before {
                    self.admitted.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Command::Forget(c) => {
                self.conversations.remove(&c);
            }
        }
    }

    /// Applies every pending command. Returns whether the engine handle is gone (and nothing waits).
    fn drain(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.apply(c),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return self.waiting.is_empty(),
            }
        }
    }

    fn answer(&mut self, job: Job) {
        let Job {
            id,
            conversation: cid,
            first_turn,
            text,
            mut params,
        } = job;
        params.stop = ChatTemplate::stop_strings();
        let conversation = if first_turn {
            Some(Conversation::new(&self.model.model))
        } else {
            self.conversations.remove(&cid)
        };
        let Some(mut conversation) = conversation else {
            self.finish(Event::Failed {
                job: id,
                failure: Failure::UnknownConversation,
            });
            return;
        };
        let result = self
            .model
            .turn_ids(&self.template, &text, first_turn)
            .and_then(|ids| {
                drop(text);
                let mut cancelled = false;
                let (rx, sink, waiting, admitted, conversations) = (
                    &self.rx,
                    &mut self.sink,
                    &mut self.waiting,
                    &self.admitted,
                    &mut self.conversations,
                );
                let mut on_text = |piece: &str| {
                    sink(Event::Text {
                        job: id,
                        text: piece.to_string(),
                    });
                    // Commands that arrived meanwhile: a cancel of this job stops it.
                    while let Ok(c) = rx.try_recv() {
                        match c {
                            Command::Submit(j) => waiting.push_back(j),
                            Command::Cancel(j) if j == id => cancelled = true,
                            Command::Cancel(j) => {
                                let before = waiting.len();
                                waiting.retain(|w| w.id != j);
                                if waiting.len() < before {
                                    admitted.fetch_sub(1, Ordering::AcqRel);
                                }
                            }
                            Command::Forget(c) => {
                                conversations.remove(&c);
                            }
                        }
                    }
                    !cancelled
                };
                generate(
                    &self.model.model,
                    &self.model.tokenizer,
                    &mut conversation,
                    &ids,
                    &params,
                    self.model.eos,
                    &mut on_text,
                )
            });
        match result {
            Ok(outcome) if outcome.finish == crate::generate::Finish::Cancelled => {
                self.admitted.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(outcome) => {
                self.conversations.insert(cid, conversation);
                self.finish(Event::Done { job: id, outcome });
            }
            Err(e) => self.finish(Event::Failed {
                job: id,
                failure: Failure::Model(e.to_string()),
            }),
        }
    }

    /// Reports a job's last event and releases its admission.
    fn finish(&mut self, event: Event) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        (self.sink)(event);
    }
}
