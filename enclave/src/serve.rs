//! `confidant-enclave serve`: boot (NSM, sealed settings through KMS, the model), then serve.

use std::path::PathBuf;
use std::time::Duration;

use confidant_kms::client::{self, KmsTarget};
use confidant_kms::{credentials, transport, unseal};
use confidant_model::engine::{Engine, EngineConfig};
use confidant_model::template::ChatTemplate;
use confidant_model::{Dtype, LoadedModel};
use confidant_nsm::{DeviceNsm, Nsm};
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::session::SessionLimits;
use confidant_protocol::UnixMillis;
use confidant_sealing::sealed::SealedFile;
use confidant_sealing::settings::Settings;
use confidant_server::{Core, Identity, ServeConfig};

use crate::shell;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NsmKind {
    /// The Nitro Security Module, /dev/nsm.
    Device,
    /// An emulation signing with --dev-ca (builds with the `emulated-nsm` feature only).
    #[cfg(feature = "emulated-nsm")]
    Emulated,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: vsock:PORT, tcp:ADDR:PORT or unix:PATH.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Endpoint,
    /// Where to report a failed boot (one line with its stable code, nothing else): the parent's
    /// relay, vsock:3:5006 in the image, since an enclave has no console.
    #[arg(long, value_name = "ENDPOINT")]
    pub report_boot: Option<Endpoint>,
    /// Model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The Nitro Security Module: the real /dev/nsm, or an emulation signing with --dev-ca.
    #[arg(long, value_enum, default_value = "device")]
    nsm: NsmKind,
    /// Development CA directory for --nsm emulated (made by `confidant-ops dev-ca`).
    #[cfg(feature = "emulated-nsm")]
    #[arg(long, value_name = "DIR")]
    dev_ca: Option<PathBuf>,
    /// Lifetime of each key generation, in seconds (the previous one is honoured 5 more minutes).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    key_ttl: u64,
    /// Threads the model runs on [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Chat sessions: idle lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    session_idle: u64,
    /// Chat sessions: absolute lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    session_max: u64,
    /// Answers admitted at once (running and waiting) before new ones are refused as busy.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Answers generated together: each decoding step runs all of them.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Prompt tokens run per step over all starting questions: bounds how long one step, and so
    /// each running answer's next token, can be delayed by a long question.
    #[arg(long, value_name = "TOKENS", default_value_t = 256)]
    prefill_chunk: usize,
    /// Memory for all KV caches together, MiB. The default fits a 6 GiB enclave with f32
    /// bloom-560m (docs/deploy.md has the arithmetic).
    #[arg(long, value_name = "MIB", default_value_t = 1536)]
    kv_budget_mib: u64,
    /// Prompt plus answer tokens per request and per session (attested; sealed settings may set it).
    #[arg(long, value_name = "TOKENS", default_value_t = 2048)]
    context_tokens: u32,
    /// The traffic shape's cadence, ms: a shaped answer (the default) leaves as one fixed-size chunk
    /// this often. Shorter costs bytes on the wire, longer delays the first token (up to one cadence).
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=2000))]
    shape_cadence_ms: u64,
    /// Sealed settings (made by `seal`): unsealed through KMS with this enclave's attestation at
    /// boot; if that fails the enclave does not serve.
    #[arg(long, value_name = "FILE")]
    sealed_settings: Option<PathBuf>,
    /// KMS endpoint URL (default: the region's); plain http only to loopback.
    #[arg(long, value_name = "URL", requires = "sealed_settings")]
    kms_endpoint: Option<String>,
    /// Dial every KMS connection here — the parent's vsock-proxy, e.g. vsock:3:8000 — with TLS to
    /// KMS kept inside the enclave.
    #[arg(long, value_name = "vsock:CID:PORT", value_parser = transport::parse_dial, requires = "sealed_settings")]
    kms_proxy: Option<transport::Dial>,
    /// Read AWS credentials (IMDS JSON) from the parent at boot, e.g. vsock:3:8002; default: the
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN environment variables.
    #[arg(long, value_name = "vsock:CID:PORT", value_parser = transport::parse_dial, requires = "sealed_settings")]
    kms_credentials: Option<transport::Dial>,
    /// AWS region of the KMS key (default: $AWS_REGION).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// TEST ONLY (emulated NSM): stamp documents this many seconds in the past.
    #[cfg(feature = "emulated-nsm")]
    #[arg(long, hide = true, default_value_t = 0)]
    backdate_documents_test_only: u64,
}

