//! HTTP for the KMS SDK from inside an enclave, which has no network: every request dials a fixed
//! tunnel — vsock to the parent's `vsock-proxy`, which forwards bytes to `kms.REGION.amazonaws.com:443`
//! — and TLS runs here, so the parent relays ciphertext only. TCP tunnels and plaintext exist for
//! tests and for the test KMS gate's hop to moto.
//!
//! One connection per request: the enclave calls KMS once at boot, so pooling would buy nothing.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where every connection goes, whatever the URL's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dial {
    /// The parent's vsock-proxy (parent CID is 3).
    Vsock { cid: u32, port: u32 },
    /// `host:port` (tests, local runs).
    Tcp(String),
}

/// Why a request could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the request URL has no host")]
    NoHost,
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("dialing {dial:?}: {source}")]
    Dial { dial: Dial, source: std::io::Error },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the request is not valid HTTP: {0}")]
    Request(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// A request body hyper can send from a spawned connection.
pub trait RequestBody:
    hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}
impl<B> RequestBody for B where
    B: hyper::body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An HTTP/1.1 client over a fixed tunnel, usable as the SDK's `http_client`.
#[derive(Clone)]
pub struct TunnelClient {
    dial: Dial,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl std::fmt::Debug for TunnelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelClient")
            .field("dial", &self.dial)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl TunnelClient {
    /// TLS to the URL's host, trusting the Mozilla roots built into the binary (an enclave has no
    /// certificate store), with AWS-LC.
    pub fn tls(dial: Dial) -> Result<TunnelClient, rustls::Error> {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Self::tls_with_roots(dial, roots)
    }

    /// TLS trusting `roots` only.
    pub fn tls_with_roots(
        dial: Dial,
        roots: rustls::RootCertStore,
    ) -> Result<TunnelClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TunnelClient {
            dial,
            tls: Some(Arc::new(config)),
            timeout: Duration::from_secs(30),
        })
    }

    /// Plain HTTP over the tunnel (loopback only: tests and the test KMS gate).
    pub fn plaintext(dial: Dial) -> TunnelClient {
        TunnelClient {
            dial,
            tls: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sends one request on a fresh connection, within the client's timeout.
    pub async fn send<B: RequestBody>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<Incoming>, TransportError> {
        tokio::time::timeout(self.timeout, self.exchange(request))
            .await
            .map_err(|_| TransportError::Timeout(self.timeout))?
    }

    async fn exchange<B: RequestBody>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<Incoming>, TransportError> {
        let (mut parts, body) = request.into_parts();
        let host = parts.uri.host().ok_or(TransportError::NoHost)?.to_string();
        let authority = parts
            .uri
            .authority()
            .ok_or(TransportError::NoHost)?
            .as_str()
            .to_string();
        let stream = self.dial().await?;
        let stream: Box<dyn Io> = match &self.tls {
            None => stream,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| TransportError::ServerName(host.clone()))?;
                Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|source| TransportError::Tls { host, source })?,
                )
            }
        };
        // HTTP/1.1 wants origin-form and a Host header; the SDK gives an absolute URL.
        if !parts.headers.contains_key(http::header::HOST) {
            let value = http::HeaderValue::from_str(&authority)
                .map_err(|e| TransportError::Request(e.to_string()))?;
            parts.headers.insert(http::header::HOST, value);
        }
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        parts.uri = path
            .parse()
            .map_err(|e: http::uri::InvalidUri| TransportError::Request(e.to_string()))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the response body has been read or the peer closes.
            let _ = connection.await;
        });
        Ok(sender
            .send_request(http::Request::from_parts(parts, body))
            .await?)
    }

    async fn dial(&self) -> Result<Box<dyn Io>, TransportError> {
        let failed = |source| TransportError::Dial {
            dial: self.dial.clone(),
            source,
        };
        Ok(match &self.dial {
            Dial::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(failed)?,
            ),
            Dial::Tcp(addr) => {
                Box::new(tokio::net::TcpStream::connect(addr).await.map_err(failed)?)
            }
        })
    }
}

impl HttpClient for TunnelClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let mut client = self.clone();
        if let Some(t) = settings.read_timeout() {
            client.timeout = client.timeout.max(t);
        }
        SharedHttpConnector::new(client)
    }
}

impl HttpConnector for TunnelClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.clone();
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            let response = client.send(request).await.map_err(|e| match e {
                TransportError::Timeout(_) => ConnectorError::timeout(e.into()),
                TransportError::Http(_)
                | TransportError::Dial { .. }
                | TransportError::Tls { .. } => ConnectorError::io(e.into()),
                _ => ConnectorError::other(e.into(), None),
            })?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

