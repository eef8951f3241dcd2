//! The Confidant client library: verify an enclave's attestation against the pinned roots and
//! measurements ([`trust`]), then ask it questions end to end encrypted through a relay ([`Client`]),
//! keeping verified attestations in a [`cache`]. The `confidant` command line is a thin layer over it;
//! [`conformance`] runs the known-answer suites of `test-vectors/`.

pub mod cache;
mod client;
pub mod config;
pub mod conformance;
mod error;
pub mod input;
pub mod policy;
pub mod quic;
pub mod receipts;
pub mod remote;
pub mod roots;
pub mod sigstore;
pub mod trust;

pub use client::Client;
pub use error::SetupError;
pub use quic::Timeouts;
pub use remote::{Answer, Attested, RemoteError, ReportedCode};
pub use trust::{Trust, TrustConfig};
