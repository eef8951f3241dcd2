//! The inference thread: one dedicated OS thread owns the model's compute, fed by a bounded queue, so
//! the async server never blocks on libtorch and a flood of requests is refused instead of queued
//! without end.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

use super::generate::{generate, Conversation, GenerateParams, Outcome};
use super::{LoadedModel, ModelError};

/// What a job reports, in order: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        outcome: Outcome,
        conversation: Conversation,
    },
    Failed(String),
}

/// One generation request.
pub struct Job {
    /// The conversation to continue (its KV cache is reused), or `None` for a fresh one.
    pub conversation: Option<Conversation>,
    /// Text of the new turn (tokenized on the inference thread).
    pub prompt: String,
    pub params: GenerateParams,
    /// Receives events; returning `false` cancels the job (the client went away).
    pub sink: Box<dyn FnMut(Event) -> bool + Send>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// The queue is full: try later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the inference queue is full")]
pub struct Busy;

/// Handle to the inference thread. Dropping it lets the thread finish the queued jobs and exit.
#[derive(Debug)]
pub struct Worker {
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread, which takes the model, with room for `queue` waiting jobs; `threads` sets
    /// libtorch's intra-op threads.
    pub fn spawn(
        model: LoadedModel,
        queue: usize,
        threads: Option<i32>,
    ) -> Result<Worker, ModelError> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let thread = std::thread::Builder::new()
            .name("inference".into())
            .spawn(move || {
                if let Some(t) = threads {
                    tch::set_num_threads(t);
                }
                while let Ok(job) = rx.recv() {
                    run_job(&model, job);
                }
            })
            .map_err(|e| ModelError::Io(format!("spawning the inference thread: {e}")))?;
        Ok(Worker {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a job, or refuses at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Busy> {
        let tx = self.tx.as_ref().ok_or(Busy)?;
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => Busy,
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_job(model: &LoadedModel, job: Job) {
    let Job {
        conversation,
        prompt,
        params,
        mut sink,
    } = job;
    let mut conversation = conversation.unwrap_or_else(|| Conversation::new(&model.model));
    let mut on_text = |text: &str| sink(Event::Text(text.to_string()));
    let result = model.tokenizer.encode(&prompt).and_then(|ids| {
        generate(
            &model.model,
            &model.tokenizer,
            &mut conversation,
            &ids,
            &params,
            model.eos,
            &mut on_text,
        )
    });
    match result {
        Ok(outcome) => {
            sink(Event::Done {
                outcome,
                conversation,
            });
        }
        Err(e) => {
            sink(Event::Failed(e.to_string()));
        }
    }
}
