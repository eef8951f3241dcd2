//! `confidant`: the Confidant client.
//!
//! Exit codes: 0 success (document valid, every conformance case passed), 1 rejection or failed case,
//! 2 usage or I/O error, 3 the relay or the enclave could not be reached in time.

mod pins;
mod receipt;
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
    /// The relay or enclave could not be reached, or the exchange timed out: try again later.
    pub const UNAVAILABLE: i32 = 3;
}

/// `--version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CONFIDANT_COMMIT"),
    ")"
);

/// A failure that is not a verdict: bad arguments or unreadable files (exit 2).
pub type CliError = SetupError;

#[derive(Debug, Parser)]
#[command(
    name = "confidant",
    version = VERSION,
    about = "Ask an LLM in an attested AWS Nitro Enclave, end to end encrypted; verify attestation documents",
    after_help = "Exit status: 0 valid / all passed, 1 rejected / a case failed, 2 usage or I/O error, \
3 relay or enclave unreachable or timed out.\n\
Environment: CONFIDANT_RELAY (the relay), CONFIDANT_CONFIG (the config file; default \
~/.config/confidant/config.toml), CONFIDANT_CACHE_DIR (the attestation cache; default ~/.cache/confidant)."
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
    /// Check a receipt file offline: each answer signed by its attested enclave, as of the document's
    /// own time, optionally covering a given question and answer.
    VerifyReceipt(receipt::VerifyReceiptArgs),
    /// Show or clear the attestation cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print where the configuration file is looked for.
    ConfigPath,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    Man,
}

#[derive(Debug, Subcommand)]
enum CacheAction {
    /// Print the cache directory.
    Path,
    /// Remove every cached attestation.
    Clear,
}

fn cache(action: &CacheAction) -> Result<i32, CliError> {
    use confidant_client::cache;
    match action {
        CacheAction::Path => match cache::dir() {
            Some(d) => println!("{}", d.display()),
            None => {
                return Err(CliError::Invalid(
                    "no cache directory: set CONFIDANT_CACHE_DIR or HOME".into(),
                ))
            }
        },
        CacheAction::Clear => {
            let n = cache::clear().map_err(|e| CliError::Io(format!("clearing the cache: {e}")))?;
            eprintln!(
                "removed {n} cached attestation{}",
                if n == 1 { "" } else { "s" }
            );
        }
    }
    Ok(exit::VALID)
}

fn config_path() -> Result<i32, CliError> {
    match std::env::var_os("CONFIDANT_CONFIG") {
        Some(p) => println!("{} (from CONFIDANT_CONFIG)", PathBuf::from(p).display()),
        None => match confidant_client::config::default_path() {
            Some(p) => println!(
                "{}{}",
                p.display(),
                if p.is_file() { "" } else { " (absent)" }
            ),
            None => {
                return Err(CliError::Invalid(
                    "no config location: set CONFIDANT_CONFIG or HOME".into(),
                ))
            }
        },
    }
    Ok(exit::VALID)
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
        Command::VerifyReceipt(args) => receipt::run(args),
        Command::Cache { action } => cache(action),
        Command::ConfigPath => config_path(),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "confidant", &mut std::io::stdout());
            Ok(exit::VALID)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map(|()| exit::VALID)
                .map_err(|e| CliError::Io(e.to_string()))
        }
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
