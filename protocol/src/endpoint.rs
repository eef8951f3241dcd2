//! Where the enclave listens and where the relay forwards: `vsock:[CID:]PORT`, `tcp:HOST:PORT`,
//! `unix:PATH`. Parsing only; the binaries do the I/O.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// An address on one of the three transports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// vsock context id (absent when listening: any) and port.
    Vsock {
        cid: Option<u32>,
        port: u32,
    },
    /// `host:port` as given (resolved by the binary).
    Tcp(String),
    Unix(PathBuf),
}

/// Why an endpoint did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not vsock:[CID:]PORT, tcp:HOST:PORT or unix:PATH")]
pub struct BadEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = BadEndpoint;

    fn from_str(s: &str) -> Result<Endpoint, BadEndpoint> {
        let bad = || BadEndpoint(s.to_string());
        let (scheme, rest) = s.split_once(':').ok_or_else(bad)?;
        match scheme {
            "vsock" => {
                let (cid, port) = match rest.split_once(':') {
                    Some((c, p)) => (Some(c.parse().map_err(|_| bad())?), p),
                    None => (None, rest),
                };
                Ok(Endpoint::Vsock {
                    cid,
                    port: port.parse().map_err(|_| bad())?,
                })
            }
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(bad());
                }
                Ok(Endpoint::Tcp(rest.to_string()))
            }
            "unix" if !rest.is_empty() => Ok(Endpoint::Unix(PathBuf::from(rest))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid: Some(c), port } => write!(f, "vsock:{c}:{port}"),
            Endpoint::Vsock { cid: None, port } => write!(f, "vsock:{port}"),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_each_transport() {
        for s in [
            "vsock:5005",
            "vsock:16:5005",
            "tcp:127.0.0.1:7000",
            "tcp:[::1]:7000",
            "unix:/tmp/e.sock",
        ] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        for s in [
            "",
            "vsock:",
            "vsock:x",
            "tcp:7000",
            "tcp:host:99999",
            "unix:",
            "udp:1.2.3.4:5",
        ] {
            assert!(s.parse::<Endpoint>().is_err(), "{s}");
        }
    }
}
