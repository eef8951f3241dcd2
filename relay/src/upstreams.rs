//! Several enclaves behind one relay (a parent instance runs up to four): each upstream is probed with
//! `HEALTH`, which tells its instance id and whether its engine takes work; new exchanges go to the
//! live upstream with the fewest streams in flight, and a stream that begins with `ROUTE` goes to the
//! enclave it names (the one holding the keys the client encrypted to, and a session's state). A
//! failed probe takes an upstream out; the next good one brings it back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confidant_protocol::endpoint::Endpoint;
use confidant_protocol::frame::{Frame, FrameDecoder};
use tokio::sync::mpsc;

use crate::upstream::{Down, LinkStream, Pool};

/// An upstream's health as the last probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Answered, engine alive: takes new exchanges first.
    Up,
    /// Not probed yet.
    Unknown,
    /// Answered, but its engine is not taking jobs.
    Degraded,
    /// Did not answer the last probe.
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Unknown => "unknown",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The instance id its last good probe reported; kept while it is down, so that a client routed
    /// to it hears `enclave_unreachable` rather than `enclave_unknown`, until another instance answers.
    instance: Option<[u8; 16]>,
    health: Health,
}

/// One enclave.
#[derive(Debug)]
pub struct Upstream {
    pub endpoint: Endpoint,
    pool: Pool,
    state: Mutex<State>,
    in_flight: AtomicUsize,
    streams: AtomicU64,
    probe_failures: AtomicU64,
}

impl Upstream {
    fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, new: State) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.health != new.health || s.instance != new.instance {
            tracing::info!(
                upstream = %self.endpoint,
                from = s.health.as_str(),
                to = new.health.as_str(),
                "upstream state"
            );
        }
        *s = new;
    }
}

/// What the metrics endpoint shows of one upstream: counts and states only.
#[derive(Debug, Clone)]
pub struct UpstreamStatus {
    pub endpoint: String,
    pub health: Health,
    pub in_flight: usize,
    pub streams: u64,
    pub probe_failures: u64,
}

/// Why no upstream took a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoUpstream {
    /// The stream was routed to an instance no upstream has.
    Unknown,
    /// No upstream (or not the routed one) could be reached.
    Unreachable,
}

/// A stream opened to one upstream; counts as its load until dropped.
#[derive(Debug)]
pub struct Opened {
    pub link: LinkStream,
    pub down: mpsc::Receiver<Down>,
    _load: Load,
}

