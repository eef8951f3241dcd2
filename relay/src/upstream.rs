//! Connecting to the enclave over vsock, TCP or a Unix socket.

use std::pin::Pin;
use std::task::{Context, Poll};

use confidant_protocol::endpoint::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One upstream connection, whatever its transport.
pub enum Upstream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

pub async fn connect(endpoint: &Endpoint) -> std::io::Result<Upstream> {
    Ok(match endpoint {
        Endpoint::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Upstream::Tcp(s)
        }
        Endpoint::Unix(path) => Upstream::Unix(tokio::net::UnixStream::connect(path).await?),
        Endpoint::Vsock { cid, port } => {
            let cid = cid.ok_or_else(|| {
                std::io::Error::other("vsock upstream needs a CID (vsock:CID:PORT)")
            })?;
            Upstream::Vsock(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, *port)).await?,
            )
        }
    })
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Upstream::Tcp($s) => $e,
            Upstream::Unix($s) => $e,
            Upstream::Vsock($s) => $e,
        }
    };
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Upstream {
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
