//! `confidant-model`: the model's tools, outside the enclave image — check a checkpoint against
//! reference logits, benchmark it, and write the local default's demo model.
//!
//! Exit codes: 0 success, 1 a check failed, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confidant_model::Dtype;

mod bench;
mod check;
mod rss;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-model",
    version,
    about = "Confidant's BLOOM tools: check a checkpoint, benchmark it, make the demo model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a BLOOM checkpoint against reference logits and greedy continuations (f32), and measure
    /// how close bf16 and int8 stay to f32; prints one JSON object.
    Check(check::CheckArgs),
    /// Time prefill and decoding; prints one JSON object.
    Bench(bench::BenchArgs),
    /// Time to first token in the inference engine: alone, while others stream, after a long
    /// system prompt; one JSON object.
    BenchEngine(bench::EngineBenchArgs),
    /// Time a whole answer in process (the baseline of the end-to-end overhead); one JSON object.
    #[command(hide = true)]
    BenchGenerate(bench::GenerateBenchArgs),
    /// Time the kernels against libtorch on bloom-560m's shapes, and the machine's read bandwidth;
    /// one JSON object.
    BenchKernels {
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Tokens per product (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        tokens: Vec<usize>,
        /// Only this product (qkv, dense, h_to_4h, 4h_to_h, lm_head, attention).
        #[arg(long)]
        only: Option<String>,
    },
    /// Answer questions in process, greedily, as the enclave would answer one-shot questions; prints
    /// one JSON object, question → answer (what `confidant-load --expect` takes).
    Answer {
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// The sealed system prompt, if the enclave has one.
        #[arg(long, default_value = "")]
        system: String,
        #[arg(long, default_value_t = 16)]
        max_tokens: usize,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        #[arg(value_name = "QUESTION", required = true)]
        questions: Vec<String>,
    },
    /// Train the local default's model: a BPE tokenizer and a small BLOOM fitted to the shipped
    /// question-and-answer corpus (model/assets/demo-qa.txt), deterministic from the seed and threads.
    DemoModel {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Training steps.
        #[arg(long, default_value_t = confidant_model::train::TrainSpec::default().steps)]
        steps: usize,
        /// libtorch threads (part of the recipe: results are reproducible for the same count).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Write random weights instead of training (a test double for pipeline tests: its answers are noise).
        #[arg(long)]
        random: bool,
    },
}

fn answer(
    model: &std::path::Path,
    system: &str,
    max_tokens: usize,
    dtype: Dtype,
    questions: &[String],
) -> Result<u8, String> {
    use confidant_model::generate::{generate, Conversation, GenerateParams};
    use confidant_model::template::ChatTemplate;
    let m = confidant_model::LoadedModel::load(model, dtype).map_err(|e| e.to_string())?;
    let template = ChatTemplate::new(system);
    let params = GenerateParams {
        max_new_tokens: max_tokens,
        stop: ChatTemplate::stop_strings(),
        ..Default::default()
    };
    let mut out = serde_json::Map::new();
    for q in questions {
        let ids = m.turn_ids(&template, q, true).map_err(|e| e.to_string())?;
        let mut text = String::new();
        let mut conversation = Conversation::new(&m.model);
        generate(
            &m.model,
            &m.tokenizer,
            &mut conversation,
            &ids,
            &params,
            m.eos,
            &mut |piece| {
                text.push_str(piece);
                true
            },
        )
        .map_err(|e| e.to_string())?;
        out.insert(q.clone(), text.into());
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(0)
}

fn demo_model(
    out: &std::path::Path,
    seed: u64,
    steps: usize,
    threads: usize,
    random: bool,
) -> Result<u8, String> {
    if random {
        let spec = confidant_model::demo::DemoSpec {
            seed,
            ..Default::default()
        };
        confidant_model::demo::write_demo_model(out, spec).map_err(|e| e.to_string())?;
        eprintln!("wrote a random-weight test model to {}", out.display());
        return Ok(0);
    }
    let spec = confidant_model::train::TrainSpec {
        seed,
        steps,
        threads,
        ..Default::default()
    };
    let report = confidant_model::train::train_demo_model(out, spec, &mut |step, loss| {
        eprintln!("step {step:>4}/{steps}  loss {loss:.3}");
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "trained the demo model in {:.1} s ({} conversations, {} tokens per epoch, loss {:.3} -> {:.3}); wrote {}",
        report.seconds,
        report.examples,
        report.tokens_per_epoch,
        report.first_loss,
        report.final_loss,
        out.display()
    );
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchGenerate(args) => bench::run_generate(&args),
        Command::BenchEngine(args) => bench::run_engine(&args),
        Command::BenchKernels {
            threads,
            tokens,
            only,
        } => bench::run_kernels(threads, &tokens, only.as_deref()),
        Command::Answer {
            model,
            system,
            max_tokens,
            dtype,
            questions,
        } => answer(&model, &system, max_tokens, dtype, &questions),
        Command::DemoModel {
            out,
            seed,
            steps,
            threads,
            random,
        } => demo_model(&out, seed, steps, threads, random),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
