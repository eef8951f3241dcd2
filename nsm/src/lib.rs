//! The Nitro Security Module: the [`Nsm`] trait the enclave attests through, the real device
//! (`/dev/nsm`), and — with the `emulated` feature, which the enclave image leaves out — an emulation
//! that signs documents of the real structure with a development chain, for machines without Nitro.
//! [`measure`] computes the PCRs the emulation reports.

mod device;
#[cfg(feature = "emulated")]
pub mod emulated;
pub mod measure;

pub use device::DeviceNsm;
#[cfg(feature = "emulated")]
pub use emulated::EmulatedNsm;

/// Why the NSM produced no document.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    #[error("cannot open /dev/nsm (not inside a Nitro Enclave?)")]
    NoDevice,
    #[error("the NSM refused: {0}")]
    Refused(String),
    #[error("development CA in {dir}: {detail}")]
    DevCa { dir: String, detail: String },
    #[error("signing the document failed: {0}")]
    Sign(String),
}

/// Something that makes attestation documents.
pub trait Nsm: Send + Sync {
    /// A signed document carrying `user_data`, `nonce` and `public_key`.
    fn attest(
        &self,
        user_data: &[u8],
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;
    /// "device" or "emulated".
    fn kind(&self) -> &'static str;
}
