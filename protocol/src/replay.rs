//! Replay protection for the enclave: each `enc` is accepted once per key.
//!
//! The cache is bounded per key. When a key's cache is full the key is exhausted and refuses further
//! requests (fail closed: evicting old entries would let them be replayed); the enclave rotates keys
//! well before that, and clients re-attest when they meet an exhausted or unknown key.

use std::collections::{HashMap, HashSet};

use crate::error::ProtocolError;
use crate::user_data::sha256;

/// Seen `enc` values per key id.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<u8, HashSet<[u8; 32]>>,
    capacity_per_key: usize,
}

impl ReplayCache {
    /// A cache remembering up to `capacity_per_key` requests for each key.
    pub fn new(capacity_per_key: usize) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            capacity_per_key,
        }
    }

    /// Records `enc` under `key_id`; an error if it was seen, or if the key is exhausted.
    /// Call only after the request decrypted, so forged requests cannot fill the cache.
    pub fn check_and_record(&mut self, key_id: u8, enc: &[u8]) -> Result<(), ProtocolError> {
        let set = self.seen.entry(key_id).or_default();
        let digest = sha256(enc);
        if set.contains(&digest) {
            return Err(ProtocolError::Replayed);
        }
        if set.len() >= self.capacity_per_key {
            return Err(ProtocolError::KeyExhausted(key_id));
        }
        set.insert(digest);
        Ok(())
    }

    /// Requests recorded under `key_id`.
    pub fn len(&self, key_id: u8) -> usize {
        self.seen.get(&key_id).map_or(0, HashSet::len)
    }

    /// Drops a retired key's entries (its private key is gone, so its requests cannot be opened).
    pub fn forget_key(&mut self, key_id: u8) {
        self.seen.remove(&key_id);
    }
}

/// Strictly increasing sequence numbers (for callers that track sequences outside a session).
#[derive(Debug, Default, Clone, Copy)]
pub struct SequenceCheck {
    last: u64,
}

impl SequenceCheck {
    /// Accepts `seq` if it is above every accepted one.
    pub fn accept(&mut self, seq: u64) -> Result<(), ProtocolError> {
        if seq <= self.last {
            return Err(ProtocolError::SequenceReused {
                got: seq,
                last: self.last,
            });
        }
        self.last = seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_and_exhaustion_are_refused() {
        let mut c = ReplayCache::new(2);
        c.check_and_record(1, b"a").unwrap();
        assert_eq!(c.check_and_record(1, b"a"), Err(ProtocolError::Replayed));
        c.check_and_record(2, b"a").unwrap();
        c.check_and_record(1, b"b").unwrap();
        assert_eq!(
            c.check_and_record(1, b"c"),
            Err(ProtocolError::KeyExhausted(1))
        );
        assert_eq!(c.check_and_record(1, b"b"), Err(ProtocolError::Replayed));
        c.forget_key(1);
        assert_eq!(c.len(1), 0);
    }

    #[test]
    fn sequence_must_increase() {
        let mut s = SequenceCheck::default();
        s.accept(1).unwrap();
        s.accept(5).unwrap();
        assert!(s.accept(5).is_err());
        assert!(s.accept(2).is_err());
        s.accept(6).unwrap();
    }
}
