//! BLOOM on libtorch: the shared reference, cache reuse, streaming, stopping, sampling and the worker.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::OnceLock;

use confidant_model::cache::KvPrecision;
use confidant_model::engine::{Engine, EngineConfig, Event, Failure, Job};
use confidant_model::generate::{generate, greedy_ids, Conversation, Finish, GenerateParams};
use confidant_model::template::ChatTemplate;
use confidant_model::testing::{process_scratch_dir, write_demo};
use confidant_model::tokenizer::StreamDecoder;
use confidant_model::{load_model, Dtype, LoadedModel};
use tch::Tensor;

fn reference_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-vectors/bloom")
}

fn demo_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = process_scratch_dir(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
        write_demo(dir.path()).unwrap();
        dir
    })
    .path()
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn shared_reference_logits_and_greedy_continuations() {
    let text = std::fs::read_to_string(reference_dir().join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tol = reference["tolerance_abs"].as_f64().unwrap();
    let model = load_model(&reference_dir(), Dtype::F32).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let ids: Vec<i64> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(case["last_logits"].clone()).unwrap();
        let mut cache = model.new_cache();
        let got = model.forward(&ids, &mut cache).unwrap();
        assert!(max_diff(&got, &want) <= tol);
        let greedy: Vec<i64> = serde_json::from_value(case["greedy_next_12"].clone()).unwrap();
        assert_eq!(greedy_ids(&model, &ids, 12).unwrap(), greedy);
    }
}

#[test]
fn a_shared_system_prompt_gives_the_logits_of_one_pass() {
    // A prefix over several tiles of transposed keys, the last partial; a question long enough for
    // the prompt-chunk tiles (59 × 209 positions, past the query-by-query path; a partial tile of
    // queries), then decoding steps. f32 keeps the prefix in f32 and must match to rounding; bf16
    // and int8 keep it in bf16 where the CPU multiplies bf16 pairs, within bf16's precision (int8's
    // activations, quantized per group, amplify the difference: 2e-3 and 9e-3 measured).
    for (dtype, tolerance) in [(Dtype::F32, 1e-4), (Dtype::Bf16, 5e-3), (Dtype::Int8, 2e-2)] {
        let model = load_model(demo_dir(), dtype).unwrap();
        let ids: Vec<i64> = (0..215).map(|i| (i * 37 + 5) % 700).collect();
        let (system, question, answer) = (&ids[..150], &ids[150..209], &ids[209..]);
        let mut whole = model.new_cache();
        let mut want = vec![model.forward(&ids[..209], &mut whole).unwrap()];
        let mut shared = model.new_cache();
        let _ = model.forward(system, &mut shared).unwrap();
        let precision = model.prefix_precision();
        if dtype == Dtype::F32 {
            assert_eq!(precision, KvPrecision::F32);
        }
        let prefix = std::sync::Arc::new(
            shared
                .into_prefix(system.to_vec(), model.config.n_head, precision)
                .unwrap(),
        );
        assert_eq!(prefix.precision(), precision);
        let mut cache = confidant_model::cache::KvCache::with_prefix(prefix);
        let mut got = vec![model.forward(question, &mut cache).unwrap()];
        for &id in answer {
            want.push(model.forward(&[id], &mut whole).unwrap());
            got.push(model.forward(&[id], &mut cache).unwrap());
        }
        for (step, (got, want)) in got.iter().zip(&want).enumerate() {
            let diff = max_diff(got, want);
            assert!(diff < tolerance, "{dtype:?} step {step}: {diff}");
        }
    }
}

#[test]
fn cached_decoding_equals_recomputing_the_prefix() {
    let model = load_model(demo_dir(), Dtype::F32).unwrap();
    let ids: Vec<i64> = (0..20).map(|i| (i * 37 + 5) % 700).collect();
    let mut full = model.new_cache();
    let whole = model.forward(&ids, &mut full).unwrap();
    let mut inc = model.new_cache();
    let _ = model.forward(&ids[..7], &mut inc).unwrap();
    let _ = model.forward(&ids[7..15], &mut inc).unwrap();
    let stepped = model.forward(&ids[15..], &mut inc).unwrap();
    assert_eq!(inc.len(), 20);
    assert!(
        max_diff(&whole, &stepped) < 1e-4,
        "{}",
        max_diff(&whole, &stepped)
    );
}

