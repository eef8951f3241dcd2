//! The relay's counters and its health and metrics endpoint for a load balancer and Prometheus:
//! `GET /health` (200 while an enclave takes new exchanges, else 503) and `GET /metrics` (Prometheus
//! text format). Counts, byte counts and states only — never payload, never client addresses.
//!
//! A few lines of HTTP/1.1 by hand rather than a web framework: two fixed GET paths, no request body,
//! bounded reads and a deadline, which keeps a web stack out of the relay.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::boot_reports::BootFailures;
use crate::limits::Limits;
use crate::upstreams::Upstreams;

/// Monotonic counters since the relay started.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub streams: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub refused_overloaded: AtomicU64,
    pub refused_unreachable: AtomicU64,
    pub refused_unknown: AtomicU64,
    pub first_frame_deadlines: AtomicU64,
}

/// What the endpoint reads.
#[derive(Debug)]
pub struct Sources {
    pub counters: Arc<Counters>,
    pub upstreams: Arc<Upstreams>,
    /// Streams open now.
    pub limits: Arc<Limits>,
    pub boot_failures: Arc<BootFailures>,
}

/// Requests larger than this are refused (a GET line and a few headers fit easily).
const MAX_REQUEST: usize = 4096;
/// A scrape must arrive within this.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Scrapes served at once; more wait for the listener.
const MAX_SCRAPES: usize = 16;

/// Serves the endpoint until the relay stops.
pub async fn serve(listener: TcpListener, sources: Arc<Sources>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let response = match tokio::time::timeout(READ_DEADLINE, read_head(&mut conn)).await {
                Ok(Some(head)) => respond(&head, &sources),
                Ok(None) => reply(400, "text/plain", "bad request\n"),
                Err(_) => reply(408, "text/plain", "request timeout\n"),
            };
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
            drop(permit);
        });
    }
}

/// The request line and headers, up to the blank line.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(buf).ok();
        }
        if buf.len() > MAX_REQUEST {
            return None;
        }
    }
}

fn respond(head: &str, sources: &Sources) -> String {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    match (method, path) {
        (Some("GET"), Some("/health")) => {
            if sources.upstreams.any_up() {
                reply(200, "text/plain", "ok\n")
            } else {
                reply(503, "text/plain", "no enclave is up\n")
            }
        }
        (Some("GET"), Some("/metrics")) => reply(
            200,
            "text/plain; version=0.0.4",
            &render(
                &sources.counters,
                sources.limits.streams(),
                &sources.upstreams,
                &sources.boot_failures.snapshot(),
            ),
        ),
        (Some("GET"), _) => reply(404, "text/plain", "not found: /health or /metrics\n"),
        _ => reply(405, "text/plain", "only GET\n"),
    }
}

fn reply(status: u16, content_type: &str, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A label value escaped as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// The Prometheus text exposition.
pub fn render(
    c: &Counters,
    streams_open: usize,
    upstreams: &Upstreams,
    boot_failures: &[(String, u64)],
) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "confidant_relay_connections_total",
        "counter",
        "QUIC connections accepted.",
        &[(String::new(), load(&c.connections))],
    );
    metric(
        "confidant_relay_streams_total",
        "counter",
        "Client streams (exchanges) begun.",
        &[(String::new(), load(&c.streams))],
    );
    metric(
        "confidant_relay_streams_open",
        "gauge",
        "Client streams open now.",
        &[(String::new(), streams_open as u64)],
    );
    metric(
        "confidant_relay_bytes_total",
        "counter",
        "Bytes carried, client to enclave (up) and back (down).",
        &[
            ("{direction=\"up\"}".into(), load(&c.bytes_up)),
            ("{direction=\"down\"}".into(), load(&c.bytes_down)),
        ],
    );
    metric(
        "confidant_relay_refusals_total",
        "counter",
        "Streams or connections the relay answered itself, by wire code.",
        &[
            (
                "{code=\"relay_overloaded\"}".into(),
                load(&c.refused_overloaded),
            ),
            (
                "{code=\"enclave_unreachable\"}".into(),
                load(&c.refused_unreachable),
            ),
            (
                "{code=\"enclave_unknown\"}".into(),
                load(&c.refused_unknown),
            ),
            (
                "{code=\"frame_deadline\"}".into(),
                load(&c.first_frame_deadlines),
            ),
        ],
    );
    let status = upstreams.status();
    let per = |f: &dyn Fn(&crate::upstreams::UpstreamStatus) -> u64| -> Vec<(String, u64)> {
        status
            .iter()
            .map(|s| (format!("{{upstream=\"{}\"}}", label(&s.endpoint)), f(s)))
            .collect()
    };
    metric(
        "confidant_relay_upstream_up",
        "gauge",
        "1 while the upstream enclave answers its health probe with its engine alive.",
        &per(&|s| u64::from(s.health == crate::upstreams::Health::Up)),
    );
    metric(
        "confidant_relay_upstream_streams_open",
        "gauge",
        "Streams in flight to the upstream.",
        &per(&|s| s.in_flight as u64),
    );
    metric(
        "confidant_relay_upstream_streams_total",
        "counter",
        "Streams opened to the upstream.",
        &per(&|s| s.streams),
    );
    metric(
        "confidant_relay_upstream_probe_failures_total",
        "counter",
        "Health probes the upstream did not answer.",
        &per(&|s| s.probe_failures),
    );
    metric(
        "confidant_relay_enclave_boot_failures_total",
        "counter",
        "Boot failures enclaves reported (--boot-reports), by stable code.",
        &boot_failures
            .iter()
            .map(|(code, n)| (format!("{{code=\"{}\"}}", label(code)), *n))
            .collect::<Vec<_>>(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_well_formed_and_labels_are_escaped() {
        let ups = Upstreams::new(
            vec![
                "unix:/tmp/a\"b".parse().unwrap(),
                "tcp:127.0.0.1:1".parse().unwrap(),
            ],
            1,
            Duration::from_millis(100),
        );
        let c = Counters::default();
        c.streams.store(7, Ordering::Relaxed);
        let text = render(&c, 3, &ups, &[("kms_refused".into(), 2)]);
        assert!(text.contains("confidant_relay_streams_total 7\n"), "{text}");
        assert!(text.contains("confidant_relay_streams_open 3\n"), "{text}");
        assert!(
            text.contains("confidant_relay_enclave_boot_failures_total{code=\"kms_refused\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"confidant_relay_upstream_up{upstream="unix:/tmp/a\"b"} 0"#),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
            assert!(name_labels.starts_with("confidant_relay_"), "{line}");
        }
    }

    #[test]
    fn paths_and_methods() {
        let sources = Sources {
            counters: Arc::new(Counters::default()),
            upstreams: Arc::new(Upstreams::new(
                vec!["tcp:127.0.0.1:1".parse().unwrap()],
                1,
                Duration::from_millis(100),
            )),
            limits: Limits::new(crate::limits::Caps {
                connections_per_source: 1,
                streams_per_source: 1,
                streams_total: 1,
            }),
            boot_failures: Arc::default(),
        };
        let status = |head: &str| respond(head, &sources)[9..12].to_string();
        assert_eq!(
            status("GET /health HTTP/1.1\r\n\r\n"),
            "503",
            "nothing probed up"
        );
        assert_eq!(status("GET /metrics HTTP/1.1\r\n\r\n"), "200");
        assert_eq!(status("GET /secret HTTP/1.1\r\n\r\n"), "404");
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), "405");
    }
}
