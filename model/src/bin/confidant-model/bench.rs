//! `confidant-model bench`: prefill time, decode speed alone and batched, memory, and the fraction
//! of the machine's read bandwidth each reaches (no tokenizer needed).

use std::path::PathBuf;
use std::time::Instant;

use crate::rss;
use confidant_model::bloom::{Scratch, Segment};
use confidant_model::generate::argmax;
use confidant_model::{kernels, load_model, Bloom, Dtype, KvCache};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model directory (config.json and model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompt lengths in tokens to time prefill on (comma-separated); the first one starts the
    /// decoding runs.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    prompt_len: Vec<usize>,
    /// Tokens to decode after the prompt.
    #[arg(long = "new", default_value_t = 64)]
    new_tokens: usize,
    /// Sequence counts to decode together (comma-separated; 1 is always run).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    batch: Vec<usize>,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Threads for the kernels and libtorch [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// The KV memory budget the peak resident set is held against (the enclave's default).
    #[arg(long, value_name = "MIB", default_value_t = 1536)]
    kv_budget_mib: u64,
    /// Print JSON (the only output format; accepted for scripts that pass it).
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A deterministic prompt, different per `seed`.
fn prompt(len: usize, vocab: usize, seed: usize) -> Vec<i64> {
    (0..len)
        .map(|i| ((i * 7919 + 13 + seed * 104_729) % vocab) as i64)
        .collect()
}

/// Decodes `new` tokens for each of `b` sequences together; returns the median step time.
fn decode_batch(model: &Bloom, b: usize, prompt_len: usize, new: usize) -> Result<f64, String> {
    let vocab = model.config.vocab_size;
    let mut caches: Vec<KvCache> = (0..b).map(|_| model.new_cache()).collect();
    let mut next = Vec::with_capacity(b);
    for (s, cache) in caches.iter_mut().enumerate() {
        cache
            .reserve(prompt_len + new + 1)
            .map_err(|e| e.to_string())?;
        let logits = model
            .forward(&prompt(prompt_len, vocab, s), cache)
            .map_err(|e| e.to_string())?;
        next.push([argmax(&logits) as i64]);
    }
    let mut scratch = Scratch::default();
    let mut steps = Vec::with_capacity(new);
    for _ in 0..new {
        let t = Instant::now();
        let mut segs: Vec<Segment<'_>> = caches
            .iter_mut()
            .zip(&next)
            .map(|(cache, tok)| Segment {
                cache,
                tokens: tok,
                logits: true,
            })
            .collect();
        let out = model.step(&mut segs, &mut scratch);
        let mut chosen = Vec::with_capacity(b);
        for i in 0..b {
            match out.result(i) {
                Ok(Some(l)) => chosen.push([argmax(l) as i64]),
                _ => return Err("a decoding step failed".into()),
            }
        }
        drop(out);
        next = chosen;
        steps.push(t.elapsed().as_secs_f64());
    }
    Ok(median(steps))
}

pub fn run(args: &BenchArgs) -> Result<u8, String> {
    if args.prompt_len.contains(&0) || args.prompt_len.is_empty() || args.new_tokens == 0 {
        return Err("--prompt-len and --new must be at least 1".into());
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    // The roofline first: its buffer must not count in the model's peak.
    let bandwidth = {
        let pool = kernels::pool(threads);
        kernels::read_bandwidth(&pool, 1 << 30, 5)
    };
    let peak_reset = rss::reset_peak();
    let rss_before = rss::rss_mb().unwrap_or(0.0);
    let t = Instant::now();
    let mut model = load_model(&args.model, args.dtype).map_err(|e| e.to_string())?;
    model.set_threads(threads);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak_after_load = rss::peak_rss_mb().unwrap_or(0.0);
    let vocab = model.config.vocab_size;
    let repeat = args.repeat.max(1);

    // Warm up: touch every weight once (mapped pages, the threads, the allocator).
    let mut cache = model.new_cache();
    model
        .forward(&prompt(8, vocab, 99), &mut cache)
        .map_err(|e| e.to_string())?;

    let mut prefill = Vec::new();
    for &len in &args.prompt_len {
        let mut times = Vec::with_capacity(repeat);
        for r in 0..repeat {
            let mut cache = model.new_cache();
            cache.reserve(len).map_err(|e| e.to_string())?;
            let p = prompt(len, vocab, r);
            let t = Instant::now();
            model.forward(&p, &mut cache).map_err(|e| e.to_string())?;
            times.push(t.elapsed().as_secs_f64());
        }
        let secs = median(times);
        prefill.push(json!({
            "prompt_len": len,
            "ms": secs * 1e3,
            "tokens_per_s": len as f64 / secs,
        }));
    }

    let bytes_per_step = model.bytes_per_step() as f64;
    let mut batches = Vec::new();
    let mut kv_peak = 0u64;
    let mut counts = vec![1];
    counts.extend(args.batch.iter().copied().filter(|&b| b > 1));
    for b in counts {
        kv_peak = kv_peak.max(
            b as u64
                * (args.prompt_len[0] + args.new_tokens + 1) as u64
                * model.kv_bytes_per_token(),
        );
        let step = median(
            (0..repeat)
                .map(|_| decode_batch(&model, b, args.prompt_len[0], args.new_tokens))
                .collect::<Result<Vec<_>, _>>()?,
        );
        batches.push(json!({
            "sequences": b,
            "step_ms": step * 1e3,
            "tokens_per_s": b as f64 / step,
            "roofline_fraction": bytes_per_step / step / bandwidth,
        }));
    }
    let peak = rss::peak_rss_mb().unwrap_or(0.0);
    let out = json!({
        "model": args.model.display().to_string(),
        "dtype": args.dtype.name(),
        "isa": kernels::isa().name(),
        "threads": threads,
        "load_ms": load_ms,
        "weights_mb": model.weight_bytes() as f64 / (1 << 20) as f64,
        "bytes_per_step_mb": bytes_per_step / (1 << 20) as f64,
        "read_bandwidth_gb_per_s": bandwidth / 1e9,
        "prefill": prefill,
        "decode": batches,
        "rss_before_load_mb": rss_before,
        "peak_rss_after_load_mb": peak_after_load,
        "peak_rss_mb": peak,
        "peak_rss_measured": peak_reset,
        "kv_peak_mb": kv_peak as f64 / (1 << 20) as f64,
        // The goal: peak ≤ 1.1 × (weights as loaded + the KV budget); and against the KV memory
        // this run used, which is stricter.
        "peak_rss_ratio": peak * (1 << 20) as f64
            / (model.weight_bytes() + (args.kv_budget_mib << 20)) as f64,
        "peak_rss_ratio_to_kv_used": peak * (1 << 20) as f64 / (model.weight_bytes() + kv_peak) as f64,
    });
    println!("{out}");
    Ok(0)
}

/// `bench-generate`: the in-process baseline for the end-to-end overhead: the same prompt formatting,
/// generation and streaming callback the server uses, without encryption or transport.
#[derive(Debug, clap::Args)]
pub struct GenerateBenchArgs {
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long = "new", default_value_t = 32)]
    new_tokens: usize,
    #[arg(long, default_value_t = 20)]
    repeat: usize,
    #[arg(long)]
    threads: Option<i32>,
}

