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
    conversation: ConversationId,
    state: SessionState,
}

/// A turn that authenticated and may run.
#[derive(Debug)]
pub struct Turn {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub sealer: ChunkSealer,
    pub conversation: ConversationId,
}

/// The table is full of sessions that have not expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// Open sessions by id.
#[derive(Debug)]
pub struct SessionTable {
    entries: HashMap<[u8; 16], Entry>,
    capacity: usize,
}

impl SessionTable {
    pub fn new(capacity: usize) -> SessionTable {
        SessionTable {
            entries: HashMap::new(),
            capacity,
        }
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
        self.entries.insert(
            id,
            Entry {
                keys,
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
        if let SessionState::Busy(_) = entry.state {
            return Err(Refusal::new(
                Code::SessionBusy,
                "the previous turn of this session is still running",
            ));
        }
        let plaintext = match entry.keys.open_turn(seq, ciphertext, now) {
            Ok(p) => p,
            Err(ProtocolError::SessionExpired) => {
                if let Some(e) = self.entries.remove(id) {
                    forget.push(e.conversation);
                }
                return Err(ProtocolError::SessionExpired.into());
            }
            Err(e) => return Err(e.into()),
        };
        entry.state = SessionState::Busy(job);
        Ok(Turn {
            plaintext,
            sealer: entry.keys.reply_sealer(seq),
            conversation: entry.conversation,
        })
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
        self.entries.remove(id).map(|e| e.conversation)
    }

    /// Removes expired idle sessions (their keys are zeroized as they drop); returns their
    /// conversations.
    pub fn sweep(&mut self, now: UnixMillis) -> Vec<ConversationId> {
        let mut gone = Vec::new();
        self.entries.retain(|_, e| {
            let expired = e.state == SessionState::Idle && e.keys.is_expired(now);
            if expired {
                gone.push(e.conversation);
            }
            !expired
        });
        gone
    }
}
