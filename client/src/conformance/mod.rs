//! `confidant conformance`: runs the known-answer suites under a test-vector directory.
//!
//! Each suite reads its own subdirectory (`attestation/`, later `hpke/`, `ohttp/`, `protocol/`,
//! `bloom/`, …) and yields one [`CaseResult`] per case. A suite whose directory is absent is skipped
//! unless it was asked for by name.

mod attestation;
mod bloom;
mod hpke;
mod kms;
mod ohttp;
mod protocol;
mod receipts;

use std::path::{Path, PathBuf};

use serde_json::json;

/// One case's outcome.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    /// `Err(why)` when the case failed.
    pub outcome: Result<(), String>,
}

impl CaseResult {
    pub fn check(name: impl Into<String>, outcome: Result<(), String>) -> CaseResult {
        CaseResult {
            name: name.into(),
            outcome,
        }
    }
}

/// Why a suite produced no cases.
#[derive(Debug)]
pub enum SuiteError {
    /// It needs something this installation lacks (reported as skipped unless asked for by name).
    Unavailable(String),
    /// Its vectors are unreadable or its runner broke.
    Failed(String),
}

type SuiteFn = fn(&Path) -> Result<Vec<CaseResult>, SuiteError>;

/// Every suite, in run order, with the subdirectory that marks it present.
const SUITES: &[(&str, SuiteFn)] = &[
    ("attestation", |d| {
        attestation::run(d).map_err(SuiteError::Failed)
    }),
    ("hpke", |d| hpke::run(d).map_err(SuiteError::Failed)),
    ("ohttp", |d| ohttp::run(d).map_err(SuiteError::Failed)),
    ("protocol", |d| protocol::run(d).map_err(SuiteError::Failed)),
    ("receipts", |d| receipts::run(d).map_err(SuiteError::Failed)),
    ("bloom", bloom::run),
    ("kms", kms::run),
];

/// Names of all suites.
pub fn suite_names() -> Vec<&'static str> {
    SUITES.iter().map(|(n, _)| *n).collect()
}

/// The default vector directory: the repository's `test-vectors/` when this binary was built from a
/// checkout that still exists, else `./test-vectors`.
pub fn default_dir() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors");
    if built.is_dir() {
        built
    } else {
        PathBuf::from("test-vectors")
    }
}

/// Results per suite.
#[derive(Debug)]
pub struct Outcome {
    pub suites: Vec<(&'static str, Vec<CaseResult>)>,
    /// Suites present but not runnable here, with why.
    pub skipped: Vec<(&'static str, String)>,
}

impl Outcome {
    pub fn passed(&self) -> usize {
        self.cases().filter(|c| c.outcome.is_ok()).count()
    }

    pub fn failed(&self) -> usize {
        self.cases().filter(|c| c.outcome.is_err()).count()
    }

    fn cases(&self) -> impl Iterator<Item = &CaseResult> {
        self.suites.iter().flat_map(|(_, cases)| cases.iter())
    }

    pub fn to_json(&self) -> serde_json::Value {
        let suites: serde_json::Map<String, serde_json::Value> = self
            .suites
            .iter()
            .map(|(name, cases)| {
                let failures: Vec<_> = cases
                    .iter()
                    .filter_map(|c| {
                        c.outcome
                            .as_ref()
                            .err()
                            .map(|why| json!({"case": c.name, "why": why}))
                    })
                    .collect();
                (
                    name.to_string(),
                    json!({
                        "passed": cases.len() - failures.len(),
                        "failed": failures.len(),
                        "failures": failures,
                    }),
                )
            })
            .collect();
        let skipped: serde_json::Map<String, serde_json::Value> = self
            .skipped
            .iter()
            .map(|(n, why)| (n.to_string(), json!(why)))
            .collect();
        json!({ "passed": self.passed(), "failed": self.failed(), "suites": suites, "skipped": skipped })
    }
}

/// Runs the selected suites (all present ones when `only` is empty). Errors are usage or I/O problems:
/// an unknown suite name, a requested suite with no directory, an unreadable manifest.
pub fn run(dir: &Path, only: &[String]) -> Result<Outcome, String> {
    if !dir.is_dir() {
        return Err(format!(
            "{}: not a directory of test vectors",
            dir.display()
        ));
    }
    for name in only {
        if !SUITES.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "unknown suite `{name}` (known: {})",
                suite_names().join(", ")
            ));
        }
        if !dir.join(name).is_dir() {
            return Err(format!(
                "suite `{name}`: no directory {}",
                dir.join(name).display()
            ));
        }
    }
    let mut suites = Vec::new();
    let mut skipped = Vec::new();
    for (name, suite) in SUITES {
        let wanted = if only.is_empty() {
            dir.join(name).is_dir()
        } else {
            only.iter().any(|n| n == name)
        };
        if !wanted {
            continue;
        }
        match suite(dir) {
            Ok(cases) => suites.push((*name, cases)),
            Err(SuiteError::Unavailable(why)) if only.is_empty() => skipped.push((*name, why)),
            Err(SuiteError::Unavailable(why) | SuiteError::Failed(why)) => {
                return Err(format!("suite `{name}`: {why}"))
            }
        }
    }
    if suites.is_empty() {
        return Err(format!("{}: holds no runnable suite", dir.display()));
    }
    Ok(Outcome { suites, skipped })
}

/// Reads and parses a JSON file of the vector directory.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decodes a hex field of a vector file.
pub(crate) fn hex_field(v: &serde_json::Value, key: &str) -> Result<Vec<u8>, String> {
    let s = v[key]
        .as_str()
        .ok_or_else(|| format!("missing string field `{key}`"))?;
    hex::decode(s).map_err(|_| format!("field `{key}` is not hex"))
}