pub fn run_generate(args: &GenerateBenchArgs) -> Result<u8, String> {
    use confidant_model::generate::{generate, Conversation, GenerateParams};
    use confidant_model::template::ChatTemplate;
    use confidant_model::LoadedModel;
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let m = LoadedModel::load(&args.model, Dtype::F32).map_err(|e| e.to_string())?;
    let params = GenerateParams {
        max_new_tokens: args.new_tokens,
        stop: ChatTemplate::stop_strings(),
        ..Default::default()
    };
    let template = ChatTemplate::default();
    let mut firsts = Vec::new();
    let mut totals = Vec::new();
    let mut tokens = 0;
    for _ in 0..args.repeat.max(1) {
        let t = Instant::now();
        let ids = m
            .turn_ids(&template, &args.prompt, true)
            .map_err(|e| e.to_string())?;
        let mut conv = Conversation::new(&m.model);
        let mut first = None;
        let out = generate(
            &m.model,
            &m.tokenizer,
            &mut conv,
            &ids,
            &params,
            m.eos,
            &mut |_| {
                first.get_or_insert_with(|| t.elapsed().as_secs_f64() * 1e3);
                true
            },
        )
        .map_err(|e| e.to_string())?;
        tokens = out.generated_tokens.len();
        firsts.push(first.unwrap_or(f64::NAN));
        totals.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        json!({
            "first_chunk_ms": median(&mut firsts),
            "total_ms": median(&mut totals),
            "generated_tokens": tokens,
            "repeat": args.repeat,
        })
    );
    Ok(0)
}

