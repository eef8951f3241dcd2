//! `confidant-relay`: the blind front door on the parent instance.
//!
//! QUIC (ALPN `confidant/1`) in; each bidirectional stream carried to an enclave over a bounded pool
//! of link connections (vsock in production, TCP or a Unix socket locally), both directions, with
//! backpressure, without reading what the streams carry beyond a leading `ROUTE` frame. With several
//! enclaves (`--upstream` repeated), new exchanges go to the least loaded live one and routed streams
//! to the one they name (`upstreams`). Caps per source address and in all keep one client from
//! starving the others. When it cannot serve a stream it says why with an `ERROR` frame of its own
//! (`enclave_unreachable`, `enclave_unknown`, `relay_overloaded`, `frame_deadline`). It logs counts,
//! byte counts and durations, never payload, serves them for a load balancer and Prometheus
//! (`--metrics`), and drains on SIGTERM as on SIGINT.

mod boot_reports;
mod fault;
mod limits;
mod metrics;
mod releases;
mod tls;
mod upstream;
mod upstreams;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::frame::{Frame, FrameType, HEADER_LEN};
use confidant_protocol::{Code, ALPN};
use tokio::sync::Semaphore;

use crate::fault::Fault;
use crate::limits::{Caps, Limits};
use crate::metrics::Counters;
use crate::upstream::Down;
use crate::upstreams::{NoUpstream, Upstreams};

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
    /// An enclave: vsock:CID:PORT, tcp:HOST:PORT or unix:PATH; repeat for several (a parent instance
    /// runs up to four).
    #[arg(long = "upstream", value_name = "ENDPOINT", required = true)]
    upstreams: Vec<Endpoint>,
    /// Seconds between health probes of each enclave (a failed probe takes it out of rotation).
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    health_interval: u64,
    /// TCP address of the health and metrics endpoint (GET /health, GET /metrics), for a load
    /// balancer's health check and Prometheus; off unless given.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Where enclaves report boot failures (vsock:PORT on the parent, e.g. vsock:5006; tcp: or unix:
    /// locally): logged and counted by code, since a production enclave has no console.
    #[arg(long, value_name = "ENDPOINT")]
    boot_reports: Option<Endpoint>,
    /// A signed release manifest (`confidant-ops release-sign`) to serve to clients that pin the
    /// release key; repeatable (during a rollout, the old and the new). Read for every request.
    #[arg(long = "release-manifest", value_name = "FILE")]
    release_manifests: Vec<PathBuf>,
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
    /// A name (DNS name or IP address) the self-signed certificate also covers, besides localhost,
    /// 127.0.0.1 and ::1; repeatable.
    #[arg(
        long = "self-signed-name",
        value_name = "NAME",
        requires = "self_signed"
    )]
    self_signed_names: Vec<String>,
    /// Seconds between checks of the certificate files: a renewed certificate is served without a
    /// restart (0: never reload).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    cert_reload: u64,
    /// Connections at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Connections at once from one source address (many users may share one behind NAT).
    #[arg(long, default_value_t = 64)]
    max_connections_per_source: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    max_streams_per_connection: u32,
    /// Concurrent streams from one source address, over all its connections.
    #[arg(long, default_value_t = 256)]
    max_streams_per_source: usize,
    /// Concurrent streams in all.
    #[arg(long, default_value_t = 4096)]
    max_streams: usize,
    /// Link connections to each enclave that carry every stream.
    #[arg(long, default_value_t = 4)]
    upstream_connections: usize,
    /// Bytes one stream may carry in each direction.
    #[arg(long, default_value_t = 16 << 20)]
    max_stream_bytes: u64,
    /// Seconds a connection may stay silent.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// TEST ONLY: corrupt enclave-to-client bytes (flip:OFFSET, drop:OFFSET:LEN, reorder:OFFSET:LEN).
    #[arg(long, hide = true, value_name = "FAULT")]
    fault_test_only: Option<Fault>,
    /// TEST ONLY: append every byte relayed, both directions, to FILE (to show they are ciphertext).
    #[arg(long, hide = true, value_name = "FILE")]
    capture_test_only: Option<PathBuf>,
}

