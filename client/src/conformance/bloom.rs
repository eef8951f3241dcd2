//! Suite `bloom`: the BLOOM reference (`bloom/reference.json`, computed by Hugging Face transformers)
//! through the enclave's own model, by running `confidant-model check`: the client does not link
//! libtorch. Each reference case is a conformance case: logits within the tolerance and the greedy
//! continuation equal.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CaseResult, SuiteError};

/// The model tools: `$CONFIDANT_MODEL_TOOL`, else beside this binary, else on `PATH`.
fn model_tool() -> Option<PathBuf> {
    const NAME: &str = "confidant-model";
    if let Some(p) = std::env::var_os("CONFIDANT_MODEL_TOOL") {
        return Some(PathBuf::from(p));
    }
    let sibling = std::env::current_exe().ok()?.with_file_name(NAME);
    if sibling.is_file() {
        return Some(sibling);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(NAME))
            .find(|p| p.is_file())
    })
}

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, SuiteError> {
    let bin = model_tool().ok_or_else(|| {
        SuiteError::Unavailable(
            "needs confidant-model (beside confidant, on PATH, or in $CONFIDANT_MODEL_TOOL)".into(),
        )
    })?;
    let suite = dir.join("bloom");
    let output = Command::new(&bin)
        .arg("check")
        .arg("--model")
        .arg(&suite)
        .arg("--reference")
        .arg(suite.join("reference.json"))
        .output()
        .map_err(|e| SuiteError::Failed(format!("{}: {e}", bin.display())))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).map_err(|_| {
        SuiteError::Failed(format!(
            "confidant-model check printed no report (exit {:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    })?;
    let tolerance = report["tolerance_abs"].as_f64().unwrap_or(0.0);
    let cases = report["cases"]
        .as_array()
        .ok_or_else(|| SuiteError::Failed("report has no cases".into()))?;
    let mut results: Vec<CaseResult> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let diff = c["max_abs_diff"].as_f64().unwrap_or(f64::INFINITY);
            let greedy = c["greedy_match"].as_bool().unwrap_or(false);
            let outcome = match (diff <= tolerance, greedy) {
                (true, true) => Ok(()),
                (false, _) => Err(format!(
                    "max |logit difference| {diff:e} exceeds {tolerance:e}"
                )),
                (true, false) => Err(format!("greedy continuation differs: got {}", c["greedy"])),
            };
            CaseResult::check(format!("bloom/case-{i}-len-{}", c["input_len"]), outcome)
        })
        .collect();
    // The check's exit status must agree with the cases.
    let all_ok = results.iter().all(|r| r.outcome.is_ok());
    results.push(CaseResult::check(
        "bloom/exit-status",
        if output.status.success() == all_ok {
            Ok(())
        } else {
            Err(format!(
                "exit status {:?} disagrees with the cases",
                output.status.code()
            ))
        },
    ));
    Ok(results)
}
