//! `confidant-load` (TEST ONLY): N concurrent clients, each with its own QUIC connection and
//! attestation, asking a bounded number of one-shot questions through the relay. Every answer is
//! checked against the expected greedy output when one is given (`--expect`), so a lost or mixed-up
//! answer is counted, never hidden. Prints one JSON object: questions per second, time to first token
//! p50/p99, errors by code, and the peak RSS of the relay and the enclave when their pids are given.
//!
//! Exit status: 0 when every question was answered (and matched), 1 otherwise, 2 on bad arguments.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use confidant_client::{Client, Timeouts, Trust, TrustConfig};
use confidant_protocol::message::Ask;
use confidant_verifier::PcrPin;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-load",
    about = "Load through the relay; every answer checked"
)]
struct Args {
    #[arg(long, value_name = "HOST:PORT")]
    relay: String,
    #[arg(long, value_name = "PEM")]
    relay_ca: Option<PathBuf>,
    #[arg(long = "root", value_name = "PEM")]
    roots: Vec<PathBuf>,
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pcrs: Vec<PcrPin>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Questions each client asks, one after another.
    #[arg(long, default_value_t = 2)]
    questions: usize,
    #[arg(long, default_value_t = 8)]
    max_tokens: u32,
    /// JSON object question → expected answer; the questions asked are its keys, in turn.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// Seconds one exchange may take.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Report this process's peak RSS as the relay's.
    #[arg(long, value_name = "PID")]
    relay_pid: Option<u32>,
    /// Report this process's peak RSS as the enclave's.
    #[arg(long, value_name = "PID")]
    enclave_pid: Option<u32>,
    /// Ask unshaped (`"shape": false`): each piece of text as it comes, to measure the engine's and
    /// the relay's own latency without the traffic shape's cadence.
    #[arg(long)]
    unshaped: bool,
}

const DEFAULT_QUESTIONS: [&str; 5] = [
    "What is a copay?",
    "What is a deductible?",
    "Who sees my records?",
    "What is an HSA?",
    "When can I retire?",
];

#[derive(Debug)]
struct Sample {
    ok: bool,
    mismatch: bool,
    code: Option<String>,
    first_ms: Option<f64>,
    total_ms: f64,
    generated_tokens: u64,
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

async fn one_client(
    args: Arc<Args>,
    questions: Arc<Vec<(String, Option<String>)>>,
    index: usize,
) -> Vec<Sample> {
    let fail = |code: String| Sample {
        ok: false,
        mismatch: false,
        code: Some(code),
        first_ms: None,
        total_ms: 0.0,
        generated_tokens: 0,
    };
    let trust = match Trust::build(&TrustConfig {
        roots: args.roots.clone(),
        pcrs: args.pcrs.clone(),
        ..TrustConfig::default()
    }) {
        Ok(t) => t,
        Err(e) => return vec![fail(format!("setup: {e}"))],
    };
    let timeouts = Timeouts {
        exchange: Duration::from_secs(args.timeout),
        silence: Duration::from_secs(args.timeout),
        ..Timeouts::default()
    };
    let mut client =
        match Client::connect(&args.relay, args.relay_ca.as_deref(), trust, timeouts).await {
            Ok(c) => c.without_cache(),
            Err(e) => return vec![fail(e.code().to_string())],
        };
    let mut samples = Vec::with_capacity(args.questions);
    for q in 0..args.questions {
        let (question, expected) = &questions[(index + q) % questions.len()];
        let ask = Ask {
            max_tokens: Some(args.max_tokens),
            shape: args.unshaped.then_some(false),
            ..Ask::new(question.clone())
        };
        let started = Instant::now();
        match client.ask(&ask, &mut |_| {}).await {
            Ok((answer, _)) => {
                let mismatch = expected.as_ref().is_some_and(|e| *e != answer.text);
                samples.push(Sample {
                    ok: !mismatch,
                    mismatch,
                    code: None,
                    first_ms: answer.first_chunk.map(|d| d.as_secs_f64() * 1e3),
                    total_ms: started.elapsed().as_secs_f64() * 1e3,
                    generated_tokens: answer.trailer.generated_tokens,
                });
            }
            Err(e) => samples.push(fail(e.code().to_string())),
        }
    }
    client.close();
    samples
}

fn main() -> ExitCode {
    let args = Args::parse();
    let questions: Vec<(String, Option<String>)> = match &args.expect {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            let map: BTreeMap<String, String> = match serde_json::from_str(&text) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            };
            map.into_iter().map(|(q, a)| (q, Some(a))).collect()
        }
        None => DEFAULT_QUESTIONS
            .iter()
            .map(|q| (q.to_string(), None))
            .collect(),
    };
    if questions.is_empty() {
        eprintln!("error: no questions");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let args = Arc::new(args);
    let questions = Arc::new(questions);
    let started = Instant::now();
    let samples: Vec<Sample> = runtime.block_on(async {
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| tokio::spawn(one_client(args.clone(), questions.clone(), i)))
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all
    });
    let secs = started.elapsed().as_secs_f64();
    let ok = samples.iter().filter(|s| s.ok).count();
    let mismatched = samples.iter().filter(|s| s.mismatch).count();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        if let Some(c) = &s.code {
            *errors.entry(c.clone()).or_default() += 1;
        }
    }
    let mut first: Vec<f64> = samples.iter().filter_map(|s| s.first_ms).collect();
    first.sort_by(f64::total_cmp);
    let mut total: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.total_ms)
        .collect();
    total.sort_by(f64::total_cmp);
    let expected_count = args.clients * args.questions;
    // Decoding speed of each answer once it streams (tokens after the first over the time after
    // the first), summed: the aggregate decode rate while the clients ran together.
    let decode_rate: f64 = samples
        .iter()
        .filter(|s| s.ok && s.generated_tokens > 1)
        .filter_map(|s| {
            let streaming = (s.total_ms - s.first_ms?) / 1e3;
            (streaming > 0.0).then(|| (s.generated_tokens - 1) as f64 / streaming)
        })
        .sum::<f64>()
        / args.questions.max(1) as f64;
    let report = serde_json::json!({
        "shaped": !args.unshaped,
        "clients": args.clients,
        "questions": expected_count,
        "answered_ok": ok,
        "mismatched": mismatched,
        "lost": expected_count - samples.len(),
        "errors": errors,
        "seconds": secs,
        "questions_per_s": ok as f64 / secs,
        "generated_tokens": samples.iter().map(|s| s.generated_tokens).sum::<u64>(),
        "decode_tokens_per_s_aggregate": decode_rate,
        "ttft_ms_p50": percentile(&first, 0.5),
        "ttft_ms_p99": percentile(&first, 0.99),
        "total_ms_p50": percentile(&total, 0.5),
        "total_ms_p99": percentile(&total, 0.99),
        "relay_peak_rss_mib": args.relay_pid.and_then(peak_rss_mib),
        "enclave_peak_rss_mib": args.enclave_pid.and_then(peak_rss_mib),
    });
    println!("{report}");
    if ok == expected_count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
