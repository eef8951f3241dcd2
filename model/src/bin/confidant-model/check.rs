//! `confidant-model check`: last-position logits and greedy continuations against a reference (in
//! f32, which decides the exit status), and how close each narrower dtype stays to f32.
//!
//! Quality against f32, per dtype, over the reference's inputs and, with `--text`, chunks of a text:
//! - **teacher-forced top-1 agreement**: over the second half of each sequence (the first half is
//!   context, as llama.cpp's `perplexity --kl-divergence` scores), the fraction of positions whose
//!   most likely next token is the same; with the mean and largest KL divergence of the next-token
//!   distribution from f32's, the largest logit difference and the logits' normalized squared error;
//! - **greedy-continuation agreement**: from the first half of each sequence, 32 greedy tokens: the
//!   fraction of positions equal to f32's, and how many tokens match before the first difference.

use std::path::{Path, PathBuf};

use confidant_model::bloom::Bloom;
use confidant_model::generate::{argmax, greedy_ids};
use confidant_model::{load_model, Dtype};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Model directory (config.json and model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Reference file (cases of input ids, last-position logits, 12-token greedy continuation).
    #[arg(long, value_name = "FILE")]
    reference: Option<PathBuf>,
    /// Dtypes to measure against f32 (comma-separated; empty for none).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "bf16,int8")]
    quality: Vec<Dtype>,
    /// Also measure over this text, in chunks of `--chunk` tokens (needs `--tokenizer`).
    #[arg(long, value_name = "FILE", requires = "tokenizer")]
    text: Option<PathBuf>,
    /// The tokenizer for `--text` (tokenizer.json).
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Tokens per text chunk.
    #[arg(long, default_value_t = 128)]
    chunk: usize,
    /// Text chunks measured.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
}

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

/// Runs the check; Ok(0) when every reference case passes, Ok(1) when one does not.
pub fn run(args: &CheckArgs) -> Result<u8, String> {
    let f32_model = load_model(&args.model, Dtype::F32).map_err(|e| e.to_string())?;
    let mut report = json!({});
    let mut sequences: Vec<Vec<i64>> = Vec::new();
    let mut passed = true;
    if let Some(path) = &args.reference {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let reference: Reference =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        report = check(&f32_model, &reference).map_err(|e| e.to_string())?;
        passed = report["passed"] == true;
        sequences.extend(reference.cases.iter().map(|c| c.input_ids.clone()));
    }
    if let Some(path) = &args.text {
        sequences.extend(text_chunks(args, path)?);
    }
    let sequences: Vec<Vec<i64>> = sequences.into_iter().filter(|s| s.len() >= 2).collect();
    if !args.quality.is_empty() && !sequences.is_empty() {
        let mut quality = serde_json::Map::new();
        for &dtype in &args.quality {
            let model = load_model(&args.model, dtype).map_err(|e| e.to_string())?;
            let q = measure(&f32_model, &model, &sequences).map_err(|e| e.to_string())?;
            quality.insert(dtype.name().into(), q);
        }
        report["quality"] = serde_json::Value::Object(quality);
        report["quality_sequences"] = json!(sequences.len());
    }
    println!("{report}");
    Ok(if passed { 0 } else { 1 })
}

fn text_chunks(args: &CheckArgs, path: &Path) -> Result<Vec<Vec<i64>>, String> {
    let tokenizer_path = args
        .tokenizer
        .as_deref()
        .ok_or("--text needs --tokenizer")?;
    let tokenizer = confidant_model::tokenizer::Tokenizer::from_file(tokenizer_path)
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let ids = tokenizer.encode(&text).map_err(|e| e.to_string())?;
    Ok(ids
        .chunks_exact(args.chunk.max(2))
        .take(args.chunks)
        .map(<[i64]>::to_vec)
        .collect())
}

fn check(
    model: &Bloom,
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

/// Log-softmax of `logits` in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = logits.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&v| f64::from(v) - log_sum).collect()
}

/// Teacher-forced logits after each position from the middle of `ids` on.
fn scored_logits(model: &Bloom, ids: &[i64]) -> Result<Vec<Vec<f32>>, confidant_model::ModelError> {
    let half = ids.len() / 2;
    let mut cache = model.new_cache();
    cache.reserve(ids.len())?;
    let mut out = vec![model.forward(&ids[..half], &mut cache)?];
    for &id in &ids[half..ids.len() - 1] {
        out.push(model.forward(&[id], &mut cache)?);
    }
    Ok(out)
}

fn measure(
    reference: &Bloom,
    model: &Bloom,
    sequences: &[Vec<i64>],
) -> Result<serde_json::Value, confidant_model::ModelError> {
    const GREEDY: usize = 32;
    let (mut positions, mut same_top1) = (0usize, 0usize);
    let (mut kld_sum, mut kld_max, mut max_abs) = (0f64, 0f64, 0f64);
    let (mut err2, mut ref2) = (0f64, 0f64);
    let (mut greedy_total, mut greedy_same, mut prefix_sum) = (0usize, 0usize, 0usize);
    for ids in sequences {
        let want = scored_logits(reference, ids)?;
        let got = scored_logits(model, ids)?;
        for (w, g) in want.iter().zip(&got) {
            positions += 1;
            same_top1 += usize::from(argmax(w) == argmax(g));
            let (lw, lg) = (log_softmax(w), log_softmax(g));
            let kld: f64 = lw.iter().zip(&lg).map(|(a, b)| a.exp() * (a - b)).sum();
            kld_sum += kld;
            kld_max = kld_max.max(kld);
            for (a, b) in w.iter().zip(g) {
                let d = f64::from(a - b);
                max_abs = max_abs.max(d.abs());
                err2 += d * d;
                ref2 += f64::from(*a) * f64::from(*a);
            }
        }
        let context = &ids[..ids.len() / 2];
        let a = greedy_ids(reference, context, GREEDY)?;
        let b = greedy_ids(model, context, GREEDY)?;
        greedy_total += GREEDY;
        greedy_same += a.iter().zip(&b).filter(|(x, y)| x == y).count();
        prefix_sum += a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    }
    Ok(json!({
        "positions": positions,
        "top1_agreement": same_top1 as f64 / positions.max(1) as f64,
        "mean_kld": kld_sum / positions.max(1) as f64,
        "max_kld": kld_max,
        "max_abs_logit_diff": max_abs,
        "nmse": err2 / ref2.max(f64::MIN_POSITIVE),
        "greedy_token_agreement": greedy_same as f64 / greedy_total.max(1) as f64,
        "greedy_mean_matching_prefix": prefix_sum as f64 / sequences.len().max(1) as f64,
        "greedy_tokens": GREEDY,
    }))
}
