//! `confidant-model check`: last-position logits and greedy continuations against a reference.

use std::path::Path;

use confidant_model::generate::greedy_ids;
use confidant_model::{load_model, Dtype};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
struct Reference {
    tolerance_abs: f64,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    input_ids: Vec<i64>,
    last_logits: Vec<f64>,
    greedy_next_12: Vec<i64>,
}

/// Runs the check; Ok(0) when every case passes, Ok(1) when one does not.
pub fn run(model_dir: &Path, reference: &Path, dtype: Dtype) -> Result<u8, String> {
    let text =
        std::fs::read_to_string(reference).map_err(|e| format!("{}: {e}", reference.display()))?;
    let reference: Reference =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", reference.display()))?;
    let model = load_model(model_dir, dtype).map_err(|e| e.to_string())?;
    let report = check(&model, &reference).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(if report["passed"] == true { 0 } else { 1 })
}

fn check(
    model: &confidant_model::Bloom,
    reference: &Reference,
) -> Result<serde_json::Value, confidant_model::ModelError> {
    let mut cases = Vec::new();
    let mut worst = 0f64;
    let mut all_greedy = true;
    for case in &reference.cases {
        let mut cache = model.new_cache();
        let got = model.forward(&case.input_ids, &mut cache)?;
        let max_abs_diff = if got.len() == case.last_logits.len() {
            got.iter()
                .zip(&case.last_logits)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max)
        } else {
            f64::INFINITY
        };
        let greedy = greedy_ids(model, &case.input_ids, case.greedy_next_12.len())?;
        let greedy_match = greedy == case.greedy_next_12;
        worst = worst.max(max_abs_diff);
        all_greedy &= greedy_match;
        cases.push(json!({
            "input_len": case.input_ids.len(),
            "max_abs_diff": max_abs_diff,
            "greedy_match": greedy_match,
            "greedy": greedy,
        }));
    }
    let passed = worst <= reference.tolerance_abs && all_greedy && !reference.cases.is_empty();
    Ok(json!({
        "passed": passed,
        "max_abs_diff": worst,
        "tolerance_abs": reference.tolerance_abs,
        "greedy_match": all_greedy,
        "cases": cases,
    }))
}