pub fn run(args: ServeArgs) -> Result<u8, String> {
    if args.key_ttl < 10 {
        return Err("--key-ttl must be at least 10 seconds".into());
    }
    if args.context_tokens < 2 {
        return Err("--context-tokens must be at least 2".into());
    }
    // The emulation measures the model as stored before anything is loaded, as Nitro measures the
    // image before boot; the settings (and a weights key) are unsealed before the model is loaded.
    let (nsm, measured) = open_nsm(&args)?;
    let runtime = confidant_runtime::runtime(Some(2)).map_err(|e| e.to_string())?;
    let mut config = ServeConfig {
        key_ttl: Duration::from_secs(args.key_ttl),
        session_limits: SessionLimits {
            idle: Duration::from_secs(args.session_idle),
            absolute: Duration::from_secs(args.session_max),
        },
        context_tokens: args.context_tokens,
        shape_cadence: Duration::from_millis(args.shape_cadence_ms),
        ..ServeConfig::default()
    };
    let mut template = ChatTemplate::default();
    let settings = match &args.sealed_settings {
        None => None,
        Some(path) => {
            let settings = runtime.block_on(unseal_settings(&args, path, nsm.as_ref()))?;
            tracing::info!(
                digest = %hex::encode(settings.digest),
                max_new_tokens = settings.max_new_tokens,
                "settings unsealed"
            );
            config.max_new_tokens = settings.max_new_tokens;
            config.default_new_tokens = settings.default_new_tokens;
            if let Some(c) = settings.context_tokens {
                config.context_tokens = c;
            }
            template = ChatTemplate::new(&settings.system_prompt);
            Some(settings)
        }
    };
    let weights_key = settings.as_ref().and_then(|s| s.weights_key.as_deref());
    // Only the emulation measures the files as stored (Nitro measures the image itself).
    let model =
        LoadedModel::load_with_key(&args.model, args.dtype, weights_key, measured.is_some())
            .map_err(|e| format!("loading the model: {e}"))?;
    let settings = settings.map(|s| s.digest); // the weights key is dropped (zeroized) here
    if measured.is_some() && measured != model.stored_digest {
        return Err("the model files changed between measuring and loading".into());
    }
    let identity = Identity {
        model: model.digest,
        settings,
        dtype: args.dtype.name().into(),
    };
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::spawn(
        model,
        EngineConfig {
            capacity: args.queue,
            threads: args.threads,
            max_batch: args.max_batch,
            prefill_chunk: args.prefill_chunk,
            ..EngineConfig::new(
                template,
                config.context_tokens as usize,
                args.kv_budget_mib.saturating_mul(1 << 20),
            )
        },
        Box::new(move |e| {
            let _ = events_tx.send(shell::notice(e));
        }),
    )
    .map_err(|e| e.to_string())?;
    let model_digest = hex::encode(identity.model);
    tracing::info!(
        context_tokens = config.context_tokens,
        kv_budget_mib = args.kv_budget_mib,
        "limits"
    );
    let core = Core::new(nsm, identity, config, seed()?, UnixMillis::now());
    runtime.block_on(async move {
        let served = shell::serve(core, engine, events_rx, &args.listen, |bound| {
            // One line on stdout that scripts and tests wait for.
            println!("listening {bound} model {model_digest}");
        });
        tokio::select! {
            r = served => r.map_err(|e| format!("{}: {e}", args.listen)),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })?;
    Ok(0)
}

/// The core's random seed, from the operating system.
fn seed() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("randomness: {e}"))?;
    Ok(seed)
}

/// The NSM to attest with, and (emulated) the model digest it measured.
type Attester = (Box<dyn Nsm>, Option<[u8; 32]>);

fn open_nsm(args: &ServeArgs) -> Result<Attester, String> {
    match args.nsm {
        NsmKind::Device => Ok((
            Box::new(DeviceNsm::open().map_err(|e| e.to_string())?),
            None,
        )),
        #[cfg(feature = "emulated-nsm")]
        NsmKind::Emulated => {
            use confidant_nsm::{measure, EmulatedNsm};
            let dir = args
                .dev_ca
                .as_ref()
                .ok_or("--nsm emulated needs --dev-ca DIR")?;
            let stored = measure::stored_model_digest(&args.model)?;
            let pcrs = measure::this_binary_pcrs(&stored)
                .map_err(|e| format!("measuring this binary: {e}"))?;
            let nsm = EmulatedNsm::load(dir, pcrs)
                .map_err(|e| e.to_string())?
                .backdated(args.backdate_documents_test_only);
            Ok((Box::new(nsm), Some(stored)))
        }
    }
}

/// Unseals the settings, or says why not (with a stable code, without secrets).
async fn unseal_settings(
    args: &ServeArgs,
    path: &std::path::Path,
    nsm: &dyn Nsm,
) -> Result<Settings, String> {
    let fail = |code: &str, e: &dyn std::fmt::Display| {
        format!(
            "unsealing {}: [{code}] {e}; refusing to serve",
            path.display()
        )
    };
    let bytes = std::fs::read(path).map_err(|e| fail("sealed_read", &e))?;
    let sealed = SealedFile::parse(&bytes).map_err(|e| fail(e.code(), &e))?;
    let region = args
        .region
        .clone()
        .ok_or("--region (or AWS_REGION) is required with --sealed-settings")?;
    let credentials = match &args.kms_credentials {
        Some(dial) => credentials::fetch(dial)
            .await
            .map_err(|e| fail("kms_credentials", &e))?,
        None => client::credentials_from_env().map_err(|e| fail("kms_credentials", &e))?,
    };
    if args.kms_proxy.is_none() && args.kms_endpoint.is_none() {
        return Err(
            "--sealed-settings needs --kms-proxy (in an enclave) or --kms-endpoint (local runs)"
                .into(),
        );
    }
    let target = KmsTarget {
        region,
        endpoint: args.kms_endpoint.clone(),
        tunnel: args.kms_proxy.clone(),
    };
    let kms = client::client(&target, credentials).map_err(|e| fail("kms_endpoint", &e))?;
    unseal::unseal(&sealed, nsm, &kms)
        .await
        .map_err(|e| fail(e.code(), &e))
}
