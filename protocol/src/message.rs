//! What travels inside the encryption: the question (JSON in a `REQUEST` or `SESSION` turn) and the
//! trailer (JSON in the final response chunk). Every other chunk is UTF-8 answer text.

use serde::{Deserialize, Serialize};

/// A question and how to answer it. Unknown fields are refused, so a misspelt option is an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// How the answer ended; the final chunk's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    /// `eos`, `stop` or `length`.
    pub finish: String,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
}

impl Ask {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Ask, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Trailer {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Trailer, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let a = Ask {
            prompt: "hi".into(),
            max_tokens: Some(8),
            temperature: None,
            top_p: None,
            top_k: None,
            seed: Some(1),
        };
        assert_eq!(Ask::from_bytes(&a.to_bytes()).unwrap(), a);
        assert!(Ask::from_bytes(br#"{"prompt":"x","max_token":3}"#).is_err());
        assert!(Ask::from_bytes(b"not json").is_err());
    }
}
