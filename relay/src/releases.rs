//! Serving the operator's signed release manifests (`RELEASE`), the one exchange the relay answers
//! itself: a manifest is signed, so its carrier need not be trusted, and one that names an image's
//! PCR0 cannot be inside that image. The files are read for every request, so a rollout replaces
//! them without a restart.

use std::path::PathBuf;

use confidant_protocol::frame::Frame;
use confidant_protocol::release::MAX_LEN;

/// Most manifests served at once (during a rollout, two are valid).
pub const MAX_MANIFESTS: usize = 8;

#[derive(Debug, Default)]
pub struct Releases {
    files: Vec<PathBuf>,
}

impl Releases {
    pub fn new(files: Vec<PathBuf>) -> Result<Releases, String> {
        if files.len() > MAX_MANIFESTS {
            return Err(format!("at most {MAX_MANIFESTS} --release-manifest"));
        }
        let r = Releases { files };
        // A missing or oversized file is a mistake to report at start, not at the first client.
        r.frame()?;
        Ok(r)
    }

    /// The `RELEASE` frame answering a request: every manifest file as it is now.
    pub fn frame(&self) -> Result<Frame, String> {
        let mut manifests = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            if bytes.is_empty() || bytes.len() > MAX_LEN {
                return Err(format!(
                    "{}: a release manifest is 1 to {MAX_LEN} bytes",
                    f.display()
                ));
            }
            manifests.push(bytes);
        }
        Ok(Frame::Release { manifests })
    }
}
