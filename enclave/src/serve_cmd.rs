//! `confidant-enclave serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
    /// TEST ONLY (emulated NSM): stamp documents this many seconds in the past.
    #[arg(long, hide = true, default_value_t = 0)]
    backdate_documents_test_only: u64,
}

pub fn run(args: ServeArgs) -> Result<u8, String> {
    if args.key_ttl < 10 {
        return Err("--key-ttl must be at least 10 seconds".into());
    }
    let model = LoadedModel::load(&args.model, args.dtype)
        .map_err(|e| format!("loading the model: {e}"))?;
    let digest = model.digest;
    let nsm: Box<dyn Nsm> = match args.nsm {
        NsmKind::Device => Box::new(DeviceNsm::open().map_err(|e| e.to_string())?),
        NsmKind::Emulated => {
            let dir = args
                .dev_ca
                .as_ref()
                .ok_or("--nsm emulated needs --dev-ca DIR")?;
            let pcrs = measure::this_binary_pcrs(&digest)
                .map_err(|e| format!("measuring this binary: {e}"))?;
            Box::new(
                EmulatedNsm::load(dir, pcrs)
                    .map_err(|e| e.to_string())?
                    .backdated(args.backdate_documents_test_only),
            )
        }
    };
    let worker = Worker::spawn(model, args.queue, args.threads).map_err(|e| e.to_string())?;
    let config = ServeConfig {
        key_ttl_secs: args.key_ttl,
        session_limits: SessionLimits {
            idle_ms: args.session_idle * 1000,
            absolute_ms: args.session_max * 1000,
        },
        ..ServeConfig::default()
    };
    let enclave = Arc::new(Enclave::new(nsm, digest, None, worker, config));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
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
