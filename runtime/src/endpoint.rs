//! Connections over TCP, Unix sockets and vsock: listening (the enclave) and connecting (the relay,
//! `health`). One stream type for all three, so the code above never asks which it has.

use std::pin::Pin;
use std::task::{Context, Poll};

use confidant_protocol::endpoint::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection, whatever its transport.
#[derive(Debug)]
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

/// Connects to `endpoint` (a vsock endpoint needs its CID).
pub async fn connect(endpoint: &Endpoint) -> std::io::Result<Stream> {
    Ok(match endpoint {
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        }
        Endpoint::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Vsock { cid, port } => {
            let cid = cid.ok_or_else(|| {
                std::io::Error::other("connecting over vsock needs a CID (vsock:CID:PORT)")
            })?;
            Stream::Vsock(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, *port)).await?,
            )
        }
    })
}

/// A bound listener on any of the three transports.
#[derive(Debug)]
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Vsock(tokio_vsock::VsockListener),
}

impl Listener {
    /// Binds `endpoint`. A stale Unix socket file from a previous run is replaced.
    pub async fn bind(endpoint: &Endpoint) -> std::io::Result<Listener> {
        Ok(match endpoint {
            Endpoint::Tcp(addr) => Listener::Tcp(tokio::net::TcpListener::bind(addr).await?),
            Endpoint::Unix(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                Listener::Unix(tokio::net::UnixListener::bind(path)?)
            }
            Endpoint::Vsock { cid, port } => {
                let addr =
                    tokio_vsock::VsockAddr::new(cid.unwrap_or(tokio_vsock::VMADDR_CID_ANY), *port);
                Listener::Vsock(tokio_vsock::VsockListener::bind(addr)?)
            }
        })
    }

    /// The bound address, as an endpoint string (`tcp:` shows the port actually bound).
    pub fn local(&self, asked: &Endpoint) -> std::io::Result<String> {
        Ok(match self {
            Listener::Tcp(l) => format!("tcp:{}", l.local_addr()?),
            _ => asked.to_string(),
        })
    }

    /// The next connection.
    pub async fn accept(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Listener::Unix(l) => Stream::Unix(l.accept().await?.0),
            Listener::Vsock(l) => Stream::Vsock(l.accept().await?.0),
        })
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::Vsock($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn listen_and_connect_over_tcp_and_unix() {
        let dir = tempfile::tempdir().unwrap();
        for asked in [
            "tcp:127.0.0.1:0".parse::<Endpoint>().unwrap(),
            Endpoint::Unix(dir.path().join("s.sock")),
        ] {
            let listener = Listener::bind(&asked).await.unwrap();
            let bound: Endpoint = listener.local(&asked).unwrap().parse().unwrap();
            let server = tokio::spawn(async move {
                let mut s = listener.accept().await.unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            });
            let mut c = connect(&bound).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            server.await.unwrap();
        }
    }

    #[tokio::test]
    async fn vsock_needs_a_cid_to_connect() {
        let e = connect(&"vsock:5005".parse().unwrap()).await.unwrap_err();
        assert!(e.to_string().contains("needs a CID"), "{e}");
    }
}
