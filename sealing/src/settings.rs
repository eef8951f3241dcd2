//! The enclave's settings: what the operator seals and only an attested enclave can read.
//!
//! JSON with a fixed schema (unknown fields refused, limits range-checked). The digest clients pin is
//! the SHA-256 of the exact bytes that were sealed, so the operator can compute it before sealing.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The longest system prompt accepted, in bytes.
pub const MAX_SYSTEM_PROMPT_BYTES: usize = 16 * 1024;
/// The largest generation limit accepted.
pub const MAX_NEW_TOKENS_LIMIT: u32 = 4096;
/// The largest context limit accepted (prompt plus answer tokens).
pub const MAX_CONTEXT_TOKENS: u32 = 32_768;

/// Why a settings document was refused. Messages name the field, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Not JSON, an unknown field, or a field of the wrong type (serde's message names it).
    #[error("settings: {0}")]
    Schema(String),
    #[error("settings: {field} must be between {min} and {max}, not {value}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        value: u64,
    },
    #[error("settings: system_prompt is {0} bytes, at most {MAX_SYSTEM_PROMPT_BYTES} are allowed")]
    SystemPromptTooLong(usize),
    #[error("settings: weights_key must be 64 hex digits (an AES-256 key)")]
    WeightsKey,
}

impl SettingsError {
    /// A stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SettingsError::Schema(_) => "settings_schema",
            SettingsError::OutOfRange { .. } => "settings_out_of_range",
            SettingsError::SystemPromptTooLong(_) => "settings_system_prompt_too_long",
            SettingsError::WeightsKey => "settings_weights_key",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    system_prompt: String,
    #[serde(default = "default_max_new_tokens")]
    max_new_tokens: u32,
    /// Absent: 64, or `max_new_tokens` if that is lower.
    #[serde(default)]
    default_new_tokens: Option<u32>,
    #[serde(default)]
    weights_key: Option<String>,
    /// Absent: the enclave's `--context-tokens`.
    #[serde(default)]
    context_tokens: Option<u32>,
}

fn default_max_new_tokens() -> u32 {
    512
}

/// Validated settings.
pub struct Settings {
    /// Put before every conversation.
    pub system_prompt: Zeroizing<String>,
    /// Upper bound on the `max_tokens` a client may ask for.
    pub max_new_tokens: u32,
    /// Tokens generated when a client does not say.
    pub default_new_tokens: u32,
    /// AES-256 key of encrypted weights at rest, when they are encrypted.
    pub weights_key: Option<Zeroizing<[u8; 32]>>,
    /// Prompt plus answer tokens per request and session, when the settings fix it.
    pub context_tokens: Option<u32>,
    /// SHA-256 of the sealed bytes: what the enclave attests as `settings`.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the prompt or the key.
        f.debug_struct("Settings")
            .field("system_prompt_bytes", &self.system_prompt.len())
            .field("max_new_tokens", &self.max_new_tokens)
            .field("default_new_tokens", &self.default_new_tokens)
            .field("context_tokens", &self.context_tokens)
            .field("weights_key", &self.weights_key.is_some())
            .field("digest", &hex::encode(self.digest))
            .finish()
    }
}

impl Settings {
    /// Parses and validates settings JSON.
    pub fn parse(bytes: &[u8]) -> Result<Settings, SettingsError> {
        let raw: Raw = serde_json::from_slice(bytes).map_err(schema_error)?;
        let raw = Zeroizing::new(raw);
        range(
            "max_new_tokens",
            raw.max_new_tokens,
            1,
            MAX_NEW_TOKENS_LIMIT,
        )?;
        let default_new_tokens = raw.default_new_tokens.unwrap_or(64.min(raw.max_new_tokens));
        range(
            "default_new_tokens",
            default_new_tokens,
            1,
            raw.max_new_tokens,
        )?;
        if let Some(c) = raw.context_tokens {
            // Room for at least one answer of the largest size and a question.
            range(
                "context_tokens",
                c,
                raw.max_new_tokens.saturating_add(1),
                MAX_CONTEXT_TOKENS,
            )?;
        }
        if raw.system_prompt.len() > MAX_SYSTEM_PROMPT_BYTES {
            return Err(SettingsError::SystemPromptTooLong(raw.system_prompt.len()));
        }
        let weights_key = match &raw.weights_key {
            None => None,
            Some(h) => {
                let mut key = Zeroizing::new([0u8; 32]);
                hex::decode_to_slice(h, key.as_mut()).map_err(|_| SettingsError::WeightsKey)?;
                Some(key)
            }
        };
        Ok(Settings {
            system_prompt: Zeroizing::new(raw.system_prompt.clone()),
            max_new_tokens: raw.max_new_tokens,
            default_new_tokens,
            weights_key,
            context_tokens: raw.context_tokens,
            digest: digest(bytes),
        })
    }
}

