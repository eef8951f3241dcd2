//! The enclave's HPKE keys: one X-Wing and one X25519 key per generation, rotated on a schedule; the
//! previous generation is honoured for a grace period. Each generation remembers the attestation
//! documents issued for it (a request must be bound to one of them) and its replay cache.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::replay::ReplayCache;
use confidant_protocol::request::{decapsulate, ServerRequest, CONFIDANT_LABELS};
use confidant_protocol::user_data::sha256;
use confidant_protocol::{Kem, ProtocolError, UnixMillis};
use hpke::rand_core::CryptoRng;

/// Documents remembered per generation; the oldest are forgotten first (a client holding one of those
/// gets `unknown_attestation` and re-attests).
const ISSUED_CAPACITY: usize = 100_000;
/// Requests accepted per key before it is exhausted (rotation comes far sooner in practice).
const REPLAY_CAPACITY: usize = 1_000_000;

/// One generation of keys.
pub struct Generation {
    keys: Vec<KeyPair>,
    /// The encoded key-config list (what `kc` hashes).
    list: Vec<u8>,
    /// When clients must stop using these keys (`exp` in `user_data`).
    expires: UnixMillis,
    issued: VecDeque<[u8; 32]>,
    issued_set: HashSet<[u8; 32]>,
    replay: ReplayCache,
    /// The cached document for `ATTEST` without a nonce, and when it was made.
    cached_document: Option<(Vec<u8>, UnixMillis)>,
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
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Generation {
    fn new(first_id: u8, now: UnixMillis, ttl: Duration, rng: &mut impl CryptoRng) -> Generation {
        let keys = vec![
            KeyPair::generate(first_id, Kem::XWing, rng),
            KeyPair::generate(first_id.wrapping_add(1), Kem::X25519HkdfSha256, rng),
        ];
        let list = encode_list(&keys.iter().map(|k| k.config.clone()).collect::<Vec<_>>());
        Generation {
            keys,
            list,
            expires: now.saturating_add(ttl),
            issued: VecDeque::new(),
            issued_set: HashSet::new(),
            replay: ReplayCache::new(REPLAY_CAPACITY),
            cached_document: None,
        }
    }

    /// The encoded key-config list.
    pub fn list(&self) -> &[u8] {
        &self.list
    }

    /// When these keys expire.
    pub fn expires(&self) -> UnixMillis {
        self.expires
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

    /// The cached nonce-less document if it is younger than `max_age`.
    pub fn cached_document(&self, now: UnixMillis, max_age: Duration) -> Option<&[u8]> {
        self.cached_document
            .as_ref()
            .filter(|(_, at)| now.saturating_since(*at) < max_age)
            .map(|(doc, _)| doc.as_slice())
    }

    /// Keeps `document` as the cached nonce-less document.
    pub fn cache_document(&mut self, document: Vec<u8>, now: UnixMillis) {
        self.cached_document = Some((document, now));
    }

    fn holds(&self, key_id: u8) -> bool {
        self.keys.iter().any(|k| k.config.key_id == key_id)
    }
}

/// Current and previous generations.
#[derive(Debug)]
pub struct KeyRing {
    current: Generation,
    previous: Option<Generation>,
    ttl: Duration,
    grace: Duration,
    next_id: u8,
}

impl KeyRing {
    /// Key ids start at a random even number each boot, so a client holding a previous boot's key
    /// rarely finds an id that now names another key (and the binding check refuses it anyway).
    pub fn new(
        now: UnixMillis,
        ttl: Duration,
        grace: Duration,
        rng: &mut impl CryptoRng,
    ) -> KeyRing {
        let mut b = [0u8; 1];
        rng.fill_bytes(&mut b);
        let first = b[0] & !1;
        KeyRing {
            current: Generation::new(first, now, ttl, rng),
            previous: None,
            ttl,
            grace,
            next_id: first.wrapping_add(2),
        }
    }

    /// The generation new documents are issued for.
    pub fn current(&mut self) -> &mut Generation {
        &mut self.current
    }

    /// Rotates when the current keys have expired; drops the previous ones after their grace period.
    /// Returns whether a new generation began.
    pub fn rotate_if_due(&mut self, now: UnixMillis, rng: &mut impl CryptoRng) -> bool {
        let grace = self.grace;
        if self
            .previous
            .as_ref()
            .is_some_and(|p| now > p.expires.saturating_add(grace))
        {
            self.previous = None;
        }
        if now < self.current.expires {
            return false;
        }
        let next = Generation::new(self.next_id, now, self.ttl, rng);
        self.next_id = self.next_id.wrapping_add(2);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        true
    }

    /// The generation holding `key_id`, if it is still honoured.
    fn generation_for(&mut self, key_id: u8) -> Option<&mut Generation> {
        if self.current.holds(key_id) {
            return Some(&mut self.current);
        }
        self.previous.as_mut().filter(|p| p.holds(key_id))
    }

    /// Opens an encapsulated request bound to `attestation_sha256`, with one lookup of its key's
    /// generation: the key must still be honoured, the binding must name a document that generation
    /// issued (checked before decrypting: cheap, and after a restart it tells a client its document is
    /// unknown here), the request must decrypt, and its `enc` must be new (recorded only once it
    /// decrypted, so forgeries cannot fill the replay cache).
    pub fn open(
        &mut self,
        attestation_sha256: &[u8; 32],
        encapsulated: &[u8],
    ) -> Result<ServerRequest, ProtocolError> {
        let key_id = *encapsulated.first().ok_or(ProtocolError::RequestDecrypt)?;
        let generation = self
            .generation_for(key_id)
            .ok_or(ProtocolError::UnknownKeyId(key_id))?;
        if !generation.issued_set.contains(attestation_sha256) {
            return Err(ProtocolError::UnknownAttestation);
        }
        let request = decapsulate(
            &generation.keys,
            attestation_sha256,
            encapsulated,
            &CONFIDANT_LABELS,
        )?;
        generation.replay.check_and_record(key_id, request.enc())?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confidant_protocol::request::encapsulate;
    use confidant_protocol::Suite;
    use rand_core::SeedableRng;

    fn rng() -> chacha20::ChaCha20Rng {
        chacha20::ChaCha20Rng::from_seed([7; 32])
    }

    const T0: UnixMillis = UnixMillis::from_secs(1_000);

    fn at(secs: u64) -> UnixMillis {
        UnixMillis::from_secs(secs)
    }

    #[test]
    fn rotation_keeps_the_previous_generation_for_its_grace_period() {
        let mut rng = rng();
        let mut ring = KeyRing::new(
            T0,
            Duration::from_secs(100),
            Duration::from_secs(30),
            &mut rng,
        );
        let old_id = ring.current.keys[0].config.key_id;
        assert!(!ring.rotate_if_due(at(1_050), &mut rng));
        assert!(ring.rotate_if_due(at(1_100), &mut rng));
        assert!(ring.generation_for(old_id).is_some());
        assert!(!ring.rotate_if_due(at(1_131), &mut rng));
        assert!(ring.generation_for(old_id).is_none());
        assert_ne!(ring.current.keys[0].config.key_id, old_id);
    }

    #[test]
    fn requests_must_be_bound_to_an_issued_document_decrypt_and_be_fresh() {
        let mut rng = rng();
        let mut ring = KeyRing::new(
            T0,
            Duration::from_secs(100),
            Duration::from_secs(30),
            &mut rng,
        );
        ring.current().record_issued(b"doc");
        let config = ring.current.keys[0].config.clone();
        let suite = Suite {
            kem: config.kem,
            aead: config.aeads[0],
        };
        let binding = sha256(b"doc");
        let (request, _) =
            encapsulate(&config, suite, &binding, b"hi", &CONFIDANT_LABELS, &mut rng).unwrap();
        assert_eq!(
            ring.open(&sha256(b"other"), &request).unwrap_err(),
            ProtocolError::UnknownAttestation
        );
        assert_eq!(
            ring.open(&binding, &request).unwrap().plaintext.as_slice(),
            b"hi"
        );
        assert_eq!(
            ring.open(&binding, &request).unwrap_err(),
            ProtocolError::Replayed
        );
        let mut other_key = request.clone();
        other_key[0] = config.key_id.wrapping_add(100);
        assert_eq!(
            ring.open(&binding, &other_key).unwrap_err(),
            ProtocolError::UnknownKeyId(config.key_id.wrapping_add(100))
        );
        let mut forged = request;
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            ring.open(&binding, &forged).unwrap_err(),
            ProtocolError::RequestDecrypt
        );
    }
}
