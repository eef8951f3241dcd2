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
    let attention = if only.is_none_or(|o| o == "attention") {
        prefix_attention()
    } else {
        Vec::new()
    };
    println!(
        "{}",
        json!({ "isa": kernels::isa().name(), "threads": threads,
                "read_bandwidth_gb_per_s": bandwidth / 1e9, "products": results,
                "attention": attention })
    );
    Ok(0)
}

/// One layer's attention (16 heads of 64, one thread) of a question chunk and of a decoding token
/// over a shared system prompt of bloom-560m's 2 KiB (1,305 tokens, laid out per head as at boot,
/// in f32 and in bf16, in bf16 also with the keys ALiBi silences left out): what a long system
/// prompt adds to a turn, per layer.
fn prefix_attention() -> Vec<serde_json::Value> {
    use confidant_model::kernels::{self, Keys, KvSegment, Values, KEY_TILE};
    let (nh, hd, prefix) = (16usize, 64usize, 1305usize);
    let width = nh * hd;
    let stride = prefix.next_multiple_of(KEY_TILE);
    // Deterministic values in ±1.3: keys and queries of norm about 6, as the bench model's
    // (so the scaled queries' about 0.75), which is what decides how many keys are silent.
    let fill = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2_654_435_761 + seed) % 1000) as f32 / 1000.0 - 0.5) * 2.6)
            .collect()
    };
    let (keys, values) = (fill(prefix * width, 1), fill(prefix * width, 2));
    let mut kt = vec![0f32; width * stride];
    kernels::transpose_keys(&keys, prefix, (width, hd), stride, &mut kt);
    let mut pv = vec![0f32; prefix * width];
    kernels::values_per_head(&values, prefix, (width, hd), &mut pv);
    let mut ktb = vec![0u16; width * stride];
    kernels::transpose_keys_bf16(&keys, prefix, (width, hd), stride, &mut ktb);
    let mut pvb = vec![0u16; kernels::paired(prefix) * width];
    kernels::values_per_head_bf16(&values, prefix, (width, hd), &mut pvb);
    // Norms no bound admits: the kernels over every key, as a prompt whose far keys still count.
    let every_key = vec![f32::INFINITY; nh * stride / KEY_TILE];
    let norms = kernels::key_norms_bf16(&ktb, hd, stride);
    let layouts = [
        (
            "f32",
            Keys::Transposed { kt: &kt, stride },
            Values::PerHead {
                v: &pv,
                positions: prefix,
            },
        ),
        (
            "bf16",
            Keys::TransposedBf16 {
                kt: &ktb,
                stride,
                norms: &every_key,
            },
            Values::PerHeadBf16 {
                v: &pvb,
                positions: prefix,
            },
        ),
        (
            "bf16_silent_keys_left_out",
            Keys::TransposedBf16 {
                kt: &ktb,
                stride,
                norms: &norms,
            },
            Values::PerHeadBf16 {
                v: &pvb,
                positions: prefix,
            },
        ),
    ];
    let slopes: Vec<f32> = confidant_model::bloom::alibi_slopes(nh)
        .into_iter()
        .map(|s| s as f32)
        .collect();
    let mut results = Vec::new();
    for (name, k, v) in layouts {
        for n in [1usize, 20] {
            let (own_k, own_v, q) = (fill(n * width, 3), fill(n * width, 4), fill(n * width, 5));
            let segments = [
                KvSegment { k, v, len: prefix },
                KvSegment {
                    k: Keys::Rows(&own_k),
                    v: Values::Rows(&own_v),
                    len: n,
                },
            ];
            let mut out = vec![0f32; n * width];
            let mut scratch = Vec::new();
            let mut once = || {
                if n == 1 {
                    let input = kernels::AttentionInput {
                        q: &q,
                        segments: &segments,
                        slopes: &slopes,
                        head_dim: hd,
                    };
                    kernels::decode_attention(&input, &mut out, &mut scratch);
                } else {
                    kernels::prefill_attention_heads(
                        &q,
                        &segments,
                        n,
                        &slopes,
                        0..nh,
                        hd,
                        &mut out,
                    );
                }
            };
            once();
            let reps = 20;
            let t = Instant::now();
            for _ in 0..reps {
                once();
            }
            let secs = t.elapsed().as_secs_f64() / reps as f64;
            // q·kᵀ and p·v: two multiply-adds per query, position, head and dimension.
            let flops = 4.0 * (n * (prefix + n) * width) as f64;
            results.push(json!({
                "prefix_layout": name, "queries": n, "prefix_tokens": prefix, "threads": 1,
                "ms_per_layer": secs * 1e3, "gflop_per_s": flops / secs / 1e9,
            }));
        }
    }
    results
}