#[derive(Debug)]
struct Load(Arc<Upstream>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every upstream of the relay.
#[derive(Debug)]
pub struct Upstreams {
    list: Vec<Arc<Upstream>>,
    probe_timeout: Duration,
    /// One re-probe at a time when a route names an unknown instance.
    reprobe: tokio::sync::Mutex<()>,
    /// Rotates the order among equally loaded upstreams.
    turn: AtomicUsize,
}

impl Upstreams {
    pub fn new(
        endpoints: Vec<Endpoint>,
        links_each: usize,
        connect_timeout: Duration,
    ) -> Upstreams {
        Upstreams {
            list: endpoints
                .into_iter()
                .map(|endpoint| {
                    Arc::new(Upstream {
                        pool: Pool::new(endpoint.clone(), links_each, connect_timeout),
                        endpoint,
                        state: Mutex::new(State {
                            instance: None,
                            health: Health::Unknown,
                        }),
                        in_flight: AtomicUsize::new(0),
                        streams: AtomicU64::new(0),
                        probe_failures: AtomicU64::new(0),
                    })
                })
                .collect(),
            probe_timeout: connect_timeout,
            reprobe: tokio::sync::Mutex::new(()),
            turn: AtomicUsize::new(0),
        }
    }

    /// Opens a stream: to the instance `route` names, else to the least-loaded live upstream.
    pub async fn open(&self, route: Option<[u8; 16]>) -> Result<Opened, NoUpstream> {
        match route {
            Some(id) => {
                let upstream = match self.find(id) {
                    Some(u) => u,
                    None => {
                        // Perhaps it came up since the last probe: look once more, now.
                        {
                            let _one = self.reprobe.lock().await;
                            if self.find(id).is_none() {
                                self.probe_all().await;
                            }
                        }
                        self.find(id).ok_or(NoUpstream::Unknown)?
                    }
                };
                Self::open_on(&upstream).await
            }
            None => {
                // Ties go round-robin, so that short exchanges (attestations) spread too.
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                let n = self.list.len();
                let mut candidates: Vec<_> = self
                    .list
                    .iter()
                    .enumerate()
                    .map(|(i, u)| {
                        let key = (
                            u.state().health,
                            u.in_flight.load(Ordering::Acquire),
                            (i + n - turn % n) % n,
                        );
                        (key, u)
                    })
                    .collect();
                candidates.sort_by_key(|(key, _)| *key);
                for (_, u) in candidates {
                    if let Ok(opened) = Self::open_on(u).await {
                        return Ok(opened);
                    }
                }
                Err(NoUpstream::Unreachable)
            }
        }
    }

    fn find(&self, id: [u8; 16]) -> Option<Arc<Upstream>> {
        self.list
            .iter()
            .find(|u| u.state().instance == Some(id))
            .cloned()
    }

    async fn open_on(u: &Arc<Upstream>) -> Result<Opened, NoUpstream> {
        let (link, down) = u.pool.open().await.map_err(|_| NoUpstream::Unreachable)?;
        u.in_flight.fetch_add(1, Ordering::AcqRel);
        u.streams.fetch_add(1, Ordering::Relaxed);
        Ok(Opened {
            link,
            down,
            _load: Load(u.clone()),
        })
    }

    /// Probes every upstream at once.
    pub async fn probe_all(&self) {
        let mut set = tokio::task::JoinSet::new();
        for u in &self.list {
            let (u, timeout) = (u.clone(), self.probe_timeout);
            set.spawn(async move {
                let state = match tokio::time::timeout(timeout, probe(&u)).await {
                    Ok(Some(s)) => s,
                    _ => {
                        u.probe_failures.fetch_add(1, Ordering::Relaxed);
                        State {
                            instance: u.state().instance,
                            health: Health::Down,
                        }
                    }
                };
                u.set_state(state);
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Probes every `every` for as long as the relay runs.
    pub fn spawn_prober(self: &Arc<Self>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.probe_all().await;
            }
        });
    }

    /// Counts and states, for the metrics endpoint.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.list
            .iter()
            .map(|u| UpstreamStatus {
                endpoint: u.endpoint.to_string(),
                health: u.state().health,
                in_flight: u.in_flight.load(Ordering::Acquire),
                streams: u.streams.load(Ordering::Relaxed),
                probe_failures: u.probe_failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether any upstream takes new exchanges (what a load balancer's health check asks).
    pub fn any_up(&self) -> bool {
        self.list.iter().any(|u| u.state().health == Health::Up)
    }
}

/// One `HEALTH` exchange over the upstream's own pool; `None` when it does not answer with one.
async fn probe(u: &Upstream) -> Option<State> {
    let (mut link, mut down) = u.pool.open().await.ok()?;
    link.send(
        &Frame::Health {
            status: String::new(),
        }
        .encode(),
    )
    .await
    .ok()?;
    link.finish().await;
    let mut dec = FrameDecoder::default();
    let frame = loop {
        match down.recv().await? {
            Down::Data(bytes) => {
                dec.push(&bytes);
                if let Some(f) = dec.next_frame().ok()? {
                    break f;
                }
            }
            Down::Fin => return None,
        }
    };
    let Frame::Health { status } = frame else {
        return None;
    };
    // Drain to the enclave's finish so the link stream ends cleanly.
    while let Some(Down::Data(_)) = down.recv().await {}
    link.complete();
    parse_status(&status)
}

/// The instance id and engine state of a `HEALTH` answer.
fn parse_status(status: &str) -> Option<State> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    let mut instance = [0u8; 16];
    hex::decode_to_slice(v.get("instance")?.as_str()?, &mut instance).ok()?;
    let health = if v.get("status")?.as_str()? == "ok" {
        Health::Up
    } else {
        Health::Degraded
    };
    Some(State {
        instance: Some(instance),
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_health_answer_gives_instance_and_state() {
        let id = "000102030405060708090a0b0c0d0e0f";
        let s = parse_status(&format!(r#"{{"status":"ok","instance":"{id}"}}"#)).unwrap();
        assert_eq!(s.health, Health::Up);
        assert_eq!(s.instance.unwrap()[15], 15);
        let s = parse_status(&format!(r#"{{"status":"degraded","instance":"{id}"}}"#)).unwrap();
        assert_eq!(s.health, Health::Degraded);
        assert!(parse_status(r#"{"status":"ok"}"#).is_none(), "no instance");
        assert!(
            parse_status(r#"{"status":"ok","instance":"0011"}"#).is_none(),
            "short"
        );
        assert!(parse_status("not json").is_none());
    }

    #[test]
    fn live_upstreams_sort_before_unknown_degraded_and_down() {
        let mut v = [Health::Down, Health::Degraded, Health::Up, Health::Unknown];
        v.sort();
        assert_eq!(
            v,
            [Health::Up, Health::Unknown, Health::Degraded, Health::Down]
        );
    }
}
