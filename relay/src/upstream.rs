//! The enclave side of the relay: a bounded pool of link connections (`confidant_protocol::link`)
//! carrying every client stream, so the number of upstream connections never grows with the number
//! of clients. Each link has a reader that hands each stream's bytes to that stream's bounded queue —
//! a client that does not read loses its stream rather than stalling the link for everyone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::link::{self, Kind, LinkDecoder};
use confidant_runtime::endpoint;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Chunks (up to 16 KiB each) queued toward one client before its stream counts as stuck.
const DOWN_QUEUE: usize = 64;
/// Encoded frames queued toward the enclave on one link.
const UP_QUEUE: usize = 1024;

/// What the enclave sent on a stream.
#[derive(Debug)]
pub enum Down {
    Data(Vec<u8>),
    /// The enclave finished the stream.
    Fin,
}

/// One link connection to the enclave.
#[derive(Debug)]
struct Link {
    writer: mpsc::Sender<Vec<u8>>,
    streams: Mutex<HashMap<u32, mpsc::Sender<Down>>>,
    next_id: AtomicU32,
    alive: AtomicBool,
}

impl Link {
    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u32, mpsc::Sender<Down>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client stream's sending end on a link. Dropped before [`LinkStream::complete`], it resets the
/// stream. What the enclave sends arrives on the receiver [`Pool::open`] returns beside it, which
/// closes without a `Fin` when the link is lost or the stream reset.
#[derive(Debug)]
pub struct LinkStream {
    link: Arc<Link>,
    id: u32,
    done: bool,
}

impl LinkStream {
    /// Sends client bytes to the enclave. An error means the link is gone.
    pub async fn send(&self, data: &[u8]) -> Result<(), ()> {
        let mut out = Vec::with_capacity(data.len() + 16);
        link::encode_data(self.id, data, &mut out);
        self.link.writer.send(out).await.map_err(|_| ())
    }

    /// The client sends nothing more.
    pub async fn finish(&mut self) {
        let mut out = Vec::with_capacity(link::HEADER_LEN);
        link::encode_control(self.id, Kind::Fin, &mut out);
        let _ = self.link.writer.send(out).await;
    }

    /// The exchange is over (both sides finished): nothing to reset when dropped.
    pub fn complete(&mut self) {
        self.done = true;
    }
}

impl Drop for LinkStream {
    fn drop(&mut self) {
        self.link.streams().remove(&self.id);
        if !self.done {
            let mut out = Vec::with_capacity(link::HEADER_LEN);
            link::encode_control(self.id, Kind::Reset, &mut out);
            let _ = self.link.writer.try_send(out);
        }
    }
}

/// The enclave is out of reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// After a connect that timed out, new streams fail at once for this long instead of each waiting
/// for its own connect timeout. A refused connect (an enclave not listening yet, or restarting) costs
/// nothing to retry, so it sets no backoff: a client arriving just after the enclave comes up is
/// served.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How a connect to the enclave failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectFailure {
    /// No answer within the connect timeout: back off, or every stream would wait as long.
    TimedOut,
    /// Refused or failed at once.
    Refused,
}

/// The pool of links to one enclave.
#[derive(Debug)]
pub struct Pool {
    endpoint: Endpoint,
    links: tokio::sync::Mutex<Vec<Arc<Link>>>,
    size: usize,
    connect_timeout: Duration,
    last_failure: Mutex<Option<Instant>>,
}

impl Pool {
    pub fn new(endpoint: Endpoint, size: usize, connect_timeout: Duration) -> Pool {
        Pool {
            endpoint,
            links: tokio::sync::Mutex::new(Vec::new()),
            size: size.max(1),
            connect_timeout,
            last_failure: Mutex::new(None),
        }
    }

    fn failed_recently(&self) -> bool {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < RETRY_AFTER)
    }

    /// Opens a stream on the least-loaded live link, connecting a new link while the pool is not full.
    pub async fn open(&self) -> Result<(LinkStream, mpsc::Receiver<Down>), Unreachable> {
        let link = {
            let mut links = self.links.lock().await;
            links.retain(|l| l.alive.load(Ordering::Acquire));
            let least = links.iter().min_by_key(|l| l.streams().len()).cloned();
            match least {
                // A new link while the pool has room and every link is busy.
                Some(l) if links.len() >= self.size || l.streams().is_empty() => l,
                _ if self.failed_recently() => least.ok_or(Unreachable)?,
                _ => match self.connect().await {
                    Ok(l) => {
                        links.push(l.clone());
                        l
                    }
                    Err(ConnectFailure::TimedOut) => {
                        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(Instant::now());
                        least.ok_or(Unreachable)?
                    }
                    Err(ConnectFailure::Refused) => least.ok_or(Unreachable)?,
                },
            }
        };
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(DOWN_QUEUE);
        link.streams().insert(id, tx);
        let mut out = Vec::with_capacity(link::HEADER_LEN);
        link::encode_control(id, Kind::Open, &mut out);
        if link.writer.send(out).await.is_err() {
            link.streams().remove(&id);
            return Err(Unreachable);
        }
        Ok((
            LinkStream {
                link,
                id,
                done: false,
            },
            rx,
        ))
    }

    async fn connect(&self) -> Result<Arc<Link>, ConnectFailure> {
        let conn = tokio::time::timeout(self.connect_timeout, endpoint::connect(&self.endpoint))
            .await
            .map_err(|_| ConnectFailure::TimedOut)?
            .map_err(|e| {
                tracing::warn!(error = %e, "enclave unreachable");
                ConnectFailure::Refused
            })?;
        let (mut rd, mut wr) = tokio::io::split(conn);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(UP_QUEUE);
        let link = Arc::new(Link {
            writer: tx,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            alive: AtomicBool::new(true),
        });
        // Writer: the preamble, then frames as streams send them.
        let w_link = link.clone();
        tokio::spawn(async move {
            if wr.write_all(link::PREAMBLE).await.is_ok() {
                while let Some(bytes) = rx.recv().await {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            }
            w_link.alive.store(false, Ordering::Release);
            let _ = wr.shutdown().await;
        });
        // Reader: frames from the enclave to their streams.
        let r_link = link.clone();
        tokio::spawn(async move {
            let mut dec = LinkDecoder::default();
            let mut buf = vec![0u8; 64 * 1024];
            'read: loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                dec.push(&buf[..n]);
                loop {
                    let frame = match dec.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "link from the enclave is malformed");
                            break 'read;
                        }
                    };
                    let mut streams = r_link.streams();
                    match frame.kind {
                        Kind::Data => {
                            let stuck = streams
                                .get(&frame.stream)
                                .is_some_and(|s| s.try_send(Down::Data(frame.payload)).is_err());
                            if stuck {
                                // The client does not read: its stream goes, the link goes on.
                                streams.remove(&frame.stream);
                                let mut out = Vec::with_capacity(link::HEADER_LEN);
                                link::encode_control(frame.stream, Kind::Reset, &mut out);
                                let _ = r_link.writer.try_send(out);
                            }
                        }
                        Kind::Fin => {
                            if let Some(s) = streams.remove(&frame.stream) {
                                let _ = s.try_send(Down::Fin);
                            }
                        }
                        Kind::Reset => {
                            streams.remove(&frame.stream);
                        }
                        Kind::Open => {} // The enclave opens nothing.
                    }
                }
            }
            r_link.alive.store(false, Ordering::Release);
            // Every stream on it sees its queue close without a Fin.
            r_link.streams().clear();
        });
        Ok(link)
    }
}