/// Most upstreams one relay takes.
const MAX_UPSTREAMS: usize = 16;
/// A stream must deliver its first frame header (and a `ROUTE` body) within this; the enclave's own
/// frame deadlines apply after.
const FIRST_FRAME_DEADLINE: Duration = Duration::from_secs(10);

struct Relay {
    capture: Option<Arc<std::sync::Mutex<std::fs::File>>>,
    upstreams: Arc<Upstreams>,
    limits: Arc<Limits>,
    max_stream_bytes: u64,
    fault: Option<Fault>,
    counters: Arc<Counters>,
    releases: releases::Releases,
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

/// SIGINT or SIGTERM (what systemd sends): either starts the drain.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (cert, key) = match (&args.cert, &args.key, &args.self_signed) {
        (Some(c), Some(k), None) => (c.clone(), k.clone()),
        (None, None, Some(dir)) => tls::self_signed(dir, &args.self_signed_names)?,
        _ => return Err("give --cert and --key, or --self-signed DIR".into()),
    };
    let certificate = tls::Reloading::new(cert, key)?;
    if args.cert_reload > 0 {
        let certificate = certificate.clone();
        let every = Duration::from_secs(args.cert_reload);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match certificate.refresh() {
                    Ok(true) => tracing::info!("reloaded the TLS certificate"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        "the TLS certificate did not reload, keeping the old one: {e}"
                    ),
                }
            }
        });
    }
    let mut crypto = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(certificate);
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
    if args.upstreams.len() > MAX_UPSTREAMS {
        return Err(format!("at most {MAX_UPSTREAMS} --upstream"));
    }
    let upstreams = Arc::new(Upstreams::new(
        args.upstreams.clone(),
        args.upstream_connections,
        Duration::from_secs(2),
    ));
    // Learn the enclaves' instance ids before the first client arrives, then keep probing.
    upstreams.probe_all().await;
    upstreams.spawn_prober(Duration::from_secs(args.health_interval.max(1)));
    let relay = Arc::new(Relay {
        capture,
        upstreams: upstreams.clone(),
        limits: Limits::new(Caps {
            connections_per_source: args.max_connections_per_source,
            streams_per_source: args.max_streams_per_source,
            streams_total: args.max_streams,
        }),
        max_stream_bytes: args.max_stream_bytes,
        fault: args.fault_test_only.clone(),
        counters: Arc::new(Counters::default()),
        releases: releases::Releases::new(args.release_manifests.clone())?,
    });
    let boot_failures = Arc::new(boot_reports::BootFailures::default());
    if let Some(endpoint) = &args.boot_reports {
        boot_reports::listen(endpoint, boot_failures.clone()).await?;
    }
    let metrics_addr = match args.metrics {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--metrics {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tokio::spawn(metrics::serve(
                listener,
                Arc::new(metrics::Sources {
                    counters: relay.counters.clone(),
                    upstreams,
                    limits: relay.limits.clone(),
                    boot_failures,
                }),
            ));
            format!(" metrics tcp:{local}")
        }
        None => String::new(),
    };
    let local = endpoint.local_addr().map_err(|e| e.to_string())?;
    let names: Vec<String> = args.upstreams.iter().map(ToString::to_string).collect();
    println!(
        "listening udp:{local} upstream {}{metrics_addr}",
        names.join(",")
    );
    if relay.fault.is_some() {
        tracing::warn!("fault injection is ON: this relay corrupts answers (test only)");
    }
    let permits = Arc::new(Semaphore::new(args.max_connections));
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                incoming.refuse();
                relay
                    .counters
                    .refused_overloaded
                    .fetch_add(1, Ordering::Relaxed);
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
        () = shutdown_signal() => {
            tracing::info!("shutting down: no new connections; draining streams");
            endpoint.set_server_config(None);
        }
    }
    // Graceful: streams in flight finish (bounded), then the connections close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.limits.streams() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    endpoint.close(0u32.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let c = &relay.counters;
    tracing::info!(
        connections = c.connections.load(Ordering::Relaxed),
        streams = c.streams.load(Ordering::Relaxed),
        bytes_up = c.bytes_up.load(Ordering::Relaxed),
        bytes_down = c.bytes_down.load(Ordering::Relaxed),
        refused_overloaded = c.refused_overloaded.load(Ordering::Relaxed),
        refused_unreachable = c.refused_unreachable.load(Ordering::Relaxed),
        refused_unknown = c.refused_unknown.load(Ordering::Relaxed),
        "stopped"
    );
    Ok(())
}

