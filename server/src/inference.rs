//! The core's side of inference, as messages: the core asks for answers ([`InferenceRequest`]) and is
//! told what happened ([`InferenceEvent`]); the shell carries them to and from the model engine. The
//! core never formats prompts (the engine applies the chat template) and never sees the model.

use confidant_protocol::message::Finish;
use zeroize::Zeroizing;

/// Names one answer being generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// Names a conversation whose model state (KV cache) the engine keeps between a session's turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub u64);

/// How to sample an answer (checked by the core against the enclave's limits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerParams {
    pub max_new_tokens: u32,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_k: Option<u32>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

/// Answer one user turn.
pub struct InferenceRequest {
    pub job: JobId,
    pub conversation: ConversationId,
    /// The first turn starts the conversation; a later one continues its cached state.
    pub first_turn: bool,
    /// Keep the conversation's state after the answer (a session); a one-shot question's is dropped.
    pub keep: bool,
    /// The user's text, decrypted (zeroized when dropped).
    pub text: Zeroizing<String>,
    pub params: AnswerParams,
}

impl std::fmt::Debug for InferenceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceRequest")
            .field("job", &self.job)
            .field("conversation", &self.conversation)
            .field("first_turn", &self.first_turn)
            .field("keep", &self.keep)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// What became of a job: text pieces, then exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum InferenceEvent {
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: u64,
        generated_tokens: u64,
    },
    Failed(InferenceFailure),
}

/// Why a job produced no complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InferenceFailure {
    /// The engine is at capacity, in jobs or in KV memory (nothing was computed).
    Busy,
    /// The conversation's state is gone (the engine dropped it).
    UnknownConversation,
    /// The prompt with its answer would exceed the context limit (checked before any model work).
    ContextLimit { limit: u32 },
    /// The model failed on this job (details stay in the enclave).
    Model,
}

/// What the engine reports about itself, for `HEALTH` (counts only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStatus {
    /// The engine thread is alive and taking jobs.
    pub alive: bool,
    /// Jobs admitted and not finished.
    pub jobs: usize,
    /// KV cache bytes held (running and idle conversations).
    pub kv_bytes: u64,
    /// The KV memory budget.
    pub kv_budget_bytes: u64,
    /// Conversations held.
    pub conversations: usize,
    /// Jobs that failed (panics and allocation failures included) since boot.
    pub failed_jobs: u64,
}
