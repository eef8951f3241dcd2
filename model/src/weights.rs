//! A safetensors checkpoint in memory: a private mapping of the file (or anonymous memory the
//! encrypted file was decrypted into), and where each tensor lies in it.
//!
//! Nothing is converted here. The model takes each tensor in the dtype it runs in
//! ([`Weights::matrix`], [`Weights::vector`]): an f32 matrix of an f32 checkpoint is a zero-copy view
//! of the mapping; anything converted is converted one tensor at a time, after which the tensor's
//! pages of the mapping are released, so the resident set stays near one copy of the weights as
//! loaded. Keys may carry the `transformer.` prefix or not.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions, UncheckedAdvice};
use safetensors::{Dtype as StoredDtype, SafeTensors};
use tch::{Kind, Tensor};

use super::kernels::Matrix;
use super::{Dtype, ModelError};
use confidant_protocol::digest::FileHash;

/// The mapping that zero-copy tensors point into; kept alive as long as any of them.
#[derive(Debug)]
pub struct Mapping(MmapMut);

// SAFETY: after loading, the mapping is only read (through tensors that libtorch treats as read-only
// parameters); a copy-on-write mapping cannot change the file or be changed by it.
unsafe impl Sync for Mapping {}
unsafe impl Send for Mapping {}

/// Where one tensor lies.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    shape: Vec<i64>,
    /// Byte range in the mapping.
    offset: usize,
    len: usize,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Weights {
    entries: HashMap<String, Entry>,
    /// Length and SHA-256 of the file's bytes, taken over the mapping the tensors are read from.
    file_hash: FileHash,
    mapping: Arc<Mapping>,
}

fn kind_of(dtype: StoredDtype) -> Option<Kind> {
    match dtype {
        StoredDtype::F32 => Some(Kind::Float),
        StoredDtype::F16 => Some(Kind::Half),
        StoredDtype::BF16 => Some(Kind::BFloat16),
        _ => None,
    }
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Length and SHA-256 of a mapped file, a slice at a time, each slice's pages released from the
/// resident set once hashed: hashing reads every byte, and the pages would otherwise stay counted
/// until the model is built. (They stay in the page cache: a later read is a minor fault. Only for a
/// file mapping: released anonymous pages would read back as zeros.)
fn hash_file_mapping(mapping: &Mapping) -> FileHash {
    use sha2::{Digest, Sha256};
    const SLICE: usize = 64 << 20;
    let bytes = &mapping.0[..];
    let mut h = Sha256::new();
    for start in (0..bytes.len()).step_by(SLICE) {
        let end = (start + SLICE).min(bytes.len());
        h.update(&bytes[start..end]);
        // SAFETY: the range lies inside the mapping (slices start page-aligned: the mapping does,
        // and SLICE is a multiple of any page size); nothing views it yet (the tensors are built
        // after hashing); for a private file mapping with no writes, dropping pages only frees
        // memory and later reads return the file's bytes again.
        unsafe {
            let _ = mapping
                .0
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start);
        }
    }
    FileHash {
        len: bytes.len() as u64,
        sha256: h.finalize().into(),
    }
}

impl Weights {
    /// Maps `path` (privately: nothing can write through to the file).
    pub fn load(path: &Path) -> Result<Weights, ModelError> {
        let file = std::fs::File::open(path)
            .map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        // SAFETY: a private (copy-on-write) mapping; the file may change underneath only if someone
        // rewrites it while we load, which the digest taken over the same mapping would then reveal.
        let mmap = unsafe { MmapOptions::new().map_copy(&file) }
            .map_err(|e| ModelError::Io(format!("{}: mmap: {e}", path.display())))?;
        Self::from_mapping(mmap, path, None)
    }

