//! `confidant-enclave serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use confidant_enclave::kms::client::{self, KmsTarget};
use confidant_enclave::kms::sealed::SealedFile;
use confidant_enclave::kms::settings::Settings;
use confidant_enclave::kms::{credentials, transport, unseal};
use confidant_enclave::model::worker::Worker;
use confidant_enclave::model::{Dtype, LoadedModel};
use confidant_enclave::nsm::{DeviceNsm, EmulatedNsm, Nsm};
use confidant_enclave::server::{Enclave, ServeConfig};
use confidant_enclave::{listen, measure};
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::session::SessionLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NsmKind {
    Device,
    Emulated,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: vsock:PORT, tcp:ADDR:PORT or unix:PATH.
    #[arg(long, value_name = "ENDPOINT")]
    listen: Endpoint,
    /// Model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The Nitro Security Module: the real /dev/nsm, or an emulation signing with --dev-ca.
    #[arg(long, value_enum, default_value = "device")]
    nsm: NsmKind,
    /// Development CA directory for --nsm emulated (made by `dev-ca`).
    #[arg(long, value_name = "DIR")]
    dev_ca: Option<PathBuf>,
    /// Lifetime of each key generation, in seconds (the previous one is honoured 5 more minutes).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    key_ttl: u64,
    /// libtorch intra-op threads.
    #[arg(long)]
    threads: Option<i32>,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Chat sessions: idle lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    session_idle: u64,
    /// Chat sessions: absolute lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    session_max: u64,
    /// Requests waiting for the model before new ones are refused as busy.
    #[arg(long, default_value_t = 64)]
    queue: usize,
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
    #[arg(long, hide = true, default_value_t = 0)]
    backdate_documents_test_only: u64,
}

pub fn run(args: ServeArgs) -> Result<u8, String> {
    if args.key_ttl < 10 {
        return Err("--key-ttl must be at least 10 seconds".into());
    }
    // The emulation measures the model as stored before anything is loaded, as Nitro measures the
    // image before boot; the settings (and a weights key) are unsealed before the model is loaded.
    let mut measured = None;
    let nsm: Box<dyn Nsm> = match args.nsm {
        NsmKind::Device => Box::new(DeviceNsm::open().map_err(|e| e.to_string())?),
        NsmKind::Emulated => {
            let dir = args
                .dev_ca
                .as_ref()
                .ok_or("--nsm emulated needs --dev-ca DIR")?;
            let stored = measure::stored_model_digest(&args.model)?;
            measured = Some(stored);
            let pcrs = measure::this_binary_pcrs(&stored)
                .map_err(|e| format!("measuring this binary: {e}"))?;
            Box::new(
                EmulatedNsm::load(dir, pcrs)
                    .map_err(|e| e.to_string())?
                    .backdated(args.backdate_documents_test_only),
            )
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut config = ServeConfig {
        key_ttl_secs: args.key_ttl,
        session_limits: SessionLimits {
            idle_ms: args.session_idle * 1000,
            absolute_ms: args.session_max * 1000,
        },
        ..ServeConfig::default()
    };
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
            config.system_prompt = settings.system_prompt.clone();
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
    let digest = model.digest;
    let worker = Worker::spawn(model, args.queue, args.threads).map_err(|e| e.to_string())?;
    let enclave = Arc::new(Enclave::new(nsm, digest, settings, worker, config));
    runtime.block_on(async move {
        let sweeper = enclave.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                sweeper.sweep();
            }
        });
        let model_digest = hex::encode(digest);
        let served = listen::run(enclave, &args.listen, |bound| {
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