/// Kernels against libtorch: GB/s of weights streamed for one token and for 16, per dtype.
pub fn run_kernels(
    threads: usize,
    token_counts: &[usize],
    only: Option<&str>,
) -> Result<u8, String> {
    use confidant_model::kernels::{self, Matrix};
    use tch::{Kind, Tensor};
    tch::set_num_threads(threads as i32);
    let pool = kernels::pool(threads);
    let bandwidth = kernels::read_bandwidth(&pool, 1 << 30, 5);
    // The four products of a layer, then the tied lm_head.
    let shapes: [(usize, usize, &str); 5] = [
        (3072, 1024, "qkv"),
        (1024, 1024, "dense"),
        (4096, 1024, "h_to_4h"),
        (1024, 4096, "4h_to_h"),
        (250_880, 1024, "lm_head"),
    ];
    let mut results = Vec::new();
    for (rows, cols, name) in shapes {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let w = Tensor::randn([rows as i64, cols as i64], (Kind::Float, tch::Device::Cpu)) * 0.02;
        for m in [Matrix::f32(&w), Matrix::bf16(&w), Matrix::int8(&w)] {
            let m = m.map_err(|e| e.to_string())?;
            for &tokens in token_counts {
                let x = vec![0.5f32; tokens * cols];
                let mut y = vec![0f32; tokens * rows];
                let reps = if name == "lm_head" || tokens > 64 {
                    3
                } else {
                    30
                };
                kernels::matmul(&pool, &x, tokens, &m, None, &mut y);
                let t = Instant::now();
                for _ in 0..reps {
                    kernels::matmul(&pool, &x, tokens, &m, None, &mut y);
                }
                let secs = t.elapsed().as_secs_f64() / reps as f64;
                // libtorch on the same product, in the matrix's own dtype.
                let wt = m.to_f32().to_kind(match m.dtype() {
                    "bf16" => Kind::BFloat16,
                    _ => Kind::Float,
                });
                let xt = Tensor::ones([tokens as i64, cols as i64], (wt.kind(), tch::Device::Cpu));
                let _ = xt.matmul(&wt.tr());
                let t = Instant::now();
                for _ in 0..reps {
                    let _ = xt.matmul(&wt.tr());
                }
                let torch_secs = t.elapsed().as_secs_f64() / reps as f64;
                results.push(json!({
                    "product": name, "dtype": m.dtype(), "tokens": tokens,
                    "ms": secs * 1e3, "weights_gb_per_s": m.bytes() as f64 / secs / 1e9,
                    "roofline_fraction": m.bytes() as f64 / secs / bandwidth,
                    "libtorch_ms": torch_secs * 1e3,
                }));
            }
        }
    }
    println!(
        "{}",
        json!({ "isa": kernels::isa().name(), "threads": threads,
                "read_bandwidth_gb_per_s": bandwidth / 1e9, "products": results })
    );
    Ok(0)
}
