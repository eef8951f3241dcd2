//! What one source may hold: connections and streams per source address, and streams in all, so a
//! single client — however many connections it opens — cannot starve the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub connections_per_source: usize,
    pub streams_per_source: usize,
    pub streams_total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    per_source: HashMap<IpAddr, (usize, usize)>,
    streams: usize,
}

/// Live counts against the caps.
#[derive(Debug)]
pub struct Limits {
    caps: Caps,
    counts: Mutex<Counts>,
}

/// Held while a connection is open.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    source: IpAddr,
}

/// Held while a stream is open.
#[derive(Debug)]
pub struct StreamSlot {
    limits: Arc<Limits>,
    source: IpAddr,
}

impl Limits {
    pub fn new(caps: Caps) -> Arc<Limits> {
        Arc::new(Limits {
            caps,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `source`, unless it already holds its share.
    pub fn connection(self: &Arc<Self>, source: IpAddr) -> Option<ConnectionSlot> {
        let mut c = self.counts();
        let entry = c.per_source.entry(source).or_default();
        if entry.0 >= self.caps.connections_per_source {
            return None;
        }
        entry.0 += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            source,
        })
    }

    /// A stream from `source`, unless it or the relay holds its share.
    pub fn stream(self: &Arc<Self>, source: IpAddr) -> Option<StreamSlot> {
        let mut c = self.counts();
        if c.streams >= self.caps.streams_total {
            return None;
        }
        let entry = c.per_source.entry(source).or_default();
        if entry.1 >= self.caps.streams_per_source {
            return None;
        }
        entry.1 += 1;
        c.streams += 1;
        Some(StreamSlot {
            limits: self.clone(),
            source,
        })
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.counts().streams
    }

    fn release(&self, source: IpAddr, connection: bool) {
        let mut c = self.counts();
        if !connection {
            c.streams = c.streams.saturating_sub(1);
        }
        if let Some(e) = c.per_source.get_mut(&source) {
            if connection {
                e.0 = e.0.saturating_sub(1);
            } else {
                e.1 = e.1.saturating_sub(1);
            }
            if *e == (0, 0) {
                c.per_source.remove(&source);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.release(self.source, true);
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.limits.release(self.source, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_all_and_slots_give_back() {
        let l = Limits::new(Caps {
            connections_per_source: 2,
            streams_per_source: 2,
            streams_total: 3,
        });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let c1 = l.connection(a).unwrap();
        let _c2 = l.connection(a).unwrap();
        assert!(l.connection(a).is_none());
        assert!(l.connection(b).is_some(), "another source is not affected");
        drop(c1);
        assert!(l.connection(a).is_some());

        let s1 = l.stream(a).unwrap();
        let _s2 = l.stream(a).unwrap();
        assert!(l.stream(a).is_none(), "per source");
        let _s3 = l.stream(b).unwrap();
        assert!(l.stream(b).is_none(), "in all");
        drop(s1);
        let s4 = l.stream(b);
        assert!(s4.is_some());
        assert_eq!(l.streams(), 3);
        drop(s4);
        assert_eq!(l.streams(), 2);
    }
}
