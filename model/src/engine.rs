//! The inference engine: one dedicated OS thread owns the model and every conversation's KV cache, so
//! the async server never blocks on the model. It takes commands (submit a turn, cancel one, forget a
//! conversation) and reports events (text, done, failed, evicted) through a sink.
//!
//! **Continuous batching.** The thread runs the model one step at a time for every running answer
//! together: each decoding sequence brings its next token, and prompts waiting to start bring a
//! chunk of theirs (at most [`EngineConfig::prefill_chunk`] tokens a step, shared oldest first), so a
//! long prompt delays the running answers by a bounded time and the weights are streamed once per
//! step however many sequences ride on it. A new job joins between steps; a finished or cancelled
//! one leaves at once. Every running sequence advances every step, and jobs start in the order they
//! came: none starves.
//!
//! **A shared system prompt.** The system prompt's keys and values are computed once, at spawn;
//! every new conversation starts after them, reading them in place.
//!
//! What it guarantees besides:
//! - **Bounded work.** Admission is bounded in jobs (a full engine refuses at once), and each job is
//!   checked against the context limit (conversation so far + prompt + answer tokens) after
//!   tokenizing and before any model work.
//! - **Bounded memory.** All KV caches live within one budget. A job reserves its worst case (its
//!   conversation grown to prompt + answer) when it starts; when the budget is short, idle
//!   conversations are evicted oldest first (reported, so their sessions end), and only then is the
//!   job refused as busy. The reservation is real memory, taken when the job starts: a failed
//!   allocation fails that job.
//! - **Survival.** A sequence that fails (no memory, a failure in its attention) fails alone; a step
//!   that panics fails the sequences in it, and the thread goes on.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use zeroize::Zeroizing;

use crate::bloom::{Scratch, Segment};
use crate::cache::{KvCache, Prefix};
use crate::generate::{Conversation, Finish, GenerateParams, Generation, Outcome};
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
    /// A later turn for a conversation the engine does not hold (forgotten, evicted, never begun,
    /// or answering another turn right now).
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
    /// Threads for the model [default: all cores].
    pub threads: Option<usize>,
    pub template: ChatTemplate,
    /// Tokens a conversation may hold: system prompt, every turn and every answer.
    pub context_tokens: usize,
    /// Bytes all KV caches together may take (the shared system prompt's included).
    pub kv_budget_bytes: u64,
    /// Sequences answered together (one decoding step runs all of them).
    pub max_batch: usize,
    /// Prompt tokens run per step, over all starting prompts: bounds how long a step (and so each
    /// running answer's next token) can take.
    pub prefill_chunk: usize,
}

