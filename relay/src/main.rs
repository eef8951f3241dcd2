//! `confidant-relay`: the blind front door on the parent instance.
//!
//! QUIC (ALPN `confidant/1`) in; each bidirectional stream piped to a fresh upstream connection to the
//! enclave (vsock in production, TCP or a Unix socket locally), both directions, with backpressure and
//! without parsing or buffering messages. It logs connection and stream counts, byte counts and
//! durations, never payload.

mod fault;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::ALPN;
use confidant_runtime::endpoint;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::fault::Fault;

#[derive(Debug, Parser)]
#[command(
    name = "confidant-relay",
    version,
    about = "Blind QUIC relay to a Confidant enclave"
)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// The enclave: vsock:CID:PORT, tcp:HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ENDPOINT")]
    upstream: Endpoint,
    /// TLS certificate chain (PEM).
    #[arg(
        long,
        value_name = "PEM",
        requires = "key",
        conflicts_with = "self_signed"
    )]
    cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Use (or make) a self-signed certificate in DIR; clients trust DIR/cert.pem with --relay-ca.
    #[arg(long, value_name = "DIR")]
    self_signed: Option<PathBuf>,
    /// Connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 64)]
    max_streams_per_connection: u32,
    /// Bytes one stream may carry in each direction.
    #[arg(long, default_value_t = 16 << 20)]
    max_stream_bytes: u64,
    /// Seconds a connection or stream may stay silent.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// TEST ONLY: corrupt enclave-to-client bytes (flip:OFFSET, drop:OFFSET:LEN, reorder:OFFSET:LEN).
    #[arg(long, hide = true, value_name = "FAULT")]
    fault_test_only: Option<Fault>,
    /// TEST ONLY: append every byte relayed, both directions, to FILE (to show they are ciphertext).
    #[arg(long, hide = true, value_name = "FILE")]
    capture_test_only: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    streams: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Relay {
    capture: Option<Arc<std::sync::Mutex<std::fs::File>>>,
    upstream: Endpoint,
    max_stream_bytes: u64,
    idle: Duration,
    fault: Option<Fault>,
    counters: Counters,
}