/// `bench-engine`: the inference engine as the enclave runs it — time to first token alone, while
/// other answers stream, and after a long system prompt.
#[derive(Debug, clap::Args)]
pub struct EngineBenchArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    #[arg(long)]
    threads: Option<usize>,
    /// Answers already streaming when the measured question arrives.
    #[arg(long, default_value_t = 7)]
    others: usize,
    /// Bytes of system prompt for the system-prompt measurement.
    #[arg(long, default_value_t = 2048)]
    system_bytes: usize,
    /// Runs of each measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// An engine whose events arrive with the time they were reported.
struct Timed {
    engine: confidant_model::engine::Engine,
    rx: std::sync::mpsc::Receiver<(Instant, confidant_model::engine::Event)>,
    /// Tokens of the system prompt the engine computed at spawn.
    system_tokens: usize,
}

fn timed_engine(args: &EngineBenchArgs, system: &str, max_batch: usize) -> Result<Timed, String> {
    use confidant_model::engine::{Engine, EngineConfig};
    use confidant_model::template::ChatTemplate;
    use confidant_model::LoadedModel;
    let model = LoadedModel::load(&args.model, args.dtype).map_err(|e| e.to_string())?;
    let template = ChatTemplate::new(system);
    let system_tokens = match template.system_prefix() {
        "" => 0,
        prefix => model
            .tokenizer
            .encode(prefix)
            .map_err(|e| e.to_string())?
            .len(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = Engine::spawn(
        model,
        EngineConfig {
            threads: args.threads,
            max_batch,
            ..EngineConfig::new(template, 8192, 4 << 30)
        },
        Box::new(move |e| {
            let _ = tx.send((Instant::now(), e));
        }),
    )
    .map_err(|e| e.to_string())?;
    Ok(Timed {
        engine,
        rx,
        system_tokens,
    })
}

fn ask(id: u64, text: &str, max_new_tokens: usize) -> confidant_model::engine::Job {
    confidant_model::engine::Job {
        id,
        conversation: id,
        first_turn: true,
        keep: false,
        text: text.to_string().into(),
        params: confidant_model::generate::GenerateParams {
            max_new_tokens,
            ..Default::default()
        },
    }
}

impl Timed {
    /// Waits for job `id`'s first text (or its end); returns when it came.
    fn first_text(&self, id: u64) -> Result<Instant, String> {
        use confidant_model::engine::Event;
        loop {
            let (at, e) = self
                .rx
                .recv_timeout(std::time::Duration::from_secs(600))
                .map_err(|_| "the engine went quiet".to_string())?;
            match e {
                Event::Text { job, .. } | Event::Done { job, .. } if job == id => return Ok(at),
                Event::Failed { job, failure } if job == id => {
                    return Err(format!("job {job} failed: {failure:?}"))
                }
                _ => {}
            }
        }
    }

    /// Waits until job `id` ends.
    fn end(&self, id: u64) -> Result<(), String> {
        use confidant_model::engine::Event;
        loop {
            let (_, e) = self
                .rx
                .recv_timeout(std::time::Duration::from_secs(600))
                .map_err(|_| "the engine went quiet".to_string())?;
            match e {
                Event::Done { job, .. } | Event::Failed { job, .. } if job == id => return Ok(()),
                _ => {}
            }
        }
    }
}

const QUESTION: &str = "What does my health plan cover when I see a specialist?";

/// Time to first token of one question on an idle engine (an answer of one token: text held back
/// for a possible stop string would otherwise delay the first text by steps).
fn ttft_alone(t: &Timed, id: u64) -> Result<f64, String> {
    let start = Instant::now();
    t.engine
        .submit(ask(id, QUESTION, 1))
        .map_err(|e| e.to_string())?;
    let first = t.first_text(id)?;
    t.end(id)?;
    Ok((first - start).as_secs_f64() * 1e3)
}

pub fn run_engine(args: &EngineBenchArgs) -> Result<u8, String> {
    use std::sync::atomic::Ordering;
    let repeat = args.repeat.max(1);
    let mut next_id = 1u64;
    let mut id = || {
        next_id += 1;
        next_id
    };

    // Alone, and as the first turn after a system prompt of `system_bytes` (computed at spawn, in
    // a second engine): alternately, so both see the same state of a noisy machine.
    let sentence =
        "You answer members' questions about their health plan: coverage, costs, claims. ";
    let system: String = sentence.chars().cycle().take(args.system_bytes).collect();
    let t = timed_engine(args, "", args.others + 1)?;
    let ts = timed_engine(args, &system, 1)?;
    ttft_alone(&t, id())?; // warm-up
    ttft_alone(&ts, id())?;
    let (mut alone, mut with_system) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        alone.push(ttft_alone(&t, id())?);
        with_system.push(ttft_alone(&ts, id())?);
    }
    let (alone, with_system) = (median(alone), median(with_system));
    let prefix_bytes = ts.engine.stats().kv_bytes.load(Ordering::Acquire);
    let system_tokens = ts.system_tokens;
    drop(ts);

    // While `others` answers stream (decode steps timed from the engine's counter).
    let mut loaded = Vec::new();
    let mut step_ms = Vec::new();
    for _ in 0..repeat {
        let others: Vec<u64> = (0..args.others).map(|_| id()).collect();
        for &o in &others {
            t.engine
                .submit(ask(o, "Tell me a long story about insurance.", 2000))
                .map_err(|e| e.to_string())?;
        }
        // All streaming: every other has produced text; then the decode step time over a window.
        for &o in &others {
            t.first_text(o)?;
        }
        let (s0, t0) = (
            t.engine.stats().steps.load(Ordering::Acquire),
            Instant::now(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let (s1, t1) = (
            t.engine.stats().steps.load(Ordering::Acquire),
            Instant::now(),
        );
        step_ms.push((t1 - t0).as_secs_f64() * 1e3 / (s1 - s0).max(1) as f64);
        let q = id();
        let start = Instant::now();
        t.engine
            .submit(ask(q, QUESTION, 1))
            .map_err(|e| e.to_string())?;
        loaded.push((t.first_text(q)? - start).as_secs_f64() * 1e3);
        for &o in &others {
            t.engine.cancel(o);
        }
        t.end(q)?;
        // Let the cancellations land.
        while t.engine.stats().jobs.load(Ordering::Acquire) > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        while t.rx.try_recv().is_ok() {}
    }
    drop(t);
    let (loaded, step) = (median(loaded), median(step_ms));

    println!(
        "{}",
        json!({
            "dtype": args.dtype.name(),
            "others": args.others,
            "ttft_alone_ms": alone,
            "decode_step_ms_with_others": step,
            "ttft_while_others_stream_ms": loaded,
            // The goal: at most its prefill (the time to first token alone) plus 2 decode steps.
            "ttft_bound_ms": alone + 2.0 * step,
            "ttft_within_bound": loaded <= alone + 2.0 * step,
            "system_prompt_bytes": args.system_bytes,
            "system_prompt_kv_mb": prefix_bytes as f64 / (1 << 20) as f64,
            "system_prompt_tokens": system_tokens,
            "ttft_after_system_prompt_ms": with_system,
            // The goal: at most 1.2 × the same turn without one.
            "system_prompt_ttft_ratio": with_system / alone,
        })
    );
    Ok(0)
}
