//! The QUIC connection to the relay (ALPN `confidant/1`), and one exchange per bidirectional stream.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::ALPN;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::remote::RemoteError;

/// How long the client waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the QUIC connection to the relay.
    pub connect: Duration,
    /// For a whole exchange (a question and its full answer), however the bytes trickle in.
    pub exchange: Duration,
    /// Without any byte from the other side, within an exchange.
    pub silence: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            exchange: Duration::from_secs(120),
            silence: Duration::from_secs(30),
        }
    }
}

/// A connection to the relay.
pub struct Relay {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    timeouts: Timeouts,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("remote", &self.conn.remote_address())
            .finish()
    }
}

fn roots(relay_ca: Option<&Path>) -> Result<rustls::RootCertStore, RemoteError> {
    let mut store = rustls::RootCertStore::empty();
    match relay_ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| RemoteError::Setup(format!("{}: {e}", path.display())))?
            {
                let cert =
                    cert.map_err(|e| RemoteError::Setup(format!("{}: {e}", path.display())))?;
                store
                    .add(cert)
                    .map_err(|e| RemoteError::Setup(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    if store.is_empty() {
        return Err(RemoteError::Setup(match relay_ca {
            Some(path) => format!(
                "--relay-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
                path.display()
            ),
            None => "no system CA certificates to check the relay with; give --relay-ca PEM".into(),
        }));
    }
    Ok(store)
}

impl Relay {
    pub async fn connect(
        relay: &str,
        relay_ca: Option<&Path>,
        timeouts: Timeouts,
    ) -> Result<Relay, RemoteError> {
        let (host, _) = relay
            .rsplit_once(':')
            .ok_or_else(|| RemoteError::Setup(format!("--relay {relay:?}: expected HOST:PORT")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addr = relay
            .to_socket_addrs()
            .map_err(|e| RemoteError::Connect(format!("{relay}: {e}")))?
            .next()
            .ok_or_else(|| RemoteError::Connect(format!("{relay}: no address")))?;
        let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RemoteError::Setup(e.to_string()))?
        .with_root_certificates(roots(relay_ca)?)
        .with_no_client_auth();
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                .map_err(|e| RemoteError::Setup(e.to_string()))?,
        ));
        let mut transport = quinn::TransportConfig::default();
        transport
            .stream_receive_window((4u32 << 20).into())
            .receive_window((16u32 << 20).into())
            .max_idle_timeout(Some(
                Duration::from_secs(60)
                    .try_into()
                    .map_err(|_| RemoteError::Setup("timeout".into()))?,
            ))
            .keep_alive_interval(Some(Duration::from_secs(10)));
        config.transport_config(Arc::new(transport));
        let bind: std::net::SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| RemoteError::Setup("bind".into()))?;
        let mut endpoint =
            quinn::Endpoint::client(bind).map_err(|e| RemoteError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(addr, host)
            .map_err(|e| RemoteError::Connect(format!("{relay}: {e}")))?;
        let conn = tokio::time::timeout(timeouts.connect, connecting)
            .await
            .map_err(|_| {
                RemoteError::Connect(format!(
                    "{relay}: no answer within {} s (is the relay running? --connect-timeout)",
                    timeouts.connect.as_secs()
                ))
            })?
            .map_err(|e| connection_error(relay, &e))?;
        Ok(Relay {
            conn,
            _endpoint: endpoint,
            timeouts,
        })
    }

    /// Sends `frame` on a fresh stream and returns a reader of the reply frames. The whole exchange
    /// must end within the exchange timeout.
    pub async fn exchange(&self, frame: &Frame) -> Result<FrameReader, RemoteError> {
        self.exchange_routed(None, frame).await
    }

    /// [`Relay::exchange`], the stream led by a `ROUTE` frame naming the enclave instance `route`
    /// (which a relay with several enclaves uses to pick the one holding the keys).
    pub async fn exchange_routed(
        &self,
        route: Option<[u8; 16]>,
        frame: &Frame,
    ) -> Result<FrameReader, RemoteError> {
        let mut bytes = Vec::new();
        if let Some(enclave) = route {
            Frame::Route { enclave }.encode_into(&mut bytes);
        }
        frame.encode_into(&mut bytes);
        let deadline = tokio::time::Instant::now() + self.timeouts.exchange;
        let write = async {
            let (mut send, recv) = self
                .conn
                .open_bi()
                .await
                .map_err(|e| stream_error(&e.into()))?;
            send.write_all(&bytes).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => connection_error("the relay", &c),
                other => RemoteError::Connect(format!("stream failed: {other}")),
            })?;
            send.finish()
                .map_err(|e| RemoteError::Connect(e.to_string()))?;
            Ok::<_, RemoteError>(recv)
        };
        let recv = tokio::time::timeout_at(deadline, write)
            .await
            .map_err(|_| RemoteError::Timeout(self.timeouts.exchange))??;
        Ok(FrameReader {
            recv,
            decoder: FrameDecoder::default(),
            buf: vec![0u8; 16 * 1024],
            eof: false,
            deadline,
            timeouts: self.timeouts,
        })
    }

    pub fn close(&self) {
        self.conn.close(0u32.into(), b"done");
    }
}

/// Frames arriving on one stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    eof: bool,
    deadline: tokio::time::Instant,
    timeouts: Timeouts,
}

/// The QUIC reset code the relay uses when it lost the enclave mid-answer.
const RESET_ENCLAVE_LOST: u32 = 1;

/// A lost connection: the relay's reason when it gave one (`relay_overloaded`), else unreachable.
fn connection_error(relay: &str, e: &quinn::ConnectionError) -> RemoteError {
    if let quinn::ConnectionError::ApplicationClosed(close) = e {
        if let Some(code) = std::str::from_utf8(&close.reason)
            .ok()
            .and_then(confidant_protocol::Code::from_wire)
        {
            return RemoteError::Refused {
                code,
                message: "the relay closed the connection".into(),
            };
        }
    }
    RemoteError::Connect(format!("{relay}: {e}"))
}

/// A failed stream, in the registry's terms where the relay gave a reason.
fn stream_error(e: &quinn::ReadError) -> RemoteError {
    match e {
        quinn::ReadError::Reset(code) if u64::from(*code) == u64::from(RESET_ENCLAVE_LOST) => {
            RemoteError::Refused {
                code: confidant_protocol::Code::EnclaveUnreachable,
                message: "the relay lost the enclave mid-answer".into(),
            }
        }
        quinn::ReadError::ConnectionLost(c) => connection_error("the relay", c),
        other => RemoteError::Connect(format!("stream failed: {other}")),
    }
}

impl FrameReader {
    /// The next frame; `None` at a clean end of stream. A stream cut inside a frame is an error.
    pub async fn next(&mut self) -> Result<Option<Frame>, RemoteError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(Some(frame));
            }
            if self.eof {
                self.decoder.finish()?;
                return Ok(None);
            }
            let silence = tokio::time::Instant::now() + self.timeouts.silence;
            let read = self.recv.read(&mut self.buf);
            match tokio::time::timeout_at(silence.min(self.deadline), read).await {
                Err(_) if tokio::time::Instant::now() >= self.deadline => {
                    return Err(RemoteError::Timeout(self.timeouts.exchange))
                }
                Err(_) => {
                    return Err(RemoteError::Connect(format!(
                        "no data from the enclave for {} s",
                        self.timeouts.silence.as_secs()
                    )))
                }
                Ok(Err(e)) => return Err(stream_error(&e)),
                Ok(Ok(None)) => self.eof = true,
                Ok(Ok(Some(n))) => self.decoder.push(&self.buf[..n]),
            }
        }
    }
}
