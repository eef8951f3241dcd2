//! Test-only fault injection on the enclave-to-client direction: the relay is untrusted, and the
//! client must detect anything it does to the bytes. Off unless `--fault-test-only` is given.

use std::str::FromStr;

/// What to do to the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Flip the lowest bit of the byte at this offset.
    Flip { at: u64 },
    /// Leave out `len` bytes from this offset.
    Drop { at: u64, len: u64 },
    /// Hold back `len` bytes from this offset and send them after the next `len` bytes.
    Reorder {
        at: u64,
        len: u64,
        held: Vec<u8>,
        after: Vec<u8>,
        done: bool,
    },
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| {
            parts
                .get(i)
                .and_then(|p| p.parse::<u64>().ok())
                .ok_or(format!("bad fault {s:?}"))
        };
        match parts[0] {
            "flip" => Ok(Fault::Flip { at: num(1)? }),
            "drop" => Ok(Fault::Drop {
                at: num(1)?,
                len: num(2)?,
            }),
            "reorder" => Ok(Fault::Reorder {
                at: num(1)?,
                len: num(2)?,
                held: Vec::new(),
                after: Vec::new(),
                done: false,
            }),
            _ => Err(format!(
                "bad fault {s:?}: flip:OFFSET, drop:OFFSET:LEN or reorder:OFFSET:LEN"
            )),
        }
    }
}

impl Fault {
    /// The bytes to forward for `data`, which starts at stream offset `start`.
    pub fn apply(&mut self, start: u64, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for (i, &b) in data.iter().enumerate() {
            let pos = start + i as u64;
            match self {
                Fault::Flip { at } => out.push(if pos == *at { b ^ 1 } else { b }),
                Fault::Drop { at, len } => {
                    if pos < *at || pos >= *at + *len {
                        out.push(b)
                    }
                }
                Fault::Reorder {
                    at,
                    len,
                    held,
                    after,
                    done,
                } => {
                    if *done || pos < *at {
                        out.push(b);
                    } else if pos < *at + *len {
                        held.push(b);
                    } else if pos < *at + 2 * *len {
                        after.push(b);
                        if pos + 1 == *at + 2 * *len {
                            out.append(after);
                            out.append(held);
                            *done = true;
                        }
                    } else {
                        out.push(b);
                    }
                }
            }
        }
        out
    }

    /// Whatever is still held at end of stream.
    pub fn flush(&mut self) -> Vec<u8> {
        match self {
            Fault::Reorder {
                held,
                after,
                done: false,
                ..
            } => {
                let mut out = std::mem::take(after);
                out.append(held);
                out
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_do_what_they_say() {
        let data: Vec<u8> = (0..10).collect();
        assert_eq!("flip:3".parse::<Fault>().unwrap().apply(0, &data)[3], 2);
        assert_eq!(
            "drop:2:3".parse::<Fault>().unwrap().apply(0, &data),
            vec![0, 1, 5, 6, 7, 8, 9]
        );
        let mut r: Fault = "reorder:2:2".parse().unwrap();
        let mut out = r.apply(0, &data[..3]);
        out.extend(r.apply(3, &data[3..]));
        out.extend(r.flush());
        assert_eq!(out, vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9]);
        assert!("bend:1".parse::<Fault>().is_err());
    }
}