#[test]
fn a_second_turn_reuses_the_cache_and_matches_a_fresh_run_over_the_whole_history() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let params = GenerateParams {
        max_new_tokens: 6,
        ..GenerateParams::default()
    };
    let template = ChatTemplate::default();
    let turn1 = m
        .turn_ids(&template, "What is a deductible?", true)
        .unwrap();
    let turn2 = m.turn_ids(&template, "And coinsurance?", false).unwrap();
    let mut conv = Conversation::new(&m.model);
    let out1 = generate(
        &m.model,
        &m.tokenizer,
        &mut conv,
        &turn1,
        &params,
        None,
        &mut |_| true,
    )
    .unwrap();
    let cached_before = conv.cache.len();
    let out2 = generate(
        &m.model,
        &m.tokenizer,
        &mut conv,
        &turn2,
        &params,
        None,
        &mut |_| true,
    )
    .unwrap();
    assert!(conv.cache.len() > cached_before);
    // Fresh: the whole history (turn 1, its answer, turn 2) in one prompt.
    let mut history = turn1.clone();
    history.extend(&out1.generated_tokens);
    history.extend(&turn2);
    let mut fresh = Conversation::new(&m.model);
    let out_fresh = generate(
        &m.model,
        &m.tokenizer,
        &mut fresh,
        &history,
        &params,
        None,
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(out2.generated_tokens, out_fresh.generated_tokens);
}

#[test]
fn streamed_text_never_splits_a_character() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let text = "héllo wörld — ümlaut ✓ 🙂 日本 done";
    let ids = m.tokenizer.encode(text).unwrap();
    let mut dec = StreamDecoder::default();
    let mut pieces = Vec::new();
    for id in &ids {
        if let Some(p) = dec.push(&m.tokenizer, *id).unwrap() {
            pieces.push(p);
        }
    }
    if let Some(p) = dec.finish(&m.tokenizer).unwrap() {
        pieces.push(p);
    }
    assert!(pieces.len() > 3);
    assert!(pieces.iter().all(|p| !p.contains('\u{fffd}')), "{pieces:?}");
    assert_eq!(pieces.concat(), m.tokenizer.decode(&ids).unwrap());
    // Byte-level tokens inside multi-byte characters exist, so some tokens emitted nothing at once.
    assert!(pieces.len() < ids.len());
}

#[test]
fn stopping_on_length_eos_stop_strings_and_cancellation() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let prompt = m
        .tokenizer
        .encode("Question: How much should I save?")
        .unwrap();
    let run = |params: &GenerateParams, eos: Option<i64>, limit: usize| {
        let mut conv = Conversation::new(&m.model);
        let mut text = String::new();
        let mut calls = 0;
        let out = generate(
            &m.model,
            &m.tokenizer,
            &mut conv,
            &prompt,
            params,
            eos,
            &mut |t| {
                text.push_str(t);
                calls += 1;
                calls < limit
            },
        )
        .unwrap();
        (out, text)
    };
    let greedy = GenerateParams {
        max_new_tokens: 12,
        ..Default::default()
    };
    let (out, text) = run(&greedy, None, usize::MAX);
    assert_eq!(out.finish, Finish::MaxTokens);
    assert_eq!(out.generated_tokens.len(), 12);
    assert_eq!(text, m.tokenizer.decode(&out.generated_tokens).unwrap());

    // EOS: make the first greedy token the end.
    let (eos_out, eos_text) = run(&greedy, Some(out.generated_tokens[0]), usize::MAX);
    assert_eq!(eos_out.finish, Finish::Eos);
    assert!(eos_out.generated_tokens.is_empty() && eos_text.is_empty());

    // A stop string taken from the middle of the greedy text: output ends right before it.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let (s_out, s_text) = run(
        &GenerateParams {
            stop: vec![stop.clone()],
            ..greedy.clone()
        },
        None,
        usize::MAX,
    );
    assert_eq!(s_out.finish, Finish::StopString);
    assert!(
        text.starts_with(&s_text) && !s_text.contains(&stop),
        "{s_text:?} / {stop:?}"
    );

    // The consumer leaves after the first piece: generation stops.
    let (c_out, _) = run(&greedy, None, 1);
    assert_eq!(c_out.finish, Finish::Cancelled);
    assert!(c_out.generated_tokens.len() < 12);
}