async fn serve_connection(relay: Arc<Relay>, conn: quinn::Connection) {
    let started = Instant::now();
    let source = conn.remote_address().ip();
    let Some(_slot) = relay.limits.connection(source) else {
        relay
            .counters
            .refused_overloaded
            .fetch_add(1, Ordering::Relaxed);
        conn.close(0u32.into(), Code::RelayOverloaded.as_str().as_bytes());
        return;
    };
    let n = relay.counters.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let mut streams = 0u64;
    while let Ok((send, recv)) = conn.accept_bi().await {
        streams += 1;
        let relay = relay.clone();
        tokio::spawn(async move { relay_stream(relay, source, send, recv).await });
    }
    tracing::info!(
        connection = n,
        streams,
        ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
}

/// Answers a stream the relay cannot carry with its own `ERROR` frame, counted under `counter`.
async fn refuse(counter: &AtomicU64, mut send: quinn::SendStream, code: Code, message: &str) {
    counter.fetch_add(1, Ordering::Relaxed);
    let frame = Frame::Error {
        code,
        message: message.into(),
    };
    let _ = send.write_all(&frame.encode()).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Answers a `RELEASE` request with the manifests served.
async fn serve_releases(relay: &Relay, mut send: quinn::SendStream) {
    match relay.releases.frame() {
        Ok(frame) => {
            let _ = send.write_all(&frame.encode()).await;
            let _ = send.finish();
            let _ = send.stopped().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "release manifests unreadable");
            refuse(
                &relay.counters.refused_unreachable,
                send,
                Code::Internal,
                "the relay cannot read its release manifests",
            )
            .await;
        }
    }
}

/// Reads the stream's first frame header and, when it is a `ROUTE`, its body. Returns the bytes read
/// (forwarded as they are: the enclave checks the route names it) and the route.
async fn first_frame(recv: &mut quinn::RecvStream) -> Result<(Vec<u8>, Option<[u8; 16]>), ()> {
    let mut head = vec![0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        // Shorter than a header: the enclave says what is wrong with it.
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            head.truncate(n);
            return Ok((head, None));
        }
        Err(quinn::ReadExactError::ReadError(_)) => return Err(()),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if head[0] != FrameType::Route as u8 || len != 16 {
        return Ok((head, None));
    }
    let mut id = [0u8; 16];
    match recv.read_exact(&mut id).await {
        Ok(()) => {
            head.extend_from_slice(&id);
            Ok((head, Some(id)))
        }
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            head.extend_from_slice(&id[..n]);
            Ok((head, None))
        }
        Err(quinn::ReadExactError::ReadError(_)) => Err(()),
    }
}

