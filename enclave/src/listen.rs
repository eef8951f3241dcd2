//! Accepting connections on TCP, a Unix socket or vsock, and serving each on its own task.

use std::sync::Arc;

use confidant_protocol::endpoint::Endpoint;
use tokio::sync::Semaphore;

use crate::server::{serve_connection, Enclave};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 512;

/// Binds `endpoint`, reports the bound address through `on_bound`, and serves until the process ends.
pub async fn run(
    enclave: Arc<Enclave>,
    endpoint: &Endpoint,
    on_bound: impl FnOnce(String),
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    macro_rules! serve {
        ($listener:expr) => {
            loop {
                let permit = permits.clone().acquire_owned().await.map_err(std::io::Error::other)?;
                let (stream, _) = match $listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let enclave = enclave.clone();
                tokio::spawn(async move {
                    serve_connection(enclave, stream).await;
                    drop(permit);
                });
            }
        };
    }
    match endpoint {
        Endpoint::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            on_bound(format!("tcp:{}", listener.local_addr()?));
            serve!(listener)
        }
        Endpoint::Unix(path) => {
            // A stale socket from a previous run would make bind fail.
            if path.exists() {
                std::fs::remove_file(path)?;
            }
            let listener = tokio::net::UnixListener::bind(path)?;
            on_bound(endpoint.to_string());
            serve!(listener)
        }
        Endpoint::Vsock { cid, port } => {
            let addr =
                tokio_vsock::VsockAddr::new(cid.unwrap_or(tokio_vsock::VMADDR_CID_ANY), *port);
            let listener = tokio_vsock::VsockListener::bind(addr)?;
            on_bound(endpoint.to_string());
            serve!(listener)
        }
    }
}