impl EngineConfig {
    /// Defaults for what is not given.
    pub fn new(template: ChatTemplate, context_tokens: usize, kv_budget_bytes: u64) -> Self {
        EngineConfig {
            capacity: 64,
            threads: None,
            template,
            context_tokens,
            kv_budget_bytes,
            max_batch: 16,
            prefill_chunk: 256,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("capacity", &self.capacity)
            .field("threads", &self.threads)
            .field("context_tokens", &self.context_tokens)
            .field("kv_budget_bytes", &self.kv_budget_bytes)
            .field("max_batch", &self.max_batch)
            .field("prefill_chunk", &self.prefill_chunk)
            .finish_non_exhaustive()
    }
}

/// Counters the engine keeps for `HEALTH` (read from any thread).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub alive: AtomicBool,
    /// Jobs admitted and not finished.
    pub jobs: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    pub kv_bytes: AtomicU64,
    pub kv_budget_bytes: AtomicU64,
    pub conversations: AtomicUsize,
    pub failed_jobs: AtomicU64,
    pub evictions: AtomicU64,
    /// Model steps run since boot.
    pub steps: AtomicU64,
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
    /// Runs the system prompt, then starts the engine thread, which takes the model.
    pub fn spawn(
        mut model: LoadedModel,
        config: EngineConfig,
        sink: Sink,
    ) -> Result<Engine, ModelError> {
        if config.max_batch == 0 || config.prefill_chunk == 0 {
            return Err(ModelError::Input(
                "max_batch and prefill_chunk must be at least 1".into(),
            ));
        }
        if let Some(t) = config.threads {
            model.model.set_threads(t.max(1));
        }
        let bytes_per_token = model.model.kv_bytes_per_token();
        let prefix = system_prefix(&model, &config.template)?;
        let prefix_bytes = prefix.as_ref().map_or(0, |p| p.bytes());
        let prefix_len = prefix.as_ref().map_or(0, |p| p.len());
        if prefix_bytes > config.kv_budget_bytes || prefix_len >= config.context_tokens {
            return Err(ModelError::Input(
                "the system prompt does not fit the KV budget or the context limit".into(),
            ));
        }
        let (tx, rx) = channel();
        let stats = Arc::new(EngineStats::default());
        stats.alive.store(true, Ordering::Release);
        stats
            .kv_budget_bytes
            .store(config.kv_budget_bytes, Ordering::Release);
        stats.kv_bytes.store(prefix_bytes, Ordering::Release);
        let worker = Worker {
            bytes_per_token,
            context_tokens: config.context_tokens,
            budget: config.kv_budget_bytes,
            used: prefix_bytes,
            max_batch: config.max_batch,
            prefill_chunk: config.prefill_chunk,
            prefix,
            model,
            rx,
            sink,
            stats: stats.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            conversations: HashMap::new(),
            clock: 0,
            scratch: Scratch::default(),
        };
        let alive = stats.clone();
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
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

/// The system prompt's keys and values, computed once (none without a system prompt).
fn system_prefix(
    model: &LoadedModel,
    template: &ChatTemplate,
) -> Result<Option<Arc<Prefix>>, ModelError> {
    if template.system_prefix().is_empty() {
        return Ok(None);
    }
    let tokens = Zeroizing::new(model.tokenizer.encode(template.system_prefix())?);
    let mut cache = model.model.new_cache();
    model.model.forward(&tokens, &mut cache)?;
    Ok(Some(Arc::new(cache.into_prefix(
        tokens.to_vec(),
        model.model.config.n_head,
        model.model.prefix_precision(),
    )?)))
}

/// A conversation the engine holds between turns.
struct Held {
    conversation: Conversation,
    /// Bytes accounted to it in the budget.
    bytes: u64,
    /// When it was last used (the engine's job counter), for eviction oldest first.
    last_used: u64,
}

/// A job in the running batch.
struct Running {
    id: JobId,
    conversation_id: ConversationId,
    keep: bool,
    conversation: Conversation,
    /// Tokens to run before the next sampling: the rest of the prompt, or the last sampled token.
    feed: Vec<i64>,
    generation: Generation,
    prompt_tokens: usize,
    /// Bytes reserved in the budget (its worst case).
    reserved: u64,
    /// Tokens this sequence runs in the current step.
    now: usize,
}

/// The engine thread's state.
struct Worker {
    model: LoadedModel,
    context_tokens: usize,
    bytes_per_token: u64,
    budget: u64,
    /// Bytes held by the system prompt, idle conversations and the running jobs' reservations.
    used: u64,
    max_batch: usize,
    prefill_chunk: usize,
    prefix: Option<Arc<Prefix>>,
    rx: Receiver<Command>,
    sink: Sink,
    stats: Arc<EngineStats>,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
    conversations: HashMap<ConversationId, Held>,
    clock: u64,
    scratch: Scratch,
}

impl Worker {
    fn run(mut self) {
        let mut open = true;
        while open || !self.waiting.is_empty() || !self.running.is_empty() {
            // Idle: wait for a command. Busy: take what arrived, between steps.
            if self.waiting.is_empty() && self.running.is_empty() {
                match self.rx.recv_timeout(std::time::Duration::from_secs(3600)) {
                    Ok(c) => self.apply(c),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(c) => self.apply(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            while self.running.len() < self.max_batch {
                let Some(job) = self.waiting.pop_front() else {
                    break;
                };
                self.start(job);
            }
            if !self.running.is_empty() {
                self.step();
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.waiting.push_back(job),
            Command::Cancel(id) => self.cancel(id),
            Command::Forget(c) => self.forget(c),
        }
    }

    /// A cancelled job leaves at once and reports nothing more.
    fn cancel(&mut self, id: JobId) {
        let before = self.waiting.len();
        self.waiting.retain(|j| j.id != id);
        if self.waiting.len() < before {
            self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.swap_remove(i);
            self.used -= r.reserved;
            self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
            self.publish();
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
        self.stats
            .running
            .store(self.running.len(), Ordering::Release);
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

    /// Checks a job and moves it into the running batch (or fails it).
    fn start(&mut self, job: Job) {
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
            let cache = match &self.prefix {
                Some(p) => KvCache::with_prefix(p.clone()),
                None => self.model.model.new_cache(),
            };
            (Conversation::with_cache(cache), 0)
        } else {
            match self.conversations.remove(&cid) {
                Some(h) => (h.conversation, h.bytes),
                None => return self.fail(id, Failure::UnknownConversation),
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
        // Tokenize (the system prompt is in the prefix already), then check the context limit: no
        // model work yet.
        let ids = match self
            .model
            .tokenizer
            .encode(&ChatTemplate::turn(&text, first_turn))
        {
            Ok(ids) => ids,
            Err(e) => {
                restore(self, conversation);
                return self.fail(id, Failure::Model(e.to_string()));
            }
        };
        drop(text);
        let generation = match Generation::new(&params, self.model.eos) {
            Ok(g) => g,
            Err(e) => {
                restore(self, conversation);
                return self.fail(id, Failure::Model(e.to_string()));
            }
        };
        let total = conversation.len() + ids.len() + params.max_new_tokens;
        if total > self.context_tokens {
            restore(self, conversation);
            return self.fail(
                id,
                Failure::ContextLimit {
                    limit: self.context_tokens,
                },
            );
        }
        // Reserve the worst case of its own positions; the conversation's bytes are part of it.
        let own_total = total - conversation.cache.prefix_len();
        let reserve = own_total as u64 * self.bytes_per_token;
        let need = reserve.saturating_sub(held_bytes);
        if !self.make_room(need) {
            restore(self, conversation);
            return self.fail(id, Failure::Busy);
        }
        let more = ids.len() + params.max_new_tokens + conversation.unfed_len();
        if let Err(e) = conversation.cache.reserve(more) {
            restore(self, conversation);
            self.stats.failed_jobs.fetch_add(1, Ordering::Relaxed);
            return self.fail(id, Failure::Model(e.to_string()));
        }
        self.used += need;
        let mut feed = conversation.take_unfed();
        feed.extend_from_slice(&ids);
        self.running.push(Running {
            id,
            conversation_id: cid,
            keep,
            conversation,
            feed,
            generation,
            prompt_tokens: ids.len(),
            reserved: reserve,
            now: 0,
        });
        self.publish();
    }

    /// One model step for the running batch, then sampling and streaming for each sequence.
    fn step(&mut self) {
        // Decoding sequences bring their token; starting prompts share the chunk, oldest first
        // (the batch keeps arrival order).
        let mut budget = self.prefill_chunk;
        for r in &mut self.running {
            r.now = if r.feed.len() == 1 {
                1
            } else {
                let n = r.feed.len().min(budget);
                budget -= n;
                n
            };
        }
        let model = &self.model.model;
        let scratch = &mut self.scratch;
        let running = &mut self.running;
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut segments: Vec<Segment<'_>> = running
                .iter_mut()
                .filter(|r| r.now > 0)
                .map(|r| Segment {
                    logits: r.now == r.feed.len(),
                    tokens: &r.feed[..r.now],
                    cache: &mut r.conversation.cache,
                })
                .collect();
            let mut out = model.step(&mut segments, scratch);
            let mut results = Vec::with_capacity(segments.len());
            for i in 0..segments.len() {
                results.push(match out.take_failure(i) {
                    Some(e) => Err(e.to_string()),
                    None => Ok(out.result(i).ok().flatten().map(|l| l.to_vec())),
                });
            }
            results
        }));
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let mut results = match result {
            Ok(r) => r.into_iter(),
            Err(_) => {
                // The step panicked: every sequence in it is suspect.
                let ids: Vec<JobId> = self
                    .running
                    .iter()
                    .filter(|r| r.now > 0)
                    .map(|r| r.id)
                    .collect();
                for id in ids {
                    self.finish_failed(id, "the model panicked".into());
                }
                return;
            }
        };
        let mut done = Vec::new();
        for i in 0..self.running.len() {
            if self.running[i].now == 0 {
                continue;
            }
            let r = &mut self.running[i];
            let Some(result) = results.next() else { break };
            match result {
                Err(detail) => done.push((r.id, Err(detail))),
                Ok(None) => {
                    // A prompt chunk: the rest of the prompt waits for the next step.
                    r.feed.drain(..r.now);
                }
                Ok(Some(logits)) => {
                    r.feed.clear();
                    let advance = r.generation.advance(&logits, &self.model.tokenizer);
                    match advance {
                        Err(e) => done.push((r.id, Err(e.to_string()))),
                        Ok(a) => {
                            if let Some(text) = a.text {
                                (self.sink)(Event::Text { job: r.id, text });
                            }
                            match a.finish {
                                Some(f) => done.push((r.id, Ok(f))),
                                None => r.feed.extend(r.generation.next()),
                            }
                        }
                    }
                }
            }
        }
        for (id, end) in done {
            match end {
                Ok(finish) => self.finish_done(id, finish),
                Err(detail) => self.finish_failed(id, detail),
            }
        }
    }

    fn take_running(&mut self, id: JobId) -> Option<Running> {
        let i = self.running.iter().position(|r| r.id == id)?;
        // `remove`, not `swap_remove`: the batch keeps arrival order (prefill fairness).
        let r = self.running.remove(i);
        self.used -= r.reserved;
        Some(r)
    }

    fn finish_done(&mut self, id: JobId, finish: Finish) {
        let Some(mut r) = self.take_running(id) else {
            return;
        };
        r.conversation.set_unfed(r.generation.unfed());
        let outcome = Outcome {
            finish,
            prompt_tokens: r.prompt_tokens,
            generated_tokens: r.generation.generated().to_vec(),
        };
        if r.keep {
            r.conversation.cache.shrink();
            let bytes = r.conversation.cache.bytes();
            self.used += bytes;
            self.conversations.insert(
                r.conversation_id,
                Held {
                    conversation: r.conversation,
                    bytes,
                    last_used: self.clock,
                },
            );
        }
        self.finish(Event::Done { job: id, outcome });
    }

    fn finish_failed(&mut self, id: JobId, detail: String) {
        if self.take_running(id).is_some() {
            self.stats.failed_jobs.fetch_add(1, Ordering::Relaxed);
            self.finish(Event::Failed {
                job: id,
                failure: Failure::Model(detail),
            });
        }
    }

    fn fail(&mut self, id: JobId, failure: Failure) {
        self.finish(Event::Failed { job: id, failure });
    }

    /// Reports a job's last event and releases its admission.
    fn finish(&mut self, event: Event) {
        self.stats.jobs.fetch_sub(1, Ordering::AcqRel);
        self.publish();
        (self.sink)(event);
    }
}