#[test]
fn sampling_is_reproducible_from_its_seed() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let prompt = m.tokenizer.encode("Answer:").unwrap();
    let sample = |seed: u64, top_k: Option<usize>, top_p: Option<f32>| {
        let params = GenerateParams {
            max_new_tokens: 10,
            temperature: 1.0,
            top_k,
            top_p,
            seed,
            stop: vec![],
        };
        let mut conv = Conversation::new(&m.model);
        generate(
            &m.model,
            &m.tokenizer,
            &mut conv,
            &prompt,
            &params,
            None,
            &mut |_| true,
        )
        .unwrap()
        .generated_tokens
    };
    assert_eq!(sample(1, None, Some(0.9)), sample(1, None, Some(0.9)));
    assert_ne!(sample(1, None, None), sample(2, None, None));
    let mut conv = Conversation::new(&m.model);
    let greedy = generate(
        &m.model,
        &m.tokenizer,
        &mut conv,
        &prompt,
        &GenerateParams {
            max_new_tokens: 10,
            ..Default::default()
        },
        None,
        &mut |_| true,
    )
    .unwrap()
    .generated_tokens;
    assert_eq!(sample(3, Some(1), None), greedy, "top_k = 1 is greedy");
    assert!(GenerateParams {
        top_p: Some(0.0),
        ..Default::default()
    }
    .validate()
    .is_err());
    assert!(GenerateParams {
        max_new_tokens: 0,
        ..Default::default()
    }
    .validate()
    .is_err());
}

fn job(id: u64, conversation: u64, first_turn: bool, text: &str, max_new_tokens: usize) -> Job {
    Job {
        id,
        conversation,
        first_turn,
        keep: true,
        text: text.to_string().into(),
        params: GenerateParams {
            max_new_tokens,
            ..Default::default()
        },
    }
}

