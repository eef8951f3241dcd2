//! The inference engine: one dedicated OS thread owns the model and every conversation's KV cache, so
//! the async server never blocks on libtorch. It takes commands (submit a turn, cancel one, forget a
//! conversation) and reports events (text, done, failed, evicted) through a sink.
//!
//! What it guarantees:
//! - **Bounded work.** Admission is bounded in jobs (a full engine refuses at once), and each job is
//!   checked against the context limit (conversation so far + prompt + answer tokens) after
//!   tokenizing and before any model work.
//! - **Bounded memory.** All KV caches live within one budget. A job reserves its worst case (its
//!   conversation grown to prompt + answer); when the budget is short, idle conversations are evicted
//!   oldest first (reported, so their sessions end), and only then is the job refused as busy.
//! - **Survival.** A job that panics or fails to allocate fails alone; the thread goes on.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use crate::generate::{generate, Conversation, Finish, GenerateParams, Outcome};
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
    /// Keep the conversation's KV cache after the answer (for a later turn).
    pub keep: bool,
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
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// Why a job failed. The detail of a model failure stays inside the enclave (it may name token ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A later turn for a conversation the engine does not hold (forgotten, evicted, never begun).
    UnknownConversation,
    /// The conversation with this prompt and answer would exceed the context limit.
    ContextLimit { limit: usize },
    /// No room in the KV budget even after evicting every idle conversation.
    Busy,
    /// The model failed (an error, an allocation failure or a panic).
    Model(String),
}

/// What the engine reports. For a job, in order: text pieces, then exactly one `Done` or `Failed`
/// (a cancelled job reports nothing more). `Evicted` says an idle conversation was dropped.
#[derive(Debug)]
pub enum Event {
    Text { job: JobId, text: String },
    Done { job: JobId, outcome: Outcome },
    Failed { job: JobId, failure: Failure },
    Evicted { conversation: ConversationId },
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
    /// Tokens a conversation may hold: system prompt, every turn and every answer.
    pub context_tokens: usize,
    /// Bytes all KV caches together may take.
    pub kv_budget_bytes: u64,
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("capacity", &self.capacity)
            .field("threads", &self.threads)
            .field("context_tokens", &self.context_tokens)
            .field("kv_budget_bytes", &self.kv_budget_bytes)
            .finish_non_exhaustive()
    }
}

