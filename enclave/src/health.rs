//! `confidant-enclave health`: asks a running enclave for its health (counts only, nothing secret),
//! over whichever transport it listens on — vsock included, the only way to reach a production enclave.

use std::time::Duration;

use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::frame::{Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the probe waits, in all.
const DEADLINE: Duration = Duration::from_secs(10);

pub fn run(endpoint: &Endpoint) -> Result<u8, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let status = runtime.block_on(async {
        tokio::time::timeout(DEADLINE, probe(endpoint))
            .await
            .map_err(|_| format!("{endpoint}: no answer within {} s", DEADLINE.as_secs()))?
    })?;
    println!("{status}");
    Ok(0)
}

async fn probe(endpoint: &Endpoint) -> Result<String, String> {
    let mut stream = confidant_runtime::endpoint::connect(endpoint)
        .await
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let probe = Frame::Health {
        status: String::new(),
    };
    stream
        .write_all(&probe.encode())
        .await
        .map_err(|e| e.to_string())?;
    let mut dec = FrameDecoder::default();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the enclave closed the connection without an answer".into());
        }
        dec.push(&buf[..n]);
        if let Some(frame) = dec.next_frame().map_err(|e| e.to_string())? {
            return match frame {
                Frame::Health { status } => Ok(status),
                Frame::Error { code, message } => Err(format!("{code}: {message}")),
                other => Err(format!("unexpected {} frame", other.name())),
            };
        }
    }
}
