//! What Confidant's `user_data` must commit to, beside the PCRs: one set of flags shared by `attest`,
//! `ask`, `chat` and `verify`, so that they mean the same everywhere.

#[derive(Debug, Clone, Default, clap::Args)]
pub struct DigestPins {
    /// The model digest the enclave must attest (SHA-256, hex) [or the policy file's].
    #[arg(long, value_name = "HEX")]
    pub model_digest: Option<String>,
    /// The settings digest the enclave must attest (SHA-256, hex) [or the policy file's].
    #[arg(long, value_name = "HEX")]
    pub settings_digest: Option<String>,
    /// The inference dtype the enclave must attest: f32, bf16 or int8 (the weights' precision)
    /// [or the policy file's].
    #[arg(long, value_name = "DTYPE")]
    pub dtype: Option<String>,
}
