//! Weights from a memory-mapped safetensors file.
//!
//! When a tensor's stored dtype is the dtype the model runs in, the tensor is a zero-copy view of the
//! mapping (a private copy-on-write mapping, so nothing can write through to the file). Otherwise it is
//! converted in slices, and each slice of the file is released (`MADV_DONTNEED`) once converted, so the
//! resident set stays near one copy of the weights. Keys may carry the `transformer.` prefix or not.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

use super::ModelError;
use confidant_protocol::digest::FileHash;

/// The mapping that zero-copy tensors point into; kept alive as long as the model.
#[derive(Debug)]
pub struct Mapping(MmapMut);

// SAFETY: after loading, the mapping is only read (through tensors that libtorch treats as read-only
// parameters); a copy-on-write mapping cannot change the file or be changed by it.
unsafe impl Sync for Mapping {}

/// A loaded checkpoint: tensors by name (without the `transformer.` prefix).
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Length and SHA-256 of the file's bytes, taken over the mapping the tensors were built from.
    file_hash: FileHash,
    /// Held so zero-copy tensors stay valid.
    _mapping: Arc<Mapping>,
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// Rows converted per slice when a tensor changes dtype: bounds the transient extra memory.
const CONVERT_BYTES: usize = 64 << 20;

impl Weights {
    /// Maps `path` and builds every floating-point tensor in `kind`.
    pub fn load(path: &Path, kind: Kind) -> Result<Weights, ModelError> {
        let file = std::fs::File::open(path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        // SAFETY: a private (copy-on-write) mapping; the file may change underneath only if someone
        // rewrites it while we load, which the digest taken over the same mapping would then reveal.
        let mmap = unsafe { MmapOptions::new().map_copy(&file) }
            .map_err(|e| ModelError::Io(format!("{}: mmap: {e}", path.display())))?;
        Self::from_mapping(mmap, path, kind, None)
    }

    /// Decrypts `path` (see `confidant_sealing::weights`) chunk by chunk into anonymous memory and builds the
    /// tensors from there. Returns the weights and, with `hash_stored`, the hash of the file as stored.
    pub fn load_encrypted(
        path: &Path,
        key: &[u8; 32],
        kind: Kind,
        hash_stored: bool,
    ) -> Result<(Weights, Option<FileHash>), ModelError> {
        use confidant_sealing::weights::{chunk_count, decrypt_into, read_header, HEADER_LEN};
        let fail =
            |e: &dyn std::fmt::Display| ModelError::Weights(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let size = file.metadata().map_err(|e| fail(&e))?.len();
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let (len, chunk, header) = read_header(&mut reader).map_err(|e| fail(&e))?;
        // Check the size before allocating what the header claims.
        let expected = (HEADER_LEN as u64)
            .checked_add(len)
            .and_then(|n| n.checked_add(16 * chunk_count(len, chunk)));
        if expected != Some(size) {
            return Err(fail(
                &"the file's size does not match its header (truncated or extended)",
            ));
        }
        let len = usize::try_from(len).map_err(|_| fail(&"too large"))?;
        if len == 0 {
            return Err(fail(&"no weights"));
        }
        // Populated up front: one pass of the kernel instead of a fault per page.
        let mut mmap = MmapOptions::new()
            .len(len)
            .populate()
            .map_anon()
            .map_err(|e| fail(&e))?;
        let done = decrypt_into(&mut reader, &header, chunk, &mut mmap, key, hash_stored)
            .map_err(|e| fail(&e))?;
        Ok((
            Self::from_mapping(mmap, path, kind, Some(done.plaintext))?,
            done.stored,
        ))
    }

    /// `file_hash`: the hash of the mapping's bytes when already taken (while decrypting).
    fn from_mapping(
        mmap: MmapMut,
        path: &Path,
        kind: Kind,
        file_hash: Option<FileHash>,
    ) -> Result<Weights, ModelError> {
        let mapping = Arc::new(Mapping(mmap));
        // Hash what is loaded, not what a second read of the file might return.
        let file_hash = file_hash.unwrap_or_else(|| FileHash::of(&mapping.0));
        let base = mapping.0.as_ptr() as usize;
        let st = SafeTensors::deserialize(&mapping.0)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let stored = kind_of(view.dtype()).ok_or_else(|| {
                ModelError::Weights(format!(
                    "tensor {name}: unsupported dtype {:?}",
                    view.dtype()
                ))
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let data = view.data();
            let elem = stored.elt_size_in_bytes();
            let offset = data.as_ptr() as usize - base;
            let aligned = (data.as_ptr() as usize).is_multiple_of(elem);
            // SAFETY: `data` lies inside the mapping, which `Weights` keeps alive for the tensors'
            // lifetime; its length is exactly numel * element size (checked by safetensors).
            let view_tensor = |ptr: *const u8, shape: &[i64]| unsafe {
                Tensor::from_blob(ptr, shape, &[], stored, tch::Device::Cpu)
            };
            let tensor = if stored == kind && aligned {
                view_tensor(data.as_ptr(), &shape)
            } else {
                let out = Tensor::empty(shape.as_slice(), (kind, tch::Device::Cpu));
                let rows = shape.first().copied().unwrap_or(1).max(1) as usize;
                let row_bytes = data.len() / rows;
                let rows_per_slice = (CONVERT_BYTES / row_bytes.max(1)).max(1);
                let flat = out.view([rows as i64, -1]);
                let mut row = 0;
                while row < rows {
                    let n = rows_per_slice.min(rows - row);
                    let bytes = &data[row * row_bytes..(row + n) * row_bytes];
                    let src = if aligned {
                        view_tensor(bytes.as_ptr(), &[n as i64, (row_bytes / elem) as i64])
                    } else {
                        Tensor::from_data_size(
                            bytes,
                            &[n as i64, (row_bytes / elem) as i64],
                            stored,
                        )
                    };
                    flat.narrow(0, row as i64, n as i64)
                        .copy_(&src.to_kind(kind));
                    drop(src);
                    // SAFETY: the range lies inside the mapping and no tensor views it (this tensor was
                    // converted into `out`); dropping the pages only frees memory, re-reads give the
                    // file's bytes.
                    unsafe {
                        let _ = mapping.0.unchecked_advise_range(
                            UncheckedAdvice::DontNeed,
                            offset + row * row_bytes,
                            n * row_bytes,
                        );
                    }
                    row += n;
                }
                out
            };
            let name = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(ModelError::Weights(format!("tensor {name} appears twice")));
            }
        }
        Ok(Weights {
            tensors,
            file_hash,
            _mapping: mapping,
        })
    }

    /// The tensor `name`, checked against `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::Weights(format!("missing tensor {name}")))?;
        if t.size() != shape {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                t.size()
            )));
        }
        Ok(t.shallow_clone())
    }

    /// Length and SHA-256 of the weights file as loaded.
    pub fn file_hash(&self) -> FileHash {
        self.file_hash
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}