fn main() -> ExitCode {
    let args = Args::parse();
    confidant_runtime::logging::init();
    let runtime = match confidant_runtime::runtime(None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (certs, key) = match (&args.cert, &args.key, &args.self_signed) {
        (Some(c), Some(k), None) => tls::load(c, k)?,
        (None, None, Some(dir)) => tls::self_signed(dir)?,
        _ => return Err("give --cert and --key, or --self-signed DIR".into()),
    };
    let mut crypto = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("certificate: {e}"))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| e.to_string())?,
    ));
    let mut transport = quinn::TransportConfig::default();
    // Windows large enough that one stream carries a long answer without stalling on flow control.
    transport
        .max_concurrent_bidi_streams(args.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((4u32 << 20).into())
        .receive_window((16u32 << 20).into())
        .send_window(16 << 20)
        .max_idle_timeout(Some(
            Duration::from_secs(args.idle_timeout)
                .try_into()
                .map_err(|_| "--idle-timeout too large")?,
        ))
        .keep_alive_interval(Some(Duration::from_secs(10)));
    server.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(server, args.listen)
        .map_err(|e| format!("{}: {e}", args.listen))?;
    let capture = match &args.capture_test_only {
        Some(path) => Some(Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ))),
        None => None,
    };
    let relay = Arc::new(Relay {
        capture,
        upstream: args.upstream.clone(),
        max_stream_bytes: args.max_stream_bytes,
        idle: Duration::from_secs(args.idle_timeout),
        fault: args.fault_test_only.clone(),
        counters: Counters::default(),
    });
    let local = endpoint.local_addr().map_err(|e| e.to_string())?;
    println!("listening udp:{local} upstream {}", args.upstream);
    if relay.fault.is_some() {
        tracing::warn!("fault injection is ON: this relay corrupts answers (test only)");
    }
    let permits = Arc::new(Semaphore::new(args.max_connections));
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                incoming.refuse();
                tracing::warn!("connection refused: at --max-connections");
                continue;
            };
            let relay = relay.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    serve_connection(relay, conn).await;
                }
                drop(permit);
            });
        }
    };
    tokio::select! {
        () = accept => {}
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down: no new connections; draining streams");
            endpoint.set_server_config(None);
            endpoint.close(0u32.into(), b"relay shutting down");
        }
    }
    // Graceful: wait (bounded) for connections to finish.
    let _ = tokio::time::timeout(Duration::from_secs(10), endpoint.wait_idle()).await;
    let c = &relay.counters;
    tracing::info!(
        connections = c.connections.load(Ordering::Relaxed),
        streams = c.streams.load(Ordering::Relaxed),
        bytes_up = c.bytes_up.load(Ordering::Relaxed),
        bytes_down = c.bytes_down.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

async fn serve_connection(relay: Arc<Relay>, conn: quinn::Connection) {
    let started = Instant::now();
    let n = relay.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let mut streams = 0u64;
    while let Ok((send, recv)) = conn.accept_bi().await {
        streams += 1;
        let relay = relay.clone();
        tokio::spawn(async move { relay_stream(relay, send, recv).await });
    }
    tracing::info!(
        connection = n,
        streams,
        ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

async fn relay_stream(relay: Arc<Relay>, mut send: quinn::SendStream, recv: quinn::RecvStream) {
    let started = Instant::now();
    relay.counters.streams.fetch_add(1, Ordering::Relaxed);
    let upstream = match endpoint::connect(&relay.upstream).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            let _ = send.reset(1u32.into());
            return;
        }
    };
    let (up_rd, up_wr) = tokio::io::split(upstream);
    let up = copy(
        recv,
        up_wr,
        relay.max_stream_bytes,
        relay.idle,
        None,
        relay.capture.clone(),
    );
    let down = copy(
        up_rd,
        send,
        relay.max_stream_bytes,
        relay.idle,
        relay.fault.clone(),
        relay.capture.clone(),
    );
    let (up, down) = tokio::join!(up, down);
    relay
        .counters
        .bytes_up
        .fetch_add(up.bytes, Ordering::Relaxed);
    relay
        .counters
        .bytes_down
        .fetch_add(down.bytes, Ordering::Relaxed);
    tracing::info!(
        bytes_up = up.bytes,
        bytes_down = down.bytes,
        ms = started.elapsed().as_millis() as u64,
        up = up.end,
        down = down.end,
        "stream"
    );
}

struct Copied {
    bytes: u64,
    end: &'static str,
}

/// Copies until EOF, a limit, silence or an error; closes the writer either way. Backpressure: one
/// buffer in flight, the next read waits for the write.
async fn copy<R, W>(
    mut r: R,
    mut w: W,
    limit: u64,
    idle: Duration,
    mut fault: Option<Fault>,
    capture: Option<Arc<std::sync::Mutex<std::fs::File>>>,
) -> Copied
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    let end = loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(Ok(0)) => break "eof",
            Ok(Ok(n)) => n,
            Ok(Err(_)) => break "read error",
            Err(_) => break "idle timeout",
        };
        bytes += n as u64;
        if bytes > limit {
            break "stream byte limit";
        }
        let out = match fault.as_mut() {
            Some(f) => f.apply(bytes - n as u64, &buf[..n]),
            None => buf[..n].to_vec(),
        };
        if let Some(c) = &capture {
            use std::io::Write;
            if let Ok(mut f) = c.lock() {
                let _ = f.write_all(&buf[..n]);
            }
        }
        if w.write_all(&out).await.is_err() {
            break "write error";
        }
    };
    if let Some(f) = fault.as_mut() {
        let _ = w.write_all(&f.flush()).await;
    }
    let _ = w.shutdown().await;
    Copied { bytes, end }
}
