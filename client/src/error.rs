//! Failures that are not a verdict about an enclave: unusable arguments or unreadable files. The
//! CLI exits 2 on them.

/// Bad input from the command line, a config or policy file, or a file they name.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Arguments or file contents that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A file or stream that cannot be read or written.
    #[error("{0}")]
    Io(String),
}