async fn relay_stream(
    relay: Arc<Relay>,
    source: IpAddr,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = Instant::now();
    relay.counters.streams.fetch_add(1, Ordering::Relaxed);
    let Some(_slot) = relay.limits.stream(source) else {
        return refuse(
            &relay.counters.refused_overloaded,
            send,
            Code::RelayOverloaded,
            "too many streams from this source or in all; retry shortly",
        )
        .await;
    };
    let (prefix, route) =
        match tokio::time::timeout(FIRST_FRAME_DEADLINE, first_frame(&mut recv)).await {
            Ok(Ok(first)) => first,
            Ok(Err(())) => return,
            Err(_) => {
                return refuse(
                    &relay.counters.first_frame_deadlines,
                    send,
                    Code::FrameDeadline,
                    "no frame header within the relay's deadline",
                )
                .await;
            }
        };
    if prefix.len() == HEADER_LEN && prefix[0] == FrameType::Release as u8 && prefix[1..] == [0; 4]
    {
        return serve_releases(&relay, send).await;
    }
    let mut opened = match relay.upstreams.open(route).await {
        Ok(o) => o,
        Err(NoUpstream::Unknown) => {
            return refuse(
                &relay.counters.refused_unknown,
                send,
                Code::EnclaveUnknown,
                "the enclave this exchange was for is not behind this relay; attest again",
            )
            .await;
        }
        Err(NoUpstream::Unreachable) => {
            tracing::warn!("upstream unreachable");
            return refuse(
                &relay.counters.refused_unreachable,
                send,
                Code::EnclaveUnreachable,
                "the relay cannot reach the enclave",
            )
            .await;
        }
    };
    capture(&relay, &prefix);
    if opened.link.send(&prefix).await.is_err() {
        return refuse(
            &relay.counters.refused_unreachable,
            send,
            Code::EnclaveUnreachable,
            "the relay lost the enclave",
        )
        .await;
    }
    let link = &mut opened.link;
    let up = up(&relay, recv, link, prefix.len() as u64);
    let down = down(&relay, send, &mut opened.down);
    let ((up_bytes, up_end), (down_bytes, down_end)) = tokio::join!(up, down);
    if up_end == "eof" && down_end == "eof" {
        opened.link.complete();
    }
    relay
        .counters
        .bytes_up
        .fetch_add(up_bytes, Ordering::Relaxed);
    relay
        .counters
        .bytes_down
        .fetch_add(down_bytes, Ordering::Relaxed);
    tracing::info!(
        bytes_up = up_bytes,
        bytes_down = down_bytes,
        ms = started.elapsed().as_millis() as u64,
        up = up_end,
        down = down_end,
        "stream"
    );
}

fn capture(relay: &Relay, bytes: &[u8]) {
    if let Some(c) = &relay.capture {
        use std::io::Write;
        if let Ok(mut f) = c.lock() {
            let _ = f.write_all(bytes);
        }
    }
}

/// Client → enclave: until the client finishes, the byte limit, or an error.
async fn up(
    relay: &Relay,
    mut recv: quinn::RecvStream,
    link: &mut upstream::LinkStream,
    already: u64,
) -> (u64, &'static str) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut bytes = already;
    let end = loop {
        match recv.read(&mut buf).await {
            Ok(None) => {
                link.finish().await;
                break "eof";
            }
            Ok(Some(n)) => {
                bytes += n as u64;
                if bytes > relay.max_stream_bytes {
                    break "stream byte limit";
                }
                capture(relay, &buf[..n]);
                tracing::trace!(bytes = n, "up");
                if link.send(&buf[..n]).await.is_err() {
                    break "link lost";
                }
            }
            Err(_) => break "read error",
        }
    };
    (bytes, end)
}

/// Enclave → client: until the enclave finishes, or the link or the client goes.
async fn down(
    relay: &Relay,
    mut send: quinn::SendStream,
    down: &mut tokio::sync::mpsc::Receiver<Down>,
) -> (u64, &'static str) {
    let mut fault = relay.fault.clone();
    let mut bytes = 0u64;
    let end = loop {
        match down.recv().await {
            Some(Down::Data(data)) => {
                let start = bytes;
                bytes += data.len() as u64;
                if bytes > relay.max_stream_bytes {
                    let _ = send.reset(1u32.into());
                    break "stream byte limit";
                }
                capture(relay, &data);
                tracing::trace!(bytes = data.len(), "down");
                let out = match fault.as_mut() {
                    Some(f) => f.apply(start, &data),
                    None => data,
                };
                if send.write_all(&out).await.is_err() {
                    break "write error";
                }
            }
            Some(Down::Fin) => {
                if let Some(f) = fault.as_mut() {
                    let _ = send.write_all(&f.flush()).await;
                }
                let _ = send.finish();
                let _ = send.stopped().await;
                break "eof";
            }
            None if bytes == 0 => {
                // Lost before anything came back: say so.
                refuse(
                    &relay.counters.refused_unreachable,
                    send,
                    Code::EnclaveUnreachable,
                    "the relay lost the enclave",
                )
                .await;
                return (0, "link lost");
            }
            None => {
                // Lost mid-answer: the client sees the stream cut and reports the answer incomplete.
                let _ = send.reset(RESET_ENCLAVE_LOST.into());
                break "link lost";
            }
        }
    };
    (bytes, end)
}

/// The QUIC reset code of a stream whose enclave went away mid-answer.
const RESET_ENCLAVE_LOST: u32 = 1;
