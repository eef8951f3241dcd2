//! The enclave's HPKE keys: one X-Wing and one X25519 key per generation, rotated on a schedule; the
//! previous generation is honoured for a grace period. Each generation remembers the attestation
//! documents issued for it (a request must be bound to one of them) and its replay cache.

use std::collections::{HashSet, VecDeque};

use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::replay::ReplayCache;
use confidant_protocol::user_data::sha256;
use confidant_protocol::{system_rng, Kem, ProtocolError};

/// Documents remembered per generation; the oldest are forgotten first (a client holding one of those
/// gets `unknown_attestation` and re-attests).
const ISSUED_CAPACITY: usize = 100_000;
/// Requests accepted per key before it is exhausted (rotation comes far sooner in practice).
const REPLAY_CAPACITY: usize = 1_000_000;

/// One generation of keys.
pub struct Generation {
    pub keys: Vec<KeyPair>,
    /// The encoded key-config list (what `kc` hashes).
    pub list: Vec<u8>,
    pub created_unix: u64,
    /// When clients must stop using these keys (`exp` in `user_data`).
    pub expires_unix: u64,
    issued: VecDeque<[u8; 32]>,
    issued_set: HashSet<[u8; 32]>,
    replay: ReplayCache,
    /// The cached document for `ATTEST` without a nonce, and when it was made.
    pub cached_document: Option<(Vec<u8>, u64)>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field(
                "key_ids",
                &self
                    .keys
                    .iter()
                    .map(|k| k.config.key_id)
                    .collect::<Vec<_>>(),
            )
            .field("expires_unix", &self.expires_unix)
            .finish_non_exhaustive()
    }
}

impl Generation {
    fn new(first_id: u8, now_unix: u64, ttl_secs: u64) -> Generation {
        let mut rng = system_rng();
        let keys = vec![
            KeyPair::generate(first_id, Kem::XWing, &mut rng),
            KeyPair::generate(first_id.wrapping_add(1), Kem::X25519HkdfSha256, &mut rng),
        ];
        let list = encode_list(&keys.iter().map(|k| k.config.clone()).collect::<Vec<_>>());
        Generation {
            keys,
            list,
            created_unix: now_unix,
            expires_unix: now_unix + ttl_secs,
            issued: VecDeque::new(),
            issued_set: HashSet::new(),
            replay: ReplayCache::new(REPLAY_CAPACITY),
            cached_document: None,
        }
    }

    /// Records a document issued for this generation.
    pub fn record_issued(&mut self, document: &[u8]) {
        let h = sha256(document);
        if self.issued_set.insert(h) {
            self.issued.push_back(h);
            if self.issued.len() > ISSUED_CAPACITY {
                if let Some(old) = self.issued.pop_front() {
                    self.issued_set.remove(&old);
                }
            }
        }
    }

    fn issued(&self, hash: &[u8; 32]) -> bool {
        self.issued_set.contains(hash)
    }

    fn holds(&self, key_id: u8) -> bool {
        self.keys.iter().any(|k| k.config.key_id == key_id)
    }
}

/// Current and previous generations.
#[derive(Debug)]
pub struct KeyRing {
    pub current: Generation,
    previous: Option<Generation>,
    ttl_secs: u64,
    grace_secs: u64,
    next_id: u8,
}

impl KeyRing {
    /// Key ids start at a random even number each boot, so a client holding a previous boot's key
    /// rarely finds an id that now names another key (and the binding check refuses it anyway).
    pub fn new(now_unix: u64, ttl_secs: u64, grace_secs: u64) -> KeyRing {
        let mut b = [0u8; 1];
        {
            use hpke::rand_core::Rng;
            system_rng().fill_bytes(&mut b);
        }
        let first = b[0] & !1;
        KeyRing {
            current: Generation::new(first, now_unix, ttl_secs),
            previous: None,
            ttl_secs,
            grace_secs,
            next_id: first.wrapping_add(2),
        }
    }

    /// Rotates when the current keys have expired; drops the previous ones after their grace period.
    /// Returns whether a new generation began.
    pub fn rotate_if_due(&mut self, now_unix: u64) -> bool {
        if self
            .previous
            .as_ref()
            .is_some_and(|p| now_unix > p.expires_unix + self.grace_secs)
        {
            self.previous = None;
        }
        if now_unix < self.current.expires_unix {
            return false;
        }
        let next = Generation::new(self.next_id, now_unix, self.ttl_secs);
        self.next_id = self.next_id.wrapping_add(2);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        true
    }

    /// The generation holding `key_id`, if it is still honoured.
    pub fn generation_for(&mut self, key_id: u8) -> Option<&mut Generation> {
        if self.current.holds(key_id) {
            return Some(&mut self.current);
        }
        self.previous.as_mut().filter(|p| p.holds(key_id))
    }

    /// The generation of `key_id`, if the request's binding names a document it issued. Checked
    /// before decrypting: cheap, and after a restart it tells a client its document is unknown here.
    pub fn bound_generation(
        &mut self,
        key_id: u8,
        attestation_sha256: &[u8; 32],
    ) -> Result<&mut Generation, ProtocolError> {
        let generation = self
            .generation_for(key_id)
            .ok_or(ProtocolError::UnknownKeyId(key_id))?;
        if !generation.issued(attestation_sha256) {
            return Err(ProtocolError::UnknownAttestation);
        }
        Ok(generation)
    }

    /// Checks the binding and the replay cache for a request that decrypted under `key_id`.
    pub fn admit(
        &mut self,
        key_id: u8,
        attestation_sha256: &[u8; 32],
        enc: &[u8],
    ) -> Result<(), ProtocolError> {
        self.bound_generation(key_id, attestation_sha256)?
            .replay
            .check_and_record(key_id, enc)
    }

    /// Every key still honoured.
    pub fn all_keys(&self) -> impl Iterator<Item = &KeyPair> {
        self.current
            .keys
            .iter()
            .chain(self.previous.iter().flat_map(|p| p.keys.iter()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_previous_generation_for_its_grace_period() {
        let mut ring = KeyRing::new(1_000, 100, 30);
        let old_ids: Vec<u8> = ring.current.keys.iter().map(|k| k.config.key_id).collect();
        assert!(!ring.rotate_if_due(1_050));
        assert!(ring.rotate_if_due(1_100));
        assert!(ring.generation_for(old_ids[0]).is_some());
        assert_eq!(ring.all_keys().count(), 4);
        assert!(!ring.rotate_if_due(1_131));
        assert!(ring.generation_for(old_ids[0]).is_none());
        assert_ne!(ring.current.keys[0].config.key_id, old_ids[0]);
    }

    #[test]
    fn requests_must_be_bound_to_an_issued_document_and_fresh() {
        let mut ring = KeyRing::new(1_000, 100, 30);
        let id = ring.current.keys[0].config.key_id;
        ring.current.record_issued(b"doc");
        assert_eq!(
            ring.admit(id, &sha256(b"other"), b"enc"),
            Err(ProtocolError::UnknownAttestation)
        );
        ring.admit(id, &sha256(b"doc"), b"enc").unwrap();
        assert_eq!(
            ring.admit(id, &sha256(b"doc"), b"enc"),
            Err(ProtocolError::Replayed)
        );
        assert_eq!(
            ring.admit(200, &sha256(b"doc"), b"enc2"),
            Err(ProtocolError::UnknownKeyId(200))
        );
    }
}
