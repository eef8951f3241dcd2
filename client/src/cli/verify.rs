//! `confidant verify`: one document, one verdict, a readable summary or one JSON object.

use std::path::PathBuf;

use confidant_client::policy::{build_policy, PolicyArgs};
use confidant_client::{input, roots};
use confidant_verifier::{PcrPin, Report, Verifier, VerifyAt};
use serde_json::{json, Value};

use crate::time_arg::{format_ms, format_secs, parse_at};
use crate::{exit, CliError};

/// Default maximum age of a document verified at a given instant: five minutes. Documents fetched with a
/// fresh nonce are seconds old; an archived one should be checked with `--at doc`.
pub const DEFAULT_MAX_AGE_SECS: u64 = 300;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The document: a file of raw COSE bytes, or of their hex or base64; `-` reads stdin.
    #[arg(value_name = "DOC")]
    pub doc: PathBuf,
    /// Trust this root certificate (PEM) instead of the embedded AWS Nitro root; repeatable.
    #[arg(long = "root", value_name = "PEM")]
    pub roots: Vec<PathBuf>,
    /// Verify as of: `now`, `doc` (the document's own timestamp, for archived documents), unix
    /// milliseconds, or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "now")]
    pub at: String,
    /// Maximum age of the document in seconds [default: 300, or the policy file's].
    #[arg(long, value_name = "SECS")]
    pub max_age: Option<u64>,
    /// Pin a PCR: index 0..31 and 48 bytes of hex; repeatable. A pinned PCR missing from the document
    /// is a rejection.
    #[arg(long = "pcr", value_name = "IDX=HEX")]
    pub pcrs: Vec<PcrPin>,
    /// TOML file with pins and limits (pcrs, max_age_secs, allow_debug, nonce, user_data, public_key);
    /// command-line values override it.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The nonce the document must carry (hex).
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    /// The exact user_data the document must carry (hex).
    #[arg(long, value_name = "HEX")]
    pub user_data: Option<String>,
    /// Accept a document from an enclave in debug mode (PCR0 all zeros).
    #[arg(long)]
    pub allow_debug: bool,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &VerifyArgs) -> Result<i32, CliError> {
    let at = parse_at(&args.at).map_err(CliError::Invalid)?;
    let policy = build_policy(
        &PolicyArgs {
            file: args.policy.as_deref(),
            pcrs: &args.pcrs,
            max_age_secs: args.max_age,
            allow_debug: args.allow_debug,
            nonce: args.nonce.as_deref(),
            user_data: args.user_data.as_deref(),
            public_key: None,
        },
        DEFAULT_MAX_AGE_SECS,
    )
    .map_err(|e| CliError::Invalid(e.to_string()))?;
    let verifier = Verifier::new(roots::load(&args.roots)?)
        .map_err(|e| CliError::Invalid(format!("--root: {}", e.detail())))?;
    let bytes = input::read_document(&args.doc)
        .map_err(|e| CliError::Io(format!("{}: {e}", args.doc.display())))?;
    let report = verifier.report(&bytes, &policy, at);

    if args.json {
        println!("{}", report_json(&report, at));
    } else if report.is_valid() {
        print!("{}", human_summary(&report, at));
    }
    match &report.error {
        None => Ok(exit::VALID),
        Some(e) => {
            eprintln!("rejected: {}: {}", e.code(), e.detail());
            if !args.json {
                for step in &report.steps {
                    eprintln!(
                        "  {:<9} {:<7} {}",
                        step.name.as_str(),
                        step.status.as_str(),
                        step.detail
                    );
                }
            }
            Ok(exit::REJECTED)
        }
    }
}

fn hex_or_null(b: Option<&[u8]>) -> Value {
    b.map_or(Value::Null, |b| Value::String(hex::encode(b)))
}

