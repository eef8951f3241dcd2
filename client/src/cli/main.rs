//! `confidant`: the Confidant client.
//!
//! Exit codes: 0 success (document valid, every conformance case passed), 1 rejection or failed case,
//! 2 usage or I/O error.

mod remote;
mod time_arg;
mod verify;

use confidant_client::{conformance, SetupError};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Process exit codes.
pub mod exit {
    pub const VALID: i32 = 0;
    pub const REJECTED: i32 = 1;
    pub const USAGE: i32 = 2;
}

/// A failure that is not a verdict: bad arguments or unreadable files (exit 2).
pub type CliError = SetupError;

#[derive(Debug, Parser)]
#[command(
    name = "confidant",
    version,
    about = "Ask an LLM in an attested AWS Nitro Enclave, end to end encrypted; verify attestation documents",
    after_help = "Exit status: 0 valid / all passed, 1 rejected / a case failed, 2 usage or I/O error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify an AWS Nitro Enclaves attestation document.
    Verify(verify::VerifyArgs),
    /// Run the known-answer test suites over a directory of test vectors.
    Conformance(ConformanceArgs),
    /// Fetch and verify the enclave's attestation (with a fresh nonce) and show what it commits to.
    Attest(remote::AttestArgs),
    /// Ask one question, end to end encrypted to the attested enclave; the answer streams to stdout.
    Ask(remote::AskArgs),
    /// Chat over one encrypted session (/reset starts over, /quit or Ctrl-D ends).
    Chat(remote::ChatArgs),
}

#[derive(Debug, clap::Args)]
struct ConformanceArgs {
    /// Test-vector directory [default: the repository's test-vectors/, else ./test-vectors].
    #[arg(value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Run only this suite; repeatable.
    #[arg(long = "suite", value_name = "NAME")]
    suites: Vec<String>,
    /// Print one JSON object instead of failures and a count.
    #[arg(long)]
    json: bool,
}

fn conformance(args: &ConformanceArgs) -> Result<i32, CliError> {
    let dir = args.dir.clone().unwrap_or_else(conformance::default_dir);
    let outcome = conformance::run(&dir, &args.suites).map_err(CliError::Invalid)?;
    if args.json {
        println!("{}", outcome.to_json());
    } else {
        for (suite, cases) in &outcome.suites {
            for case in cases {
                if let Err(why) = &case.outcome {
                    println!("FAIL {}: {why}", case.name);
                }
            }
            let failed = cases.iter().filter(|c| c.outcome.is_err()).count();
            println!("{suite}: {} passed, {failed} failed", cases.len() - failed);
        }
        for (suite, why) in &outcome.skipped {
            println!("{suite}: skipped ({why})");
        }
        println!("{} passed, {} failed", outcome.passed(), outcome.failed());
    }
    Ok(if outcome.failed() == 0 {
        exit::VALID
    } else {
        exit::REJECTED
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Verify(args) => verify::run(args),
        Command::Conformance(args) => conformance(args),
        Command::Attest(args) => remote::attest(args),
        Command::Ask(args) => remote::ask(args),
        Command::Chat(args) => remote::chat(args),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
