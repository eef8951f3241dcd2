//! AWS KMS for Confidant: the two calls it makes through the AWS SDK ([`client`]), the HTTP
//! connector that reaches KMS through the parent's vsock-proxy with TLS kept inside the enclave
//! ([`transport`]), the parent's credentials ([`credentials`]), and unsealing the settings at boot
//! ([`unseal`]). Formats and keys live in `confidant-sealing`.

pub mod client;
pub mod credentials;
pub mod transport;
pub mod unseal;