impl zeroize::Zeroize for Raw {
    fn zeroize(&mut self) {
        self.system_prompt.zeroize();
        if let Some(k) = &mut self.weights_key {
            k.zeroize();
        }
    }
}

/// serde_json's message without any value it may quote (an invalid value could be a secret, and
/// inside the enclave errors reach the parent's console).
fn schema_error(e: serde_json::Error) -> SettingsError {
    let full = e.to_string();
    let field_problem = ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| full.starts_with(p));
    let what = if field_problem {
        full.split(',')
            .next()
            .unwrap_or("")
            .trim_end_matches(" at line")
            .to_string()
    } else if e.is_syntax() || e.is_eof() {
        "not valid JSON".to_string()
    } else {
        "a field has the wrong type".to_string()
    };
    SettingsError::Schema(format!("{what} (line {}, column {})", e.line(), e.column()))
}

fn range(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), SettingsError> {
    if value < min || value > max {
        return Err(SettingsError::OutOfRange {
            field,
            min: min.into(),
            max: max.into(),
            value: value.into(),
        });
    }
    Ok(())
}

/// The settings digest: SHA-256 of the bytes as sealed.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_document_parses_and_its_digest_is_of_the_bytes() {
        let json = br#"{"system_prompt":"Be brief.","max_new_tokens":128,"default_new_tokens":32,
            "weights_key":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}"#;
        let s = Settings::parse(json).expect("valid");
        assert_eq!(s.system_prompt.as_str(), "Be brief.");
        assert_eq!((s.max_new_tokens, s.default_new_tokens), (128, 32));
        assert_eq!(s.weights_key.as_ref().map(|k| k[31]), Some(0x1f));
        assert_eq!(s.digest, digest(json));
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("Be brief") && !shown.contains("1e1f"),
            "{shown}"
        );
    }

    #[test]
    fn defaults_apply_to_an_empty_object() {
        let s = Settings::parse(b"{}").expect("valid");
        assert_eq!((s.max_new_tokens, s.default_new_tokens), (512, 64));
        assert!(s.system_prompt.is_empty() && s.weights_key.is_none());
        let s = Settings::parse(br#"{"max_new_tokens":16}"#).expect("valid");
        assert_eq!(
            s.default_new_tokens, 16,
            "the default follows a lower limit"
        );
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let cases: &[(&[u8], &str)] = &[
            (br#"{"temperature":0.5}"#, "settings_schema"),
            (br#"{"max_new_tokens":"many"}"#, "settings_schema"),
            (
                br#"{"max_new_tokens":1,"max_new_tokens":2}"#,
                "settings_schema",
            ),
            (b"not json", "settings_schema"),
            (br#"{"max_new_tokens":0}"#, "settings_out_of_range"),
            (br#"{"max_new_tokens":5000}"#, "settings_out_of_range"),
            (
                br#"{"max_new_tokens":16,"default_new_tokens":32}"#,
                "settings_out_of_range",
            ),
            (br#"{"weights_key":"00"}"#, "settings_weights_key"),
        ];
        for (json, code) in cases {
            let err = Settings::parse(json).expect_err("must be refused");
            assert_eq!(
                err.code(),
                *code,
                "{}: {err}",
                String::from_utf8_lossy(json)
            );
        }
        let err = Settings::parse(br#"{"temperature":0.5}"#).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown field `temperature`"),
            "{err}"
        );
        let err =
            Settings::parse(br#"{"system_prompt":7,"max_new_tokens":"secret"}"#).expect_err("type");
        assert!(
            !err.to_string().contains("secret") && !err.to_string().contains("integer"),
            "{err}"
        );
        let long = format!(
            r#"{{"system_prompt":"{}"}}"#,
            "x".repeat(MAX_SYSTEM_PROMPT_BYTES + 1)
        );
        assert_eq!(
            Settings::parse(long.as_bytes()).expect_err("long").code(),
            "settings_system_prompt_too_long"
        );
    }
}
