//! The session table: each multi-turn session's keys and its conversation, in a state that says what
//! it is doing — idle between turns, or busy answering one. Expired idle sessions are swept; every
//! removal hands back the conversation whose model state must be dropped.

use std::collections::HashMap;

use confidant_protocol::chunks::ChunkSealer;
use confidant_protocol::session::EnclaveSession;
use confidant_protocol::{Code, ProtocolError, UnixMillis};
use zeroize::Zeroizing;

use crate::inference::{ConversationId, JobId};
use crate::Refusal;

/// What a session is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Between turns: a new turn may start.
    Idle,
    /// Answering a turn.
    Busy(JobId),
}

#[derive(Debug)]
struct Entry {
    keys: EnclaveSession,
    /// SHA-256 of the document the session's first request was bound to (every turn's receipt names it).
    document: [u8; 32],
    /// The hash of the last receipt sent, which the next turn's receipt chains to.
    last_receipt: Option<[u8; 32]>,
    conversation: ConversationId,
    state: SessionState,
}

impl Entry {
    fn busy(&self) -> Result<(), Refusal> {
        match self.state {
            SessionState::Busy(_) => Err(Refusal::new(
                Code::SessionBusy,
                "the previous turn of this session is still running",
            )),
            SessionState::Idle => Ok(()),
        }
    }
}

/// A turn that authenticated and may run.
#[derive(Debug)]
pub struct Turn {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub sealer: ChunkSealer,
    pub conversation: ConversationId,
    /// SHA-256 of the session's document, and the previous turn's receipt hash.
    pub document: [u8; 32],
    pub previous: Option<[u8; 32]>,
}

/// The table is full of sessions that have not expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Open sessions by id (and by conversation, for the engine's evictions).
#[derive(Debug)]
pub struct SessionTable {
    entries: HashMap<[u8; 16], Entry>,
    by_conversation: HashMap<ConversationId, [u8; 16]>,
    capacity: usize,
}

impl SessionTable {
    pub fn new(capacity: usize) -> SessionTable {
        SessionTable {
            entries: HashMap::new(),
            by_conversation: HashMap::new(),
            capacity,
        }
    }

    fn remove(&mut self, id: &[u8; 16]) -> Option<ConversationId> {
        let e = self.entries.remove(id)?;
        self.by_conversation.remove(&e.conversation);
        Some(e.conversation)
    }

    /// Sessions open.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state of a session, if it is open.
    pub fn state(&self, id: &[u8; 16]) -> Option<SessionState> {
        self.entries.get(id).map(|e| e.state)
    }

    /// Opens a session whose first turn (`job`) is running. When the table is full, expired idle
    /// sessions are swept first (their conversations are returned in `forget`).
    pub fn open(
        &mut self,
        keys: EnclaveSession,
        document: [u8; 32],
        conversation: ConversationId,
        job: JobId,
        now: UnixMillis,
        forget: &mut Vec<ConversationId>,
    ) -> Result<[u8; 16], TableFull> {
        if self.entries.len() >= self.capacity {
            forget.extend(self.sweep(now));
            if self.entries.len() >= self.capacity {
                return Err(TableFull);
            }
        }
        let id = *keys.id();
        if let Some(old) = self.remove(&id) {
            forget.push(old); // An id collision would mean equal keys: cannot happen, but stay exact.
        }
        self.by_conversation.insert(conversation, id);
        self.entries.insert(
            id,
            Entry {
                keys,
                document,
                last_receipt: None,
                conversation,
                state: SessionState::Busy(job),
            },
        );
        Ok(id)
    }

    /// Starts turn `seq` of session `id` as `job`: one lookup; the session must be idle and the turn
    /// fresh and authentic. A turn that does not authenticate leaves the session as it was; an expired
    /// session is removed (its conversation returned in `forget`).
    pub fn begin_turn(
        &mut self,
        id: &[u8; 16],
        seq: u64,
        ciphertext: &[u8],
        job: JobId,
        now: UnixMillis,
        forget: &mut Vec<ConversationId>,
    ) -> Result<Turn, Refusal> {
        let entry = self
            .entries
            .get_mut(id)
            .ok_or(ProtocolError::UnknownSession)?;
        entry.busy()?;
        let plaintext = match entry.keys.open_turn(seq, ciphertext, now) {
            Ok(p) => p,
            Err(ProtocolError::SessionExpired) => {
                forget.extend(self.remove(id));
                return Err(ProtocolError::SessionExpired.into());
            }
            Err(e) => return Err(e.into()),
        };
        entry.state = SessionState::Busy(job);
        Ok(Turn {
            plaintext,
            sealer: entry.keys.reply_sealer(seq),
            conversation: entry.conversation,
            document: entry.document,
            previous: entry.last_receipt,
        })
    }

    /// Records the receipt just sent for `id`'s running turn: the next turn's receipt chains to it.
    pub fn chain(&mut self, id: &[u8; 16], receipt: [u8; 32]) {
        if let Some(e) = self.entries.get_mut(id) {
            e.last_receipt = Some(receipt);
        }
    }

    /// Ends the running turn of `id`. A kept session goes back to idle; otherwise it is removed and its
    /// conversation returned (its model state no longer matches what the client has).
    pub fn end_turn(&mut self, id: &[u8; 16], keep: bool) -> Option<ConversationId> {
        if keep {
            if let Some(e) = self.entries.get_mut(id) {
                e.state = SessionState::Idle;
            }
            return None;
        }
        self.remove(id)
    }

    /// Ends session `id` at its owner's `CLOSE` (authenticated like a turn); returns its
    /// conversation. A session answering a turn cannot be closed until the turn ends.
    pub fn close(
        &mut self,
        id: &[u8; 16],
        seq: u64,
        tag: &[u8],
    ) -> Result<ConversationId, Refusal> {
        let entry = self
            .entries
            .get_mut(id)
            .ok_or(ProtocolError::UnknownSession)?;
        entry.busy()?;
        entry.keys.open_close(seq, tag)?;
        self.remove(id)
            .ok_or_else(|| ProtocolError::UnknownSession.into())
    }

    /// The engine dropped an idle conversation to make room: its session ends (the client's next turn
    /// is told `unknown_session` and starts a new one). Returns whether a session went.
    pub fn evicted(&mut self, conversation: ConversationId) -> bool {
        let Some(id) = self.by_conversation.get(&conversation).copied() else {
            return false;
        };
        self.remove(&id).is_some()
    }

    /// Removes expired idle sessions (their keys are zeroized as they drop); returns their
    /// conversations.
    pub fn sweep(&mut self, now: UnixMillis) -> Vec<ConversationId> {
        let expired: Vec<[u8; 16]> = self
            .entries
            .iter()
            .filter(|(_, e)| e.state == SessionState::Idle && e.keys.is_expired(now))
            .map(|(id, _)| *id)
            .collect();
        expired.iter().filter_map(|id| self.remove(id)).collect()
    }
}
