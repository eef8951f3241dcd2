//! Relay benchmark, one JSON object: the latency a relay adds to a 1 KiB exchange against the same
//! exchange sent straight to the upstream over one link connection (the upstream is a 1 KiB echo that
//! speaks the link protocol, as the enclave does), and exchanges per second over 64 concurrent streams
//! of one QUIC connection.
//!
//! `cargo build --release -p confidant-relay && cargo run --release -p confidant-relay --example bench-relay`

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confidant_protocol::link::{self, Kind, LinkDecoder};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 1024;

/// An upstream that speaks the link protocol and echoes each stream's bytes back, then finishes it.
async fn echo_server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.into_split();
                let mut preamble = [0u8; 8];
                if rd.read_exact(&mut preamble).await.is_err() || &preamble != link::PREAMBLE {
                    return;
                }
                let mut dec = LinkDecoder::default();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    dec.push(&buf[..n]);
                    let mut out = Vec::new();
                    while let Some(f) = dec.next_frame().unwrap() {
                        match f.kind {
                            Kind::Data => link::encode_data(f.stream, &f.payload, &mut out),
                            Kind::Fin => link::encode_control(f.stream, Kind::Fin, &mut out),
                            Kind::Open | Kind::Reset => {}
                        }
                    }
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let relay_bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("confidant-relay");
    let mut relay = std::process::Command::new(&relay_bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("tcp:{echo}"),
            "--self-signed",
        ])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (build it first)", relay_bin.display()));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(relay.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let relay_addr: std::net::SocketAddr = line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_start_matches("udp:")
        .parse()
        .unwrap();

    let payload = vec![0x5au8; SIZE];
    // Direct: one link connection, a stream per exchange (OPEN, DATA, FIN; back DATA, FIN).
    let mut direct = Vec::with_capacity(n);
    let mut s = tokio::net::TcpStream::connect(echo).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(link::PREAMBLE).await.unwrap();
    for id in 0..n as u32 {
        let t = Instant::now();
        let mut out = Vec::new();
        link::encode_control(id, Kind::Open, &mut out);
        link::encode_data(id, &payload, &mut out);
        link::encode_control(id, Kind::Fin, &mut out);
        s.write_all(&out).await.unwrap();
        let mut back = vec![0u8; 2 * link::HEADER_LEN + SIZE];
        s.read_exact(&mut back).await.unwrap();
        direct.push(t.elapsed().as_secs_f64() * 1e6);
    }

    // Through the relay: one QUIC connection, a stream per exchange.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(dir.path().join("cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    crypto.alpn_protocols = vec![b"confidant/1".to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(relay_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let exchange = |conn: quinn::Connection, payload: Vec<u8>| async move {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&payload).await.unwrap();
        send.finish().unwrap();
        let back = recv.read_to_end(SIZE * 2).await.unwrap();
        assert_eq!(back.len(), SIZE);
    };
    let mut relayed = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        exchange(conn.clone(), payload.clone()).await;
        relayed.push(t.elapsed().as_secs_f64() * 1e6);
    }

    // Throughput: 64 streams at a time for `secs` seconds.
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (conn, done, payload) = (conn.clone(), done.clone(), payload.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    exchange(conn.clone(), payload.clone()).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let per_s = done.load(Ordering::Relaxed) as f64 / secs as f64;
    conn.close(0u32.into(), b"");
    let _ = relay.kill();
    let _ = relay.wait();
    let (d, r) = (median(direct), median(relayed));
    println!(
        "{}",
        serde_json::json!({
            "exchange_bytes": SIZE, "samples": n,
            "direct_tcp_median_us": d, "relayed_median_us": r, "added_latency_median_us": r - d,
            "exchanges_per_s_64_streams": per_s,
        })
    );
}