    /// Decrypts `path` (see `confidant_sealing::weights`) chunk by chunk into anonymous memory.
    /// Returns the weights and, with `hash_stored`, the hash of the file as stored.
    pub fn load_encrypted(
        path: &Path,
        key: &[u8; 32],
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
            Self::from_mapping(mmap, path, Some(done.plaintext))?,
            done.stored,
        ))
    }

    /// `file_hash`: the hash of the mapping's bytes when already taken (while decrypting).
    fn from_mapping(
        mmap: MmapMut,
        path: &Path,
        file_hash: Option<FileHash>,
    ) -> Result<Weights, ModelError> {
        let mapping = Arc::new(Mapping(mmap));
        // Hash what is loaded, not what a second read of the file might return.
        let file_hash = file_hash.unwrap_or_else(|| hash_file_mapping(&mapping));
        let base = mapping.0.as_ptr() as usize;
        let st = SafeTensors::deserialize(&mapping.0)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        let mut entries = HashMap::new();
        for (name, view) in st.tensors() {
            let kind = kind_of(view.dtype()).ok_or_else(|| {
                ModelError::Weights(format!(
                    "tensor {name}: unsupported dtype {:?}",
                    view.dtype()
                ))
            })?;
            let data = view.data();
            let entry = Entry {
                kind,
                shape: view.shape().iter().map(|&d| d as i64).collect(),
                offset: data.as_ptr() as usize - base,
                len: data.len(),
            };
            let name = name
                .strip_prefix("transformer.")
                .unwrap_or(&name)
                .to_string();
            if entries.insert(name.clone(), entry).is_some() {
                return Err(ModelError::Weights(format!("tensor {name} appears twice")));
            }
        }
        Ok(Weights {
            entries,
            file_hash,
            mapping,
        })
    }

    fn entry(&self, name: &str, shape: &[i64]) -> Result<&Entry, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::Weights(format!("missing tensor {name}")))?;
        if e.shape != shape {
            return Err(ModelError::Weights(format!(
                "tensor {name} has shape {:?}, expected {shape:?}",
                e.shape
            )));
        }
        Ok(e)
    }

    /// The tensor as stored: a view of the mapping when aligned for its kind, else a copy.
    fn stored(&self, e: &Entry) -> Tensor {
        let bytes = &self.mapping.0[e.offset..e.offset + e.len];
        if (bytes.as_ptr() as usize).is_multiple_of(e.kind.elt_size_in_bytes()) {
            // SAFETY: the bytes lie inside the mapping, which outlives the view wherever the view
            // escapes (see `matrix`); the length is exactly numel × element size (safetensors checks).
            unsafe { Tensor::from_blob(bytes.as_ptr(), &e.shape, &[], e.kind, tch::Device::Cpu) }
        } else {
            Tensor::from_data_size(bytes, &e.shape, e.kind)
        }
    }

    /// Frees the pages that lie wholly inside bytes `start..end` of the mapping (a part of a tensor
    /// already converted). Re-reading them would give the file's bytes for a file mapping, zeros for
    /// decrypted memory: neither happens, nothing views them. Pages shared with a neighbour are
    /// kept, so no other tensor's bytes are ever dropped.
    fn release(&self, start: usize, end: usize) {
        let page = page_size();
        let base = self.mapping.0.as_ptr() as usize;
        let first = (base + start).next_multiple_of(page) - base;
        let last = (base + end) / page * page - base;
        if first < last {
            // SAFETY: whole pages inside the range, which no tensor views (see above).
            unsafe {
                let _ = self.mapping.0.unchecked_advise_range(
                    UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                );
            }
        }
    }

    /// The 2-D tensor `name` as a [`Matrix`] in `dtype`: a view of the mapping when it is stored so,
    /// else converted a block of rows at a time, each block's source pages released once read.
    pub fn matrix(&self, name: &str, shape: [i64; 2], dtype: Dtype) -> Result<Matrix, ModelError> {
        let e = self.entry(name, &shape)?;
        let stored = self.stored(e);
        let fail =
            |err: &dyn std::fmt::Display| ModelError::Weights(format!("tensor {name}: {err}"));
        let zero_copy = dtype == Dtype::F32
            && e.kind == Kind::Float
            && stored.data_ptr() == self.mapping.0[e.offset..].as_ptr() as *mut std::ffi::c_void;
        if zero_copy {
            return Ok(Matrix::f32(&stored)
                .map_err(|err| fail(&err))?
                .keeping(self.mapping.clone()));
        }
        let rows = shape[0].max(0) as usize;
        let row_bytes = e.len.checked_div(rows).unwrap_or(0);
        let mut done = |r0: usize, r1: usize| {
            self.release(e.offset + r0 * row_bytes, e.offset + r1 * row_bytes);
        };
        let m = match dtype {
            Dtype::Int8 => Matrix::int8_with(&stored, &mut done),
            Dtype::F32 | Dtype::Bf16 => {
                let kind = if dtype == Dtype::F32 {
                    Kind::Float
                } else {
                    Kind::BFloat16
                };
                let out = Tensor::f_empty(shape, (kind, tch::Device::Cpu))?;
                let block = ((16 << 20) / row_bytes.max(1)).max(1);
                for r0 in (0..rows).step_by(block) {
                    let n = block.min(rows - r0);
                    out.f_narrow(0, r0 as i64, n as i64)?
                        .f_copy_(&stored.f_narrow(0, r0 as i64, n as i64)?)?;
                    done(r0, r0 + n);
                }
                if dtype == Dtype::F32 {
                    Matrix::f32(&out)
                } else {
                    Matrix::bf16(&out)
                }
            }
        }
        .map_err(|err| fail(&err))?;
        Ok(m)
    }

    /// The 1-D tensor `name` (a bias or a norm's parameters) in f32.
    pub fn vector(&self, name: &str, len: i64) -> Result<Vec<f32>, ModelError> {
        let e = self.entry(name, &[len])?;
        let t = self.stored(e).to_kind(Kind::Float);
        Ok(Vec::<f32>::try_from(&t)?)
    }

    /// Length and SHA-256 of the weights file as loaded.
    pub fn file_hash(&self) -> FileHash {
        self.file_hash
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}