/// Parses `vsock:CID:PORT` or `tcp:HOST:PORT`.
pub fn parse_dial(s: &str) -> Result<Dial, String> {
    if let Some(rest) = s.strip_prefix("vsock:") {
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected vsock:CID:PORT"))?;
        let cid = cid.parse().map_err(|_| format!("{s:?}: bad vsock CID"))?;
        let port = port.parse().map_err(|_| format!("{s:?}: bad vsock port"))?;
        Ok(Dial::Vsock { cid, port })
    } else if let Some(rest) = s.strip_prefix("tcp:") {
        if !rest.contains(':') {
            return Err(format!("{s:?}: expected tcp:HOST:PORT"));
        }
        Ok(Dial::Tcp(rest.to_string()))
    } else {
        Err(format!("{s:?}: expected vsock:CID:PORT or tcp:HOST:PORT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    #[test]
    fn tunnels_parse() {
        assert_eq!(
            parse_dial("vsock:3:8000"),
            Ok(Dial::Vsock { cid: 3, port: 8000 })
        );
        assert_eq!(
            parse_dial("tcp:127.0.0.1:9"),
            Ok(Dial::Tcp("127.0.0.1:9".into()))
        );
        for bad in [
            "vsock:3",
            "vsock:x:1",
            "vsock:3:y",
            "tcp:host",
            "unix:/x",
            "3:8000",
        ] {
            assert!(parse_dial(bad).is_err(), "{bad}");
        }
    }

    /// A TLS server for `name` on loopback that answers each request with its Host header and
    /// path, as the parent's vsock-proxy would carry KMS's answers.
    async fn tls_server(name: &str) -> (String, rustls::RootCertStore) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("cert");
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = format!("{host} {}", req.uri());
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, roots)
    }

    fn get(url: &str) -> http::Request<Full<bytes::Bytes>> {
        http::Request::builder()
            .uri(url)
            .body(Full::new(bytes::Bytes::new()))
            .expect("request")
    }

    #[tokio::test]
    async fn tls_runs_end_to_end_through_the_tunnel_with_the_urls_host() {
        let (addr, roots) = tls_server("kms.us-east-1.amazonaws.com").await;
        let client = TunnelClient::tls_with_roots(Dial::Tcp(addr.clone()), roots).expect("client");
        let response = client
            .send(get("https://kms.us-east-1.amazonaws.com/some/path?x=1"))
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"kms.us-east-1.amazonaws.com /some/path?x=1");

        // A server that cannot prove the URL's host is refused, whatever the tunnel reaches.
        let (addr, roots) = tls_server("impostor.example").await;
        let client = TunnelClient::tls_with_roots(Dial::Tcp(addr), roots).expect("client");
        let err = client
            .send(get("https://kms.us-east-1.amazonaws.com/"))
            .await
            .expect_err("wrong name");
        assert!(matches!(err, TransportError::Tls { .. }), "{err}");

        // The built-in Mozilla roots do not trust a self-signed certificate.
        let (addr, _) = tls_server("kms.us-east-1.amazonaws.com").await;
        let client = TunnelClient::tls(Dial::Tcp(addr)).expect("client");
        let err = client
            .send(get("https://kms.us-east-1.amazonaws.com/"))
            .await
            .expect_err("untrusted");
        assert!(matches!(err, TransportError::Tls { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_sdk_speaks_through_the_tunnel() {
        use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
        let (addr, roots) = tls_server("kms.eu-west-1.amazonaws.com").await;
        let client = TunnelClient::tls_with_roots(Dial::Tcp(addr), roots).expect("client");
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new("id", "secret", None, None, "test"))
            .http_client(client)
            .build();
        // The echo server's answer is not KMS JSON: what matters is that the SDK's request reached
        // the region's KMS host over TLS through the tunnel and came back as an unmodeled response.
        let err = aws_sdk_kms::Client::from_conf(config)
            .list_keys()
            .send()
            .await
            .expect_err("not KMS");
        let raw = err.raw_response().expect("a response came back");
        let body = String::from_utf8_lossy(raw.body().bytes().unwrap_or_default()).into_owned();
        assert_eq!(body, "kms.eu-west-1.amazonaws.com /");
    }

    #[tokio::test]
    async fn an_unreachable_tunnel_is_a_dial_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let client = TunnelClient::plaintext(Dial::Tcp(format!("127.0.0.1:{port}")));
        let err = client
            .send(get("http://kms.local/"))
            .await
            .expect_err("closed");
        assert!(matches!(err, TransportError::Dial { .. }), "{err}");
        // vsock without a transport (these machines have none) fails the same way, never panics.
        let client = TunnelClient::plaintext(Dial::Vsock { cid: 3, port: 8000 });
        let err = client
            .send(get("http://kms.local/"))
            .await
            .expect_err("no vsock");
        assert!(matches!(err, TransportError::Dial { .. }), "{err}");
    }
}
