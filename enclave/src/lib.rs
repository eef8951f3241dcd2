//! The Confidant enclave: BLOOM on libtorch, and (with later modules) the NSM, key management, KMS
//! unsealing and the server that answers attested, encrypted requests.

pub mod demo_model;
pub mod keys;
pub mod kms;
pub mod listen;
pub mod measure;
pub mod model;
pub mod nsm;
pub mod rss;
pub mod server;
