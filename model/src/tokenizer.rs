//! The tokenizer (`tokenizer.json`, through the `tokenizers` crate) and a streaming decoder that never
//! splits a UTF-8 character across the pieces it hands out.

use std::path::Path;

use super::ModelError;

/// A loaded tokenizer.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Tokenizer { inner })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Tokenizer { inner })
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[i64]) -> Result<String, ModelError> {
        let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
        self.inner
            .decode(&ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if present.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
}

/// Turns a stream of token ids into text pieces, each ending on a character boundary.
///
/// Byte-level BPE tokens can end inside a multi-byte character; the decoder holds such tokens back until
/// the character completes (the approach of Hugging Face's text streamers).
#[derive(Debug, Default)]
pub struct StreamDecoder {
    tokens: Vec<i64>,
    /// Tokens before this index have been emitted as text.
    emitted: usize,
    /// Text of `tokens[emitted_start..emitted]`, to diff against.
    prefix_start: usize,
}

impl StreamDecoder {
    /// Adds a token; returns the newly completed text, if any.
    pub fn push(
        &mut self,
        tokenizer: &Tokenizer,
        token: i64,
    ) -> Result<Option<String>, ModelError> {
        self.tokens.push(token);
        let prefix = tokenizer.decode(&self.tokens[self.prefix_start..self.emitted])?;
        let full = tokenizer.decode(&self.tokens[self.prefix_start..])?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{fffd}')
            && full.starts_with(prefix.as_str())
        {
            let piece = full[prefix.len()..].to_string();
            self.prefix_start = self.emitted;
            self.emitted = self.tokens.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }

    /// Whatever is held back, at the end of generation (an incomplete character decodes lossily).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>, ModelError> {
        if self.emitted == self.tokens.len() {
            return Ok(None);
        }
        let prefix = tokenizer.decode(&self.tokens[self.prefix_start..self.emitted])?;
        let full = tokenizer.decode(&self.tokens[self.prefix_start..])?;
        self.emitted = self.tokens.len();
        let cut = if full.starts_with(prefix.as_str()) {
            prefix.len()
        } else {
            0
        };
        Ok(Some(full[cut..].to_string()).filter(|s| !s.is_empty()))
    }
}
