//! A client for one relay: the connection, the attested enclave behind it (from the cache or fresh),
//! and questions and session turns that re-attest once when the enclave's keys changed or the enclave
//! is gone from behind the relay (several enclaves may stand behind one; each exchange is routed to
//! the one attested).

use std::path::Path;

use confidant_protocol::message::Ask;
use confidant_protocol::request::ClientRequest;
use confidant_protocol::session::ClientSession;

use crate::cache;
use crate::quic::{Relay, Timeouts};
use crate::remote::{self, Answer, Attested, RemoteError};
use crate::trust::Trust;

/// Connected to a relay, trusting what `trust` says.
#[derive(Debug)]
pub struct Client {
    relay: Relay,
    relay_name: String,
    trust: Trust,
    attested: Option<Attested>,
    use_cache: bool,
}

impl Client {
    /// Connects to `relay` (`HOST:PORT`), checking its TLS certificate against `relay_ca` (PEM) or the
    /// system roots.
    pub async fn connect(
        relay: &str,
        relay_ca: Option<&Path>,
        trust: Trust,
        timeouts: Timeouts,
    ) -> Result<Client, RemoteError> {
        Ok(Client {
            relay: Relay::connect(relay, relay_ca, timeouts).await?,
            relay_name: relay.to_string(),
            trust,
            attested: None,
            use_cache: true,
        })
    }

    /// Never read or write the attestation cache.
    pub fn without_cache(mut self) -> Client {
        self.use_cache = false;
        self
    }

    /// The attested enclave: the one already verified, else a cached document that still verifies,
    /// else a fresh one (with a nonce), which is then cached.
    pub async fn attested(&mut self) -> Result<&Attested, RemoteError> {
        if self.attested.is_none() && self.use_cache {
            if let Some(cached) = cache::load(&self.relay_name, &self.trust) {
                self.attested = Some(self.admitted(cached).await?);
            }
        }
        if self.attested.is_none() {
            self.attest_fresh().await?;
        }
        self.attested
            .as_ref()
            .ok_or(RemoteError::Ended("an attestation document"))
    }

    /// A fresh attestation (with a nonce), replacing any held or cached one.
    pub async fn attest_fresh(&mut self) -> Result<&Attested, RemoteError> {
        let attested = remote::attest(&self.relay, &self.trust).await?;
        let attested = self.admitted(attested).await?;
        if self.use_cache {
            cache::store(&self.relay_name, &attested);
        }
        Ok(self.attested.insert(attested))
    }

    /// Asks one question; the answer's text goes to `out` as it arrives. When, before any of the
    /// answer arrived, the enclave no longer knows the keys the question was encrypted to (it
    /// restarted or rotated them) or is gone from behind the relay, re-attests once — reaching
    /// whichever enclave the relay picks — and asks again. An answer cut off once begun is reported,
    /// never retried.
    pub async fn ask(
        &mut self,
        ask: &Ask,
        out: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(Answer, ClientRequest), RemoteError> {
        self.attested().await?;
        let mut begun = false;
        let first = match &self.attested {
            Some(a) => {
                let mut sink = |piece: &str| {
                    begun = true;
                    out(piece);
                };
                remote::ask(&self.relay, a, ask, &mut sink).await
            }
            None => return Err(RemoteError::Ended("an attestation document")),
        };
        match first {
            Err(e) if !begun && (e.wants_fresh_keys() || e.enclave_gone()) => {
                if let (true, Some(a)) = (self.use_cache, &self.attested) {
                    cache::forget(&self.relay_name, a);
                }
                self.attest_fresh().await?;
                match &self.attested {
                    Some(a) => remote::ask(&self.relay, a, ask, out).await,
                    None => Err(RemoteError::Ended("an attestation document")),
                }
            }
            other => other,
        }
    }

    /// With a release key pinned, holds the enclave to the manifests the relay serves and raises this
    /// relay's high-water mark (kept even with `--fresh`, so no run can roll back).
    async fn admitted(&self, mut attested: Attested) -> Result<Attested, RemoteError> {
        if self.trust.release_key.is_none() && self.trust.release_sigstore.is_none() {
            return Ok(attested);
        }
        let manifests = remote::fetch_manifests(&self.relay).await?;
        let high_water = cache::release_high_water(&self.relay_name);
        let version = remote::admit_release(
            &attested,
            &manifests,
            self.trust.release_key.as_deref(),
            self.trust.release_sigstore.as_ref(),
            high_water,
        )?;
        cache::raise_release_high_water(&self.relay_name, version);
        attested.release = Some(version);
        Ok(attested)
    }

    /// Ends a session in the enclave (its keys and model state go at once rather than at expiry).
    pub async fn close_session(&self, session: &mut ClientSession) -> Result<(), RemoteError> {
        remote::close(&self.relay, self.route(), session).await
    }

    /// One follow-up turn of a session.
    pub async fn turn(
        &self,
        session: &mut ClientSession,
        ask: &Ask,
        out: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Answer, RemoteError> {
        let Some(a) = &self.attested else {
            return Err(RemoteError::Ended("an attestation document"));
        };
        remote::check_limits(a, ask)?;
        remote::turn(&self.relay, a, session, ask, out).await
    }

    /// The enclave instance exchanges are routed to: the attested one.
    fn route(&self) -> Option<[u8; 16]> {
        self.attested.as_ref().and_then(Attested::enclave)
    }

    /// Closes the connection (the relay sees a clean close).
    pub fn close(&self) {
        self.relay.close();
    }
}