/// The `--json` object.
pub fn report_json(report: &Report, at: VerifyAt) -> Value {
    let doc = report.document.as_ref();
    json!({
        "valid": report.is_valid(),
        "error": report.error.as_ref().map(|e| e.code().as_str()),
        "error_detail": report.error.as_ref().map(|e| e.detail()),
        "verified_at": match at {
            VerifyAt::DocumentTime => json!("doc"),
            VerifyAt::Instant(t) => json!(t.as_millis()),
        },
        "module_id": doc.map(|d| d.module_id.clone()),
        "timestamp_ms": doc.map(|d| d.timestamp),
        "digest": doc.map(|_| "SHA384"),
        "pcrs": doc.map(|d| d.pcrs.iter().map(|(i, v)| (i.to_string(), json!(hex::encode(v)))).collect::<serde_json::Map<_, _>>()),
        "public_key": doc.map_or(Value::Null, |d| hex_or_null(d.public_key.as_deref().map(|b| b.as_slice()))),
        "user_data": doc.map_or(Value::Null, |d| hex_or_null(d.user_data.as_deref().map(|b| b.as_slice()))),
        "nonce": doc.map_or(Value::Null, |d| hex_or_null(d.nonce.as_deref().map(|b| b.as_slice()))),
        "chain": report.chain.iter().map(|c| json!({
            "subject": c.subject,
            "not_before": format_secs(c.not_before),
            "not_after": format_secs(c.not_after),
        })).collect::<Vec<_>>(),
        "steps": report.steps.iter().map(|s| json!({
            "step": s.name.as_str(), "status": s.status.as_str(), "detail": s.detail,
        })).collect::<Vec<_>>(),
    })
}

/// A short human summary of a valid document.
pub fn human_summary(report: &Report, at: VerifyAt) -> String {
    let Some(doc) = &report.document else {
        return String::new();
    };
    let mut out = String::new();
    let when = match at {
        VerifyAt::DocumentTime => "as of its own timestamp".to_string(),
        VerifyAt::Instant(t) => format!("at {t}"),
    };
    out.push_str(&format!("valid attestation document (verified {when})\n"));
    out.push_str(&format!("  module     {}\n", doc.module_id));
    out.push_str(&format!("  timestamp  {}\n", format_ms(doc.timestamp)));
    let debug = doc.pcrs.get(&0).is_some_and(|p| p.iter().all(|&b| b == 0));
    out.push_str(&format!(
        "  mode       {}\n",
        if debug {
            "DEBUG (PCR0 all zeros)"
        } else {
            "production"
        }
    ));
    let nonzero: Vec<_> = doc
        .pcrs
        .iter()
        .filter(|(_, v)| v.iter().any(|&b| b != 0))
        .collect();
    out.push_str(&format!(
        "  PCRs       {} present, {} non-zero\n",
        doc.pcrs.len(),
        nonzero.len()
    ));
    for (i, v) in nonzero {
        out.push_str(&format!("    PCR{i:<3} {}\n", hex::encode(v)));
    }
    let field = |name: &str, b: Option<&[u8]>| match b {
        None => format!("  {name:<10} none\n"),
        Some([]) => format!("  {name:<10} empty\n"),
        Some(b) if b.len() <= 32 => format!("  {name:<10} {}\n", hex::encode(b)),
        Some(b) => format!(
            "  {name:<10} {} bytes, {}…\n",
            b.len(),
            hex::encode(&b[..16])
        ),
    };
    out.push_str(&field(
        "public_key",
        doc.public_key.as_deref().map(|b| b.as_slice()),
    ));
    out.push_str(&field(
        "user_data",
        doc.user_data.as_deref().map(|b| b.as_slice()),
    ));
    out.push_str(&field("nonce", doc.nonce.as_deref().map(|b| b.as_slice())));
    if let Some(leaf) = report.chain.last() {
        out.push_str(&format!(
            "  chain      {} certificates; leaf valid {} .. {}\n",
            report.chain.len(),
            format_secs(leaf.not_before),
            format_secs(leaf.not_after)
        ));
    }
    let steps: Vec<String> = report
        .steps
        .iter()
        .map(|s| format!("{} {}", s.name.as_str(), s.status.as_str()))
        .collect();
    out.push_str(&format!("  checks     {}\n", steps.join(", ")));
    out
}
