//! BLOOM hyper-parameters from a checkpoint's `config.json`.

use serde::Deserialize;

use super::ModelError;

/// The fields of a Hugging Face `BloomConfig` the model uses. Unknown fields are ignored (configs carry
/// many training-only ones); the ones here are validated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BloomConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    #[serde(alias = "num_hidden_layers")]
    pub n_layer: usize,
    #[serde(alias = "num_attention_heads")]
    pub n_head: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub apply_residual_connection_post_layernorm: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_true() -> bool {
    true
}

impl BloomConfig {
    /// Parses and validates `config.json` text.
    pub fn from_json(text: &str) -> Result<BloomConfig, ModelError> {
        let config: BloomConfig =
            serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if let Some(t) = &self.model_type {
            if t != "bloom" {
                return bad(format!("model_type is {t:?}, not \"bloom\""));
            }
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            return bad("vocab_size, hidden_size, n_layer and n_head must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.n_head) {
            return bad(format!(
                "hidden_size {} is not a multiple of n_head {}",
                self.hidden_size, self.n_head
            ));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon < 1.0) {
            return bad(format!(
                "layer_norm_epsilon {} is out of range",
                self.layer_norm_epsilon
            ));
        }
        Ok(())
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.n_head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tiny_reference_and_rejects_nonsense() {
        let c = BloomConfig::from_json(
            r#"{"vocab_size":1024,"hidden_size":64,"n_layer":2,"n_head":4,"layer_norm_epsilon":1e-5,
                "model_type":"bloom","apply_residual_connection_post_layernorm":false}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim(), 16);
        assert!(c.tie_word_embeddings);
        assert!(BloomConfig::from_json(
            r#"{"vocab_size":8,"hidden_size":10,"n_layer":1,"n_head":3}"#
        )
        .is_err());
        assert!(BloomConfig::from_json(
            r#"{"vocab_size":8,"hidden_size":8,"n_layer":1,"n_head":2,"model_type":"gpt2"}"#
        )
        .is_err());
        assert!(BloomConfig::from_json("{}").is_err());
    }
}
