//! `confidant verify`: one document, one verdict, a readable summary or one JSON object.

use std::path::PathBuf;

use confidant_client::policy::{build_policy, parse_hex, PolicyArgs, PolicyFile};
use confidant_client::{input, roots};
use confidant_protocol::keyconfig::decode_list;
use confidant_protocol::user_data::UserData;
use confidant_protocol::{Expectations, ProtocolError, Recipient, UnixMillis};
use confidant_verifier::{PcrPin, Report, Verifier, VerifyAt};
use serde_json::{json, Value};

use crate::pins::DigestPins;
use crate::time_arg::{format_ms, format_secs, parse_at};
use crate::{exit, CliError};

/// Default maximum age of a document verified at a given instant: five minutes. Documents fetched with a
/// fresh nonce are seconds old; an archived one should be checked with `--at doc`.
pub const DEFAULT_MAX_AGE_SECS: u64 = 300;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The document: a file saved by `confidant attest --out` (the document and its key configs), or
    /// raw COSE bytes, or their hex or base64; `-` reads stdin.
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
    #[command(flatten)]
    pub digests: DigestPins,
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
    let saved = input::read_saved(&args.doc)
        .map_err(|e| CliError::Io(format!("{}: {e}", args.doc.display())))?;
    let expect = expectations(args)?;
    let report = verifier.report(&saved.document, &policy, at);
    // Step 6, for Confidant's documents: what user_data commits to, checked as `ask` checks it.
    let confidant = if report.is_valid() {
        match confidant_check(&verifier, &saved, &policy, at, &expect) {
            Ok(c) => c,
            Err(e) => return rejected_user_data(args, &report, at, e),
        }
    } else {
        None
    };

    if args.json {
        let mut v = report_json(&report, at);
        v["confidant"] = confidant.as_ref().map_or(Value::Null, |c| c.json());
        v["pinned_pcrs"] = json!(policy.pcrs().keys().collect::<Vec<_>>());
        println!("{v}");
    } else if report.is_valid() {
        print!("{}", human_summary(&report, at));
        print!("{}", pins_line(&policy, &expect));
        if let Some(c) = &confidant {
            print!("{}", c.text());
        }
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

/// The digests and dtype to hold user_data to: flags, else the policy file.
fn expectations(args: &VerifyArgs) -> Result<Expectations, CliError> {
    let file = match &args.policy {
        Some(p) => PolicyFile::load(p).map_err(|e| CliError::Invalid(e.to_string()))?,
        None => PolicyFile::default(),
    };
    let digest = |name: &str, v: Option<String>| -> Result<Option<[u8; 32]>, CliError> {
        let Some(h) = v else { return Ok(None) };
        let bytes = parse_hex(name, &h).map_err(|e| CliError::Invalid(e.to_string()))?;
        bytes.try_into().map(Some).map_err(|_| {
            CliError::Invalid(format!(
                "{name}: a SHA-256 digest is 32 bytes (64 hex digits)"
            ))
        })
    };
    Ok(Expectations {
        model: digest(
            "--model-digest",
            args.digests.model_digest.clone().or(file.model_digest),
        )?,
        settings: digest(
            "--settings-digest",
            args.digests
                .settings_digest
                .clone()
                .or(file.settings_digest),
        )?,
        dtype: args.digests.dtype.clone().or(file.dtype),
        now: UnixMillis::from_millis(0),
    })
}

fn pins_line(policy: &confidant_verifier::Policy, expect: &Expectations) -> String {
    let mut pins: Vec<String> = policy.pcrs().keys().map(|i| format!("PCR{i}")).collect();
    for (name, set) in [
        ("model digest", expect.model.is_some()),
        ("settings digest", expect.settings.is_some()),
        ("dtype", expect.dtype.is_some()),
    ] {
        if set {
            pins.push(name.into());
        }
    }
    if policy.pcrs().contains_key(&0) || policy.pcrs().contains_key(&8) {
        format!("  pinned     {} (all matched)\n", pins.join(", "))
    } else {
        format!(
            "  pinned     {}: no workload pinned (PCR0 or PCR8), so any enclave's document passes the policy\n",
            if pins.is_empty() { "NOTHING".to_string() } else { pins.join(", ") }
        )
    }
}

/// Confidant's user_data, decoded and checked.
struct ConfidantData {
    user_data: UserData,
    /// The key configs, when the bundle carried them (then bound and decoded).
    key_configs: Option<Vec<String>>,
}

impl ConfidantData {
    fn json(&self) -> Value {
        let u = &self.user_data;
        json!({
            "model_digest": hex::encode(u.model),
            "settings_digest": u.settings.map(hex::encode),
            "dtype": u.dtype,
            "limits": u.limits.map(|l| json!({"context_tokens": l.context_tokens, "max_new_tokens": l.max_new_tokens})),
            "keys_expire": format_secs((u.exp.as_millis() / 1000) as i64),
            "key_configs_sha256": hex::encode(u.kc),
            "key_configs": self.key_configs,
        })
    }

    fn text(&self) -> String {
        let u = &self.user_data;
        let mut out = String::from("  Confidant user_data\n");
        out.push_str(&format!("    model      {}\n", hex::encode(u.model)));
        out.push_str(&format!(
            "    settings   {}\n",
            u.settings.map_or("none".into(), hex::encode)
        ));
        out.push_str(&format!(
            "    dtype      {}\n",
            u.dtype.as_deref().unwrap_or("not stated")
        ));
        if let Some(l) = u.limits {
            out.push_str(&format!(
                "    limits     {} tokens of context, {} new tokens per answer\n",
                l.context_tokens, l.max_new_tokens
            ));
        }
        out.push_str(&format!(
            "    expires    {}\n",
            format_secs((u.exp.as_millis() / 1000) as i64)
        ));
        match &self.key_configs {
            Some(kc) => {
                for k in kc {
                    out.push_str(&format!("    key        {k} (bound: SHA-256 matches)\n"));
                }
            }
            None => out.push_str(&format!(
                "    key configs SHA-256 {} (not checked: give the file `confidant attest --out` saves)\n",
                hex::encode(u.kc)
            )),
        }
        out
    }
}

/// Decodes Confidant's user_data and applies the pins. `Ok(None)`: not Confidant's document and
/// nothing Confidant-specific was pinned (an AWS document of another application).
fn confidant_check(
    verifier: &Verifier,
    saved: &input::Saved,
    policy: &confidant_verifier::Policy,
    at: VerifyAt,
    expect: &Expectations,
) -> Result<Option<ConfidantData>, ProtocolError> {
    let verified = verifier
        .verify(&saved.document, policy, at)
        .map_err(|e| ProtocolError::MalformedUserData(e.to_string()))?;
    let pinned = expect.model.is_some() || expect.settings.is_some() || expect.dtype.is_some();
    let raw = verified.doc().user_data.as_deref().map(|b| b.as_slice());
    let user_data = match raw.map(UserData::decode) {
        Some(Ok(u)) => u,
        Some(Err(e)) if pinned || saved.key_configs.is_some() => return Err(e),
        None if pinned || saved.key_configs.is_some() => {
            return Err(ProtocolError::MalformedUserData(
                "the document carries no user_data".into(),
            ))
        }
        _ => return Ok(None),
    };
    // Keys are judged as of the verification time: an archived document's keys had not expired then.
    let now = match at {
        VerifyAt::Instant(t) => t,
        VerifyAt::DocumentTime => UnixMillis::from_millis(verified.doc().timestamp),
    };
    let expect = Expectations {
        now,
        ..expect.clone()
    };
    let key_configs = match &saved.key_configs {
        Some(kc) => {
            Recipient::from_attestation(&verified, kc, &expect)?;
            let configs = decode_list(kc)?;
            Some(
                configs
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {} ({})",
                            c.key_id,
                            c.kem.name(),
                            c.aeads
                                .iter()
                                .map(|a| a.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
                    .collect(),
            )
        }
        None => {
            if expect.model.is_some_and(|m| m != user_data.model) {
                return Err(ProtocolError::ModelMismatch);
            }
            if expect.settings.is_some() && user_data.settings != expect.settings {
                return Err(ProtocolError::SettingsMismatch);
            }
            if expect.dtype.is_some() && user_data.dtype != expect.dtype {
                return Err(ProtocolError::DtypeMismatch);
            }
            None
        }
    };
    Ok(Some(ConfidantData {
        user_data,
        key_configs,
    }))
}

fn rejected_user_data(
    args: &VerifyArgs,
    report: &Report,
    at: VerifyAt,
    e: ProtocolError,
) -> Result<i32, CliError> {
    let code = e.code();
    if args.json {
        let mut v = report_json(report, at);
        v["valid"] = json!(false);
        v["error"] = json!(code.as_str());
        v["error_detail"] = json!(e.to_string());
        println!("{v}");
    }
    eprintln!("rejected: {}: {e}", code.as_str());
    Ok(exit::REJECTED)
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
        "root": report.root.as_ref().map(|r| json!({
            "subject": r.subject, "sha256": hex::encode(r.sha256), "aws_nitro_root": r.is_aws_nitro_root(),
        })),
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
    if let Some(root) = &report.root {
        out.push_str(&format!(
            "  root       {} (SHA-256 {}){}\n",
            root.subject,
            hex::encode(root.sha256),
            if root.is_aws_nitro_root() {
                ", the AWS Nitro root"
            } else {
                ", a DEVELOPMENT root, not AWS"
            }
        ));
    }
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
