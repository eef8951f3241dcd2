//! The model digest: what the enclave attests as `model` in its `user_data`, and so what a client
//! pins with `--model-digest`.
//!
//! `SHA-256("confidant model digest v1" ‖ for each of config.json, tokenizer.json, model.safetensors:
//! u64 length ‖ SHA-256(bytes))`. The enclave takes it over the bytes as loaded (the weights' hash over
//! the same memory the tensors are built from); a measurement takes it over the files as stored.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Length and SHA-256 of one file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl FileHash {
    pub fn of(bytes: &[u8]) -> FileHash {
        FileHash {
            len: bytes.len() as u64,
            sha256: Sha256::digest(bytes).into(),
        }
    }
}

/// The digest over the three files.
pub fn model_digest(config: FileHash, tokenizer: FileHash, weights: FileHash) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"confidant model digest v1");
    for f in [config, tokenizer, weights] {
        h.update(f.len.to_be_bytes());
        h.update(f.sha256);
    }
    h.finalize().into()
}

/// The files of a model directory (names only: this crate opens no file).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    /// Encrypted weights (`model.safetensors.enc`), opened with the sealed `weights_key`.
    pub encrypted_weights: PathBuf,
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// `config.json`, `model.safetensors` (or `model.safetensors.enc`) and `tokenizer.json` in `dir`.
    pub fn in_dir(dir: &Path) -> ModelFiles {
        ModelFiles {
            config: dir.join("config.json"),
            weights: dir.join("model.safetensors"),
            encrypted_weights: dir.join("model.safetensors.enc"),
            tokenizer: dir.join("tokenizer.json"),
        }
    }

    /// The weights file as stored: the encrypted one when there is no plain one.
    pub fn stored_weights(&self) -> &Path {
        if !self.weights.exists() && self.encrypted_weights.exists() {
            &self.encrypted_weights
        } else {
            &self.weights
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_file_change_changes_the_digest() {
        let a = FileHash::of(b"config");
        let b = FileHash::of(b"tokenizer");
        let c = FileHash::of(b"weights");
        let d = model_digest(a, b, c);
        assert_ne!(d, model_digest(a, b, FileHash::of(b"weightz")));
        assert_ne!(d, model_digest(b, a, c));
        assert_eq!(d, model_digest(a, b, c));
    }
}
