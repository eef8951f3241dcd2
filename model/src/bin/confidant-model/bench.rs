//! `confidant-model bench`: prefill time, decode speed and memory of a checkpoint (no tokenizer).

use std::path::PathBuf;
use std::time::Instant;

use crate::rss;
use confidant_model::{load_model, Dtype, KvCache};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model directory (config.json and model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Tokens to decode after the prompt.
    #[arg(long = "new", default_value_t = 64)]
    new_tokens: usize,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// libtorch intra-op threads [default: libtorch's choice].
    #[arg(long)]
    threads: Option<i32>,
    /// Also measure memory bandwidth (a 1 GiB copy) and report decoding against it.
    #[arg(long)]
    bandwidth: bool,
    /// Print JSON (the only output format; accepted for scripts that pass it).
    #[arg(long)]
    json: bool,
}

/// Copy bandwidth in bytes/s over a buffer far larger than the caches (read + write counted).
fn measure_bandwidth() -> f64 {
    let n = 1usize << 30;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * n as f64 / best
}

pub fn run(args: &BenchArgs) -> Result<u8, String> {
    if args.prompt_len == 0 || args.new_tokens == 0 {
        return Err("--prompt-len and --new must be at least 1".into());
    }
    if let Some(t) = args.threads {
        if t < 1 {
            return Err("--threads must be at least 1".into());
        }
        tch::set_num_threads(t);
    }
    let rss_before = rss::rss_mb().unwrap_or(0.0);
    let t = Instant::now();
    let model = load_model(&args.model, args.dtype).map_err(|e| e.to_string())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let peak_after_load = rss::peak_rss_mb().unwrap_or(0.0);
    let weights_bytes = std::fs::metadata(args.model.join("model.safetensors"))
        .map(|m| m.len())
        .unwrap_or(0);

    let vocab = model.config.vocab_size as i64;
    let prompt: Vec<i64> = (0..args.prompt_len as i64)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut cache = KvCache::new(model.layers());
    let t = Instant::now();
    let mut logits = model
        .forward(&prompt, &mut cache)
        .map_err(|e| e.to_string())?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut per_token = Vec::with_capacity(args.new_tokens);
    for _ in 0..args.new_tokens {
        let t = Instant::now();
        let next = logits.argmax(0, false).int64_value(&[]);
        logits = model
            .forward(&[next], &mut cache)
            .map_err(|e| e.to_string())?;
        per_token.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = per_token.iter().sum();
    let mut sorted = per_token.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let element = match args.dtype {
        Dtype::F32 => 4.0,
        Dtype::Bf16 => 2.0,
    };
    let c = &model.config;
    let params =
        (c.vocab_size * c.hidden_size + c.n_layer * 12 * c.hidden_size * c.hidden_size) as f64;
    let bytes_per_token = params * element;
    let mut out = json!({
        "model": args.model.display().to_string(),
        "dtype": format!("{:?}", args.dtype).to_lowercase(),
        "threads": tch::get_num_threads(),
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "load_ms": load_ms,
        "prefill_ms": prefill_ms,
        "decode_tokens_per_s": args.new_tokens as f64 / total,
        "decode_ms_median": median * 1e3,
        "weights_file_mb": weights_bytes as f64 / (1 << 20) as f64,
        "rss_before_load_mb": rss_before,
        "peak_rss_after_load_mb": peak_after_load,
        "peak_rss_mb": rss::peak_rss_mb().unwrap_or(0.0),
        "bytes_per_token_mb": bytes_per_token / (1 << 20) as f64,
    });
    if args.bandwidth {
        let bw = measure_bandwidth();
        out["memory_bandwidth_gb_s"] = json!(bw / 1e9);
        out["bandwidth_bound_tokens_per_s"] = json!(bw / bytes_per_token);
        out["fraction_of_bandwidth_bound"] =
            json!((args.new_tokens as f64 / total) / (bw / bytes_per_token));
    }
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