/// Counters the engine keeps for `HEALTH` (read from any thread).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub alive: AtomicBool,
    /// Jobs admitted and not finished.
    pub jobs: AtomicUsize,
    pub kv_bytes: AtomicU64,
    pub kv_budget_bytes: AtomicU64,
    pub conversations: AtomicUsize,
    pub failed_jobs: AtomicU64,
    pub evictions: AtomicU64,
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
    stats: Arc<EngineStats>,
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
        let stats = Arc::new(EngineStats::default());
        stats.alive.store(true, Ordering::Release);
        stats
            .kv_budget_bytes
            .store(config.kv_budget_bytes, Ordering::Release);
        let worker = Worker {
            bytes_per_token: model.model.kv_bytes_per_token(),
            template: config.template,
            context_tokens: config.context_tokens,
            budget: config.kv_budget_bytes,
            used: 0,
            model,
            rx,
            sink,
            stats: stats.clone(),
            waiting: VecDeque::new(),
            conversations: HashMap::new(),
            clock: 0,
        };
        let threads = config.threads;
        let alive = stats.clone();
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                if let Some(t) = threads {
                    tch::set_num_threads(t);
                }
                worker.run();
                alive.alive.store(false, Ordering::Release);
            })
            .map_err(|e| ModelError::Io(format!("spawning the inference thread: {e}")))?;
        Ok(Engine {
            tx: Some(tx),
            stats,
            capacity: config.capacity,
            thread: Some(thread),
        })
    }

    /// Admits a job, or refuses at once when the engine is at capacity (or has stopped).
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let tx = self.tx.as_ref().ok_or(Busy)?;
        if !self.stats.alive.load(Ordering::Acquire) {
            return Err(Busy);
        }
        let admitted = self
            .stats
            .jobs
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Busy);
        }
        tx.send(Command::Submit(job)).map_err(|_| {
            self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
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

    /// The engine's counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
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

/// A conversation the engine holds between turns.
struct Held {
    conversation: Conversation,
    /// Bytes accounted to it in the budget.
    bytes: u64,
    /// When it was last used (the engine's job counter), for eviction oldest first.
    last_used: u64,
}

/// The engine thread's state.
struct Worker {
    model: LoadedModel,
    template: ChatTemplate,
    context_tokens: usize,
    bytes_per_token: u64,
    budget: u64,
    /// Bytes held by idle conversations and reserved by the running job.
    used: u64,
    rx: Receiver<Command>,
    sink: Sink,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Job>,
    conversations: HashMap<ConversationId, Held>,
    clock: u64,
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
            loop {
                match self.rx.try_recv() {
                    Ok(c) => self.apply(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.waiting.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
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
            Command::Cancel(id) => self.cancel_waiting(id),
            Command::Forget(c) => self.forget(c),
        }
    }

    fn cancel_waiting(&mut self, id: JobId) {
        let before = self.waiting.len();
        self.waiting.retain(|j| j.id != id);
        if self.waiting.len() < before {
            self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn forget(&mut self, c: ConversationId) {
        if let Some(held) = self.conversations.remove(&c) {
            self.used -= held.bytes;
        }
        self.publish();
    }

    fn publish(&self) {
        self.stats.kv_bytes.store(self.used, Ordering::Release);
        self.stats
            .conversations
            .store(self.conversations.len(), Ordering::Release);
    }

    /// Makes room for `need` more bytes by evicting idle conversations oldest first. Returns whether
    /// the room is there.
    fn make_room(&mut self, need: u64) -> bool {
        while self.used + need > self.budget {
            let Some((&oldest, _)) = self.conversations.iter().min_by_key(|(_, h)| h.last_used)
            else {
                return false;
            };
            self.forget(oldest);
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            (self.sink)(Event::Evicted {
                conversation: oldest,
            });
        }
        true
    }

    fn answer(&mut self, job: Job) {
        let Job {
            id,
            conversation: cid,
            first_turn,
            keep,
            text,
            mut params,
        } = job;
        self.clock += 1;
        params.stop = ChatTemplate::stop_strings();
        let (mut conversation, held_bytes) = if first_turn {
            (Conversation::new(&self.model.model), 0)
        } else {
            match self.conversations.remove(&cid) {
                Some(h) => (h.conversation, h.bytes),
                None => {
                    return self.finish(Event::Failed {
                        job: id,
                        failure: Failure::UnknownConversation,
                    })
                }
            }
        };
        // Put a continued conversation back unchanged when the job cannot run (its bytes are still
        // counted in `used`).
        let restore = |w: &mut Worker, conversation: Conversation| {
            if !first_turn {
                w.conversations.insert(
                    cid,
                    Held {
                        conversation,
                        bytes: held_bytes,
                        last_used: w.clock,
                    },
                );
            }
        };
        // Tokenize, then check the context limit: no model work yet.
        let ids = match self.model.turn_ids(&self.template, &text, first_turn) {
            Ok(ids) => ids,
            Err(e) => {
                restore(self, conversation);
                return self.finish(Event::Failed {
                    job: id,
                    failure: Failure::Model(e.to_string()),
                });
            }
        };
        drop(text);
        let total = conversation.len() + ids.len() + params.max_new_tokens;
        if total > self.context_tokens {
            restore(self, conversation);
            return self.finish(Event::Failed {
                job: id,
                failure: Failure::ContextLimit {
                    limit: self.context_tokens,
                },
            });
        }
        // Reserve the worst case; the conversation's own bytes are part of it already.
        let reserve = total as u64 * self.bytes_per_token;
        let need = reserve.saturating_sub(held_bytes);
        if !self.make_room(need) {
            restore(self, conversation);
            return self.finish(Event::Failed {
                job: id,
                failure: Failure::Busy,
            });
        }
        self.used += need;
        self.publish();

        let result = self.generate(id, &mut conversation, &ids, &params);
        self.used -= reserve;
        match result {
            Ok(outcome) if outcome.finish == Finish::Cancelled => {
                self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
                self.publish();
            }
            Ok(outcome) => {
                if keep {
                    let bytes = conversation.len() as u64 * self.bytes_per_token;
                    self.used += bytes;
                    self.conversations.insert(
                        cid,
                        Held {
                            conversation,
                            bytes,
                            last_used: self.clock,
                        },
                    );
                }
                self.finish(Event::Done { job: id, outcome });
            }
            Err(detail) => {
                self.stats.failed_jobs.fetch_add(1, Ordering::Relaxed);
                self.finish(Event::Failed {
                    job: id,
                    failure: Failure::Model(detail),
                });
            }
        }
    }

    /// Runs the model for one job, catching panics (libtorch reports an allocation failure as a
    /// panic in the non-`f_` API): the job fails, the engine goes on.
    fn generate(
        &mut self,
        id: JobId,
        conversation: &mut Conversation,
        ids: &[i64],
        params: &GenerateParams,
    ) -> Result<Outcome, String> {
        let mut cancelled = false;
        let (rx, sink, waiting, stats) = (&self.rx, &mut self.sink, &mut self.waiting, &self.stats);
        let mut forgotten = Vec::new();
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
                            stats.jobs.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    Command::Forget(c) => forgotten.push(c),
                }
            }
            !cancelled
        };
        let model = &self.model;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generate(
                &model.model,
                &model.tokenizer,
                conversation,
                ids,
                params,
                model.eos,
                &mut on_text,
            )
        }));
        for c in forgotten {
            self.forget(c);
        }
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked".into()),
        }
    }

    /// Reports a job's last event and releases its admission.
    fn finish(&mut self, event: Event) {
        self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
        self.publish();
        (self.sink)(event);
    }
}
