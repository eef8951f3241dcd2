//! Fixtures for this workspace's tests (the model's own and the end-to-end ones): not part of the
//! serving path.

use std::path::Path;

use crate::demo::{write_demo_model, DemoSpec};
use crate::ModelError;

/// A directory for a whole test process under `root` (cargo's `CARGO_TARGET_TMPDIR`). Statics are never
/// dropped, so each call first removes the directories left by test processes that have ended,
/// instead of leaking them run after run.
pub fn process_scratch_dir(root: &Path) -> std::io::Result<tempfile::TempDir> {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.strip_prefix("run-"))
                .and_then(|n| n.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    std::fs::create_dir_all(root)?;
    tempfile::Builder::new()
        .prefix(&format!("run-{}-", std::process::id()))
        .tempdir_in(root)
}

/// Writes the demo model (default spec) into `dir`.
pub fn write_demo(dir: &Path) -> Result<(), ModelError> {
    write_demo_model(dir, DemoSpec::default())
}