#[test]
fn the_engine_streams_keeps_conversations_and_refuses_beyond_capacity() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let template = ChatTemplate::new("You answer questions about health plans.");
    // In process, for comparison: the same two turns.
    let (mut expect1, mut expect2) = (String::new(), String::new());
    let mut conv = Conversation::new(&m.model);
    let params = GenerateParams {
        max_new_tokens: 8,
        stop: ChatTemplate::stop_strings(),
        ..Default::default()
    };
    for (turn, first, out) in [
        ("What is a copay?", true, &mut expect1),
        ("And a deductible?", false, &mut expect2),
    ] {
        let ids = m.turn_ids(&template, turn, first).unwrap();
        generate(
            &m.model,
            &m.tokenizer,
            &mut conv,
            &ids,
            &params,
            m.eos,
            &mut |t| {
                out.push_str(t);
                true
            },
        )
        .unwrap();
    }

    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let mut gate = Some(gate_rx);
    let engine = Engine::spawn(
        m,
        EngineConfig {
            capacity: 2,
            threads: Some(1),
            ..EngineConfig::new(template, 2048, 1 << 30)
        },
        Box::new(move |e| {
            // The first event blocks until the test opens the gate, so the engine stays busy.
            if let Some(g) = gate.take() {
                let _ = g.recv();
            }
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    engine
        .submit(job(1, 10, true, "What is a copay?", 8))
        .unwrap();
    engine
        .submit(job(2, 20, false, "No such conversation", 8))
        .unwrap();
    assert!(
        engine.submit(job(3, 30, true, "Hi", 8)).is_err(),
        "at capacity"
    );
    gate_tx.send(()).unwrap();
    let mut text = String::new();
    let mut failed = None;
    let mut done = false;
    while !(done && failed.is_some()) {
        match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
            Event::Text { job: 1, text: t } => text.push_str(&t),
            Event::Done { job: 1, .. } => done = true,
            Event::Failed { job: 2, failure } => failed = Some(failure),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, expect1);
    assert_eq!(failed, Some(Failure::UnknownConversation));
    // The conversation's cache is kept: the second turn continues it.
    engine
        .submit(job(4, 10, false, "And a deductible?", 8))
        .unwrap();
    let mut text = String::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
            Event::Text { job: 4, text: t } => text.push_str(&t),
            Event::Done { job: 4, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(text, expect2);
    // A forgotten conversation cannot be continued.
    engine.forget(10);
    engine.submit(job(5, 10, false, "Still there?", 8)).unwrap();
    match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
        Event::Failed { job: 5, failure } => assert_eq!(failure, Failure::UnknownConversation),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(engine.stats().jobs.load(Ordering::Acquire), 0);
}

fn engine(context_tokens: usize, kv_budget_bytes: u64) -> (Engine, mpsc::Receiver<Event>) {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let (tx, rx) = mpsc::channel();
    let engine = Engine::spawn(
        m,
        EngineConfig {
            capacity: 8,
            threads: Some(1),
            ..EngineConfig::new(ChatTemplate::default(), context_tokens, kv_budget_bytes)
        },
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    (engine, rx)
}

/// Events until job `id` ends (its last event is returned), with any evictions on the way.
fn run_to_end(rx: &mpsc::Receiver<Event>, id: u64) -> (Event, Vec<u64>) {
    let mut evicted = Vec::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
            Event::Text { job, .. } if job == id => {}
            Event::Evicted { conversation } => evicted.push(conversation),
            e @ (Event::Done { .. } | Event::Failed { .. }) => return (e, evicted),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_context_limit_is_checked_before_any_model_work() {
    let (engine, rx) = engine(40, 1 << 30);
    // 30 answer tokens leave 10 for the prompt: a long question cannot fit.
    let long = "word ".repeat(50);
    engine.submit(job(1, 1, true, &long, 30)).unwrap();
    match run_to_end(&rx, 1).0 {
        Event::Failed { failure, .. } => {
            assert_eq!(failure, Failure::ContextLimit { limit: 40 })
        }
        other => panic!("{other:?}"),
    }
    engine.submit(job(2, 2, true, "Hi", 8)).unwrap();
    assert!(matches!(run_to_end(&rx, 2).0, Event::Done { .. }));
    // The conversation keeps growing across turns until it would not fit.
    let mut refused = false;
    for turn in 3..20 {
        engine.submit(job(turn, 2, false, "More?", 8)).unwrap();
        match run_to_end(&rx, turn).0 {
            Event::Done { .. } => {}
            Event::Failed {
                failure: Failure::ContextLimit { limit: 40 },
                ..
            } => {
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "a session is bounded by the context limit too");
    assert_eq!(engine.stats().failed_jobs.load(Ordering::Acquire), 0);
}

#[test]
fn a_full_kv_budget_evicts_idle_conversations_oldest_first_then_refuses() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let per_token = m.model.kv_bytes_per_token();
    drop(m);
    // Room for about two conversations of 40 tokens; a context larger than the budget.
    let (engine, rx) = engine(120, per_token * 90);
    for (id, conv) in [(1, 101), (2, 102)] {
        engine
            .submit(job(id, conv, true, "What is a copay?", 24))
            .unwrap();
        let (end, evicted) = run_to_end(&rx, id);
        assert!(matches!(end, Event::Done { .. }), "{end:?}");
        assert!(evicted.is_empty());
    }
    engine
        .submit(job(3, 103, true, "What is a copay?", 24))
        .unwrap();
    let (end, evicted) = run_to_end(&rx, 3);
    assert!(matches!(end, Event::Done { .. }), "{end:?}");
    assert_eq!(
        evicted,
        vec![101],
        "the oldest idle conversation goes first"
    );
    engine
        .submit(job(4, 101, false, "Still there?", 8))
        .unwrap();
    assert!(matches!(
        run_to_end(&rx, 4).0,
        Event::Failed {
            failure: Failure::UnknownConversation,
            ..
        }
    ));
    // A job larger than the whole budget is refused as busy, after evicting what it could.
    engine
        .submit(job(5, 105, true, "Is it covered?", 90))
        .unwrap();
    let (end, _) = run_to_end(&rx, 5);
    assert!(
        matches!(
            end,
            Event::Failed {
                failure: Failure::Busy,
                ..
            }
        ),
        "{end:?}"
    );
    assert!(engine.stats().kv_bytes.load(Ordering::Acquire) <= per_token * 90);
}

#[test]
fn half_precision_checkpoints_load_in_every_dtype() {
    // Write the reference's weights as f16 without the `transformer.` prefix, as bigscience publishes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        reference_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let f32_model =
        tch::Tensor::read_safetensors(reference_dir().join("model.safetensors")).unwrap();
    let half: Vec<(String, Tensor)> = f32_model
        .into_iter()
        .map(|(n, t)| {
            (
                n.trim_start_matches("transformer.").to_string(),
                t.to_kind(tch::Kind::Half),
            )
        })
        .collect();
    Tensor::write_safetensors(&half, dir.path().join("model.safetensors")).unwrap();
    let reference = load_model(&reference_dir(), Dtype::F32).unwrap();
    let ids = [340, 1009, 361, 133, 986, 136, 851];
    let want = reference.forward(&ids, &mut reference.new_cache()).unwrap();
    // Bounds per dtype (logits here span about ±5): f16 storage alone, then bf16 weights, then
    // int8 weights with int8 activations per 64 values (one group per row of this 64-wide model).
    for (dtype, bound) in [(Dtype::F32, 0.01), (Dtype::Bf16, 0.1), (Dtype::Int8, 0.3)] {
        let m = load_model(dir.path(), dtype).unwrap();
        let got = m.forward(&ids, &mut m.new_cache()).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < bound, "{dtype:?}: {diff}");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load_model(&reference_dir(), Dtype::F32).unwrap();
    let mut cache = model.new_cache();
    assert!(model.forward(&[], &mut cache).is_err());
    assert!(model.forward(&[1024], &mut cache).is_err());
    assert!(model.forward(&[-1], &mut cache).is_err());
    assert!(load_model(Path::new("/nonexistent"), Dtype::F32).is_err());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"vocab_size\": 4}").unwrap();
    assert!(load_model(dir.path(), Dtype::F32).is_err());
}

#[test]
fn encrypted_weights_load_with_their_key_only_and_digest_as_the_plain_model() {
    use confidant_sealing::weights as encrypted;
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(demo_dir().join(f), dir.path().join(f)).unwrap();
    }
    let plain = std::fs::read(demo_dir().join("model.safetensors")).unwrap();
    let key = [0x5a; 32];
    let mut sealed = Vec::new();
    encrypted::encrypt(&mut &plain[..], plain.len() as u64, &mut sealed, &key, 4096).unwrap();
    let enc = dir.path().join("model.safetensors.enc");
    std::fs::write(&enc, &sealed).unwrap();

    let reference = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let loaded = LoadedModel::load_with_key(dir.path(), Dtype::F32, Some(&key), true).unwrap();
    assert_eq!(
        loaded.digest, reference.digest,
        "the digest is over the weights as loaded"
    );
    assert_ne!(
        loaded.stored_digest,
        Some(loaded.digest),
        "the stored digest is over the encrypted file"
    );
    let ids = reference
        .turn_ids(&ChatTemplate::default(), "hello", true)
        .unwrap();
    assert_eq!(
        greedy_ids(&loaded.model, &ids, 6).unwrap(),
        greedy_ids(&reference.model, &ids, 6).unwrap()
    );

    let err = |r: Result<LoadedModel, confidant_model::ModelError>| {
        r.map(|_| ()).unwrap_err().to_string()
    };
    assert!(err(LoadedModel::load(dir.path(), Dtype::F32)).contains("is encrypted"));
    let wrong = err(LoadedModel::load_with_key(
        dir.path(),
        Dtype::F32,
        Some(&[1; 32]),
        false,
    ));
    assert!(wrong.contains("chunk 0 failed authentication"), "{wrong}");
    std::fs::write(&enc, &sealed[..sealed.len() - 100]).unwrap();
    let cut = err(LoadedModel::load_with_key(
        dir.path(),
        Dtype::F32,
        Some(&key),
        false,
    ));
    assert!(cut.contains("does not match its header"), "{cut}");
}

/// Prompts of different lengths for the batching tests.
fn prompts(m: &LoadedModel, n: usize) -> Vec<Vec<i64>> {
    let questions = [
        "What is a copay?",
        "How much should I save for retirement if I am thirty?",
        "Is physiotherapy covered?",
        "What does coinsurance mean for a hospital stay of three nights?",
        "Hi",
        "Can I see a specialist without a referral from my doctor?",
        "What is an out-of-pocket maximum?",
        "Explain deductibles.",
    ];
    let template = ChatTemplate::default();
    questions
        .iter()
        .cycle()
        .take(n)
        .map(|q| m.turn_ids(&template, q, true).unwrap())
        .collect()
}

#[test]
fn a_batch_of_eight_prompts_gives_each_the_greedy_tokens_it_gets_alone() {
    use confidant_model::bloom::{Scratch, Segment};
    use confidant_model::generate::argmax;
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let prompts = prompts(&m, 8);
    let steps = 10;
    let alone: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| greedy_ids(&m.model, p, steps).unwrap())
        .collect();
    // All eight prompts in one step, then every decoding step for all eight together.
    let mut caches: Vec<_> = prompts.iter().map(|_| m.model.new_cache()).collect();
    let mut feeds: Vec<Vec<i64>> = prompts.clone();
    let mut got = vec![Vec::new(); prompts.len()];
    let mut scratch = Scratch::default();
    for _ in 0..steps {
        let mut segments: Vec<Segment<'_>> = caches
            .iter_mut()
            .zip(&feeds)
            .map(|(cache, feed)| Segment {
                cache,
                tokens: feed,
                logits: true,
            })
            .collect();
        let out = m.model.step(&mut segments, &mut scratch);
        let next: Vec<i64> = (0..prompts.len())
            .map(|i| argmax(out.result(i).unwrap().unwrap()) as i64)
            .collect();
        for (i, t) in next.into_iter().enumerate() {
            got[i].push(t);
            feeds[i] = vec![t];
        }
    }
    assert_eq!(got, alone);
}

#[test]
fn the_engine_batches_chunks_prompts_and_answers_each_as_alone() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let questions = [
        "What is a copay?",
        "How much should I save for retirement if I am thirty?",
        "Is physiotherapy covered?",
        "What does coinsurance mean for a hospital stay of three nights?",
        "Hi",
        "Can I see a specialist without a referral from my doctor?",
        "What is an out-of-pocket maximum?",
        "Explain deductibles.",
    ];
    let template = ChatTemplate::new("You answer questions about health plans.");
    let params = GenerateParams {
        max_new_tokens: 12,
        stop: ChatTemplate::stop_strings(),
        ..Default::default()
    };
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let ids = m.turn_ids(&template, q, true).unwrap();
            let mut text = String::new();
            generate(
                &m.model,
                &m.tokenizer,
                &mut Conversation::new(&m.model),
                &ids,
                &params,
                m.eos,
                &mut |t| {
                    text.push_str(t);
                    true
                },
            )
            .unwrap();
            text
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let mut gate = Some(gate_rx);
    let engine = Engine::spawn(
        m,
        EngineConfig {
            capacity: 16,
            threads: Some(2),
            max_batch: 8,
            // Small: prompts take several steps, while the others decode.
            prefill_chunk: 8,
            ..EngineConfig::new(template, 2048, 1 << 30)
        },
        Box::new(move |e| {
            if let Some(g) = gate.take() {
                let _ = g.recv();
            }
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    // Job 9 is cancelled while it runs; the others must not notice.
    for (i, q) in questions.iter().enumerate() {
        engine
            .submit(job(i as u64, 100 + i as u64, true, q, 12))
            .unwrap();
    }
    engine
        .submit(job(9, 109, true, "Tell me everything.", 12))
        .unwrap();
    engine.cancel(9);
    gate_tx.send(()).unwrap();
    let mut texts = vec![String::new(); questions.len()];
    let mut done = 0;
    while done < questions.len() {
        match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
            Event::Text { job, text } if job < 8 => texts[job as usize].push_str(&text),
            Event::Done { job, .. } if job < 8 => done += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(texts, alone);
    assert_eq!(engine.stats().jobs.load(Ordering::Acquire), 0);
    assert!(engine.stats().steps.load(Ordering::Acquire) > 12);
}

#[test]
fn the_system_prompt_is_computed_once_and_shared_not_copied() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let per_token = m.model.kv_bytes_per_token();
    let system = "You answer questions about health plans, briefly and kindly, for members.";
    let prefix_tokens = m.tokenizer.encode(&format!("{system}\n")).unwrap().len() as u64;
    let (tx, rx) = mpsc::channel();
    let engine = Engine::spawn(
        m,
        EngineConfig {
            threads: Some(1),
            ..EngineConfig::new(ChatTemplate::new(system), 2048, 1 << 30)
        },
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    // Values per head; keys transposed, padded to whole tiles of positions.
    let tile = confidant_model::kernels::KEY_TILE as u64;
    let prefix = (prefix_tokens + prefix_tokens.div_ceil(tile) * tile) * per_token / 2;
    assert_eq!(engine.stats().kv_bytes.load(Ordering::Acquire), prefix);
    // Three kept conversations hold only their own positions beyond the one shared prefix.
    for c in 0..3u64 {
        engine
            .submit(job(c, c, true, "What is a copay?", 4))
            .unwrap();
        assert!(matches!(run_to_end(&rx, c).0, Event::Done { .. }));
    }
    let held = engine.stats().kv_bytes.load(Ordering::Acquire) - prefix;
    assert!(held > 0 && held < 3 * 24 * per_token, "{held}");
    for c in 0..3u64 {
        engine.forget(c);
    }
    // A one-shot question keeps nothing.
    let mut one_shot = job(7, 7, true, "Hi", 4);
    one_shot.keep = false;
    engine.submit(one_shot).unwrap();
    assert!(matches!(run_to_end(&rx, 7).0, Event::Done { .. }));
    assert_eq!(engine.stats().kv_bytes.load(Ordering::Acquire), prefix);
}

#[test]
fn a_long_prompt_does_not_stall_a_running_answer() {
    let m = LoadedModel::load(demo_dir(), Dtype::F32).unwrap();
    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let mut gate = Some(gate_rx);
    let engine = Engine::spawn(
        m,
        EngineConfig {
            threads: Some(1),
            prefill_chunk: 16,
            ..EngineConfig::new(ChatTemplate::default(), 2048, 1 << 30)
        },
        Box::new(move |e| {
            if let Some(g) = gate.take() {
                let _ = g.recv();
            }
            let _ = tx.send(e);
        }),
    )
    .unwrap();
    engine
        .submit(job(1, 1, true, "What is a copay?", 24))
        .unwrap();
    let long = "Please read my whole medical history and tell me what is covered. ".repeat(20);
    engine.submit(job(2, 2, true, &long, 4)).unwrap();
    gate_tx.send(()).unwrap();
    // The long prompt takes many steps; the short answer streams meanwhile.
    let (mut before, mut finished) = (0, false);
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap() {
            Event::Text { job: 1, .. } => before += 1,
            Event::Done { job: 1, .. } => finished = true,
            Event::Text { job: 2, .. } | Event::Done { job: 2, .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        finished || before >= 3,
        "{before} pieces before the long prompt's first"
    );
}
