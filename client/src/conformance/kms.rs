//! Suite `kms`: the KMS `CiphertextForRecipient` fixture and the Wycheproof RSA-OAEP-2048 SHA-256
//! vectors through the enclave's own unwrap function, by running `confidant-enclave kms-check` (the
//! client does not link the enclave).

use std::path::Path;
use std::process::Command;

use super::{CaseResult, SuiteError};

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, SuiteError> {
    let bin = super::bloom::enclave_binary().ok_or_else(|| {
        SuiteError::Unavailable(
            "needs confidant-enclave (beside confidant, on PATH, or in $CONFIDANT_ENCLAVE)".into(),
        )
    })?;
    let output = Command::new(&bin)
        .arg("kms-check")
        .arg(dir.join("kms"))
        .output()
        .map_err(|e| SuiteError::Failed(format!("{}: {e}", bin.display())))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        SuiteError::Failed(format!(
            "kms-check printed no report: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    let cases = report["cases"]
        .as_array()
        .ok_or_else(|| SuiteError::Failed("report has no cases".into()))?;
    Ok(cases
        .iter()
        .map(|c| {
            let name = format!("kms/{}", c["case"].as_str().unwrap_or("?"));
            let outcome = if c["ok"] == true {
                Ok(())
            } else {
                Err(c["why"].as_str().unwrap_or("failed").to_string())
            };
            CaseResult::check(name, outcome)
        })
        .collect())
}
