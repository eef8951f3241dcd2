//! Suite `protocol`: Confidant's own vectors (`protocol/vectors.json`). Every output is recomputed from
//! the file's inputs with the protocol crate and compared byte for byte; then each negative case is
//! applied and must fail with its code.

use std::path::Path;

use confidant_protocol::chunks::ChunkOpener;
use confidant_protocol::frame::{Frame, FrameDecoder};
use confidant_protocol::keyconfig::{encode_list, KeyPair};
use confidant_protocol::replay::ReplayCache;
use confidant_protocol::request::{self, ServerRequest, CONFIDANT_LABELS};
use confidant_protocol::session::{ClientSession, EnclaveSession, SessionLimits};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{Aead, Kem, ProtocolError, ReplayRng, Suite, UnixMillis};
use serde_json::Value;

use super::{hex_field, read_json, CaseResult};

type R<T> = Result<T, String>;
/// A sealed chunk and whether it is the last.
type SealedChunk = (Vec<u8>, bool);
/// A chunk of a vector: plaintext, sealed bytes, last.
type VectorChunk = (Vec<u8>, Vec<u8>, bool);
/// A session turn: sequence number, ciphertext, sealed reply.
type Turn = (u64, Vec<u8>, Vec<SealedChunk>);

fn eq(what: &str, got: &[u8], want: &[u8]) -> R<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what} differs: got {}…",
            hex::encode(&got[..got.len().min(24)])
        ))
    }
}

fn e(err: ProtocolError) -> String {
    format!("{}: {err}", err.code())
}

pub fn run(dir: &Path) -> R<Vec<CaseResult>> {
    let v = read_json(&dir.join("protocol/vectors.json"))?;
    let mut cases = Vec::new();
    let keys = keys(&v, &mut cases)?;
    user_data(&v, &mut cases)?;
    for (i, f) in v["frames"]
        .as_array()
        .ok_or("no frames")?
        .iter()
        .enumerate()
    {
        let name = format!("protocol/frame-{i}");
        cases.push(CaseResult::check(
            name,
            frame_round_trip(&hex_field(f, "hex")?),
        ));
    }
    let mut state = None;
    for x in v["exchanges"].as_array().ok_or("no exchanges")? {
        let name = format!("protocol/exchange-{}", x["name"].as_str().unwrap_or("?"));
        match exchange(&name, x, &keys, &mut cases) {
            Ok(s) => {
                if state.is_none() {
                    state = Some(s);
                }
            }
            Err(err) => cases.push(CaseResult::check(name, Err(err))),
        }
    }
    let state = state.ok_or("no exchange to derive negative cases from")?;
    for n in v["negative"].as_array().ok_or("no negative cases")? {
        let name = format!("protocol/negative/{}", n["name"].as_str().unwrap_or("?"));
        let want = n["expect"].as_str().unwrap_or("?");
        let outcome = match negative(n, &state, &keys) {
            Ok(()) => Err(format!("expected {want}, but it was accepted")),
            Err(got) if got == want => Ok(()),
            Err(got) => Err(format!("expected {want}, got {got}")),
        };
        cases.push(CaseResult::check(name, outcome));
    }
    Ok(cases)
}

fn keys(v: &Value, cases: &mut Vec<CaseResult>) -> R<Vec<KeyPair>> {
    let mut pairs = Vec::new();
    for k in v["keys"].as_array().ok_or("no keys")? {
        let kem = Kem::from_id(k["kem_id"].as_u64().unwrap_or(0) as u16).ok_or("unknown KEM")?;
        let aeads: Vec<Aead> = k["aead_ids"]
            .as_array()
            .ok_or("no aead_ids")?
            .iter()
            .filter_map(|a| Aead::from_id(a.as_u64()? as u16))
            .collect();
        let key_id = k["key_id"].as_u64().unwrap_or(0) as u8;
        let ikm = hex_field(k, "ikm")?;
        let pair = KeyPair::derive(key_id, kem, &ikm, &aeads);
        cases.push(CaseResult::check(
            format!("protocol/key-{key_id}"),
            eq(
                "seed",
                &ikm,
                &sha256(k["ikm_seed"].as_str().unwrap_or("").as_bytes()),
            )
            .and(eq(
                "public key",
                &pair.config.public_key,
                &hex_field(k, "public_key")?,
            ))
            .and(eq(
                "key config",
                &pair.config.encode(),
                &hex_field(k, "config")?,
            )),
        ));
        pairs.push(pair);
    }
    let configs: Vec<_> = pairs.iter().map(|p| p.config.clone()).collect();
    let list = encode_list(&configs);
    cases.push(CaseResult::check(
        "protocol/key-config-list",
        eq("list", &list, &hex_field(v, "key_config_list")?).and(eq(
            "list sha256",
            &sha256(&list),
            &hex_field(v, "key_config_list_sha256")?,
        )),
    ));
    Ok(pairs)
}

fn digest(v: &Value, key: &str) -> R<[u8; 32]> {
    hex_field(v, key)?
        .try_into()
        .map_err(|_| format!("{key} is not 32 bytes"))
}

fn user_data(v: &Value, cases: &mut Vec<CaseResult>) -> R<()> {
    for (i, u) in v["user_data"]
        .as_array()
        .ok_or("no user_data")?
        .iter()
        .enumerate()
    {
        let settings = match &u["settings"] {
            Value::Null => None,
            _ => Some(digest(u, "settings")?),
        };
        let ud = UserData {
            dtype: None,
            limits: None,
            kc: digest(u, "kc")?,
            model: digest(u, "model")?,
            settings,
            exp: UnixMillis::from_secs(u["exp"].as_u64().ok_or("no exp")?),
            id: None,
            rk: None,
        };
        let cbor = hex_field(u, "cbor")?;
        cases.push(CaseResult::check(
            format!("protocol/user-data-{i}"),
            eq("CBOR", &ud.encode(), &cbor).and(match UserData::decode(&cbor) {
                Ok(d) if d == ud => Ok(()),
                Ok(_) => Err("decodes to different values".into()),
                Err(err) => Err(e(err)),
            }),
        ));
    }
    Ok(())
}

fn frame_round_trip(bytes: &[u8]) -> R<()> {
    let mut dec = FrameDecoder::default();
    dec.push(bytes);
    let frame = dec.next_frame().map_err(e)?.ok_or("incomplete frame")?;
    dec.finish().map_err(e)?;
    eq("re-encoded frame", &frame.encode(), bytes)
}

/// What the negative cases start from: the first exchange, replayed.
struct Exchange {
    suite: Suite,
    key_id: u8,
    binding: Vec<u8>,
    plaintext: Vec<u8>,
    ikm_e: Vec<u8>,
    encapsulated: Vec<u8>,
    nonce: Vec<u8>,
    chunks: Vec<SealedChunk>,
    turns: Vec<Turn>,
}

fn chunk_list(v: &Value) -> R<Vec<VectorChunk>> {
    v.as_array()
        .ok_or("no chunks")?
        .iter()
        .map(|c| {
            Ok((
                hex_field(c, "plaintext")?,
                hex_field(c, "sealed")?,
                c["last"].as_bool().unwrap_or(false),
            ))
        })
        .collect()
}

fn open_all(opener: &mut ChunkOpener, chunks: &[SealedChunk]) -> R<Vec<u8>> {
    let mut out = Vec::new();
    for (sealed, last) in chunks {
        out.extend_from_slice(&opener.open(sealed, *last).map_err(e)?);
    }
    opener.finish().map_err(e)?;
    Ok(out)
}

fn exchange(name: &str, x: &Value, keys: &[KeyPair], cases: &mut Vec<CaseResult>) -> R<Exchange> {
    let kem = Kem::from_id(x["kem_id"].as_u64().unwrap_or(0) as u16).ok_or("unknown KEM")?;
    let aead = Aead::from_id(x["aead_id"].as_u64().unwrap_or(0) as u16).ok_or("unknown AEAD")?;
    let suite = Suite { kem, aead };
    let key_id = x["key_id"].as_u64().unwrap_or(0) as u8;
    let pair = keys
        .iter()
        .find(|k| k.config.key_id == key_id)
        .ok_or("no such key")?;
    let binding = hex_field(x, "attestation_sha256")?;
    let req = &x["request"];
    let plaintext = hex_field(req, "plaintext")?;
    let want = hex_field(req, "encapsulated")?;

    // Request, from ikmE.
    let ikm_e = hex_field(req, "ikmE")?;
    let mut rng = ReplayRng::new(&ikm_e);
    let (encapsulated, client) = request::encapsulate(
        &pair.config,
        suite,
        &binding,
        &plaintext,
        &CONFIDANT_LABELS,
        &mut rng,
    )
    .map_err(e)?;
    let frame = Frame::Request {
        attestation_sha256: binding
            .clone()
            .try_into()
            .map_err(|_| "binding is not 32 bytes")?,
        encapsulated: encapsulated.clone(),
    };
    cases.push(CaseResult::check(
        format!("{name}/request"),
        eq("encapsulated request", &encapsulated, &want).and(eq(
            "REQUEST frame",
            &frame.encode(),
            &hex_field(req, "frame")?,
        )),
    ));
    let server = request::decapsulate(
        std::slice::from_ref(pair),
        &binding,
        &want,
        &CONFIDANT_LABELS,
    )
    .map_err(e)?;
    cases.push(CaseResult::check(
        format!("{name}/request-opened"),
        eq("request plaintext", &server.plaintext, &plaintext),
    ));

    // Streamed response.
    let resp = &x["response"];
    let nonce = hex_field(resp, "nonce")?;
    let chunks = chunk_list(&resp["chunks"])?;
    let sealed = seal_chunks(|| Ok(server.respond_with_nonce(&nonce)), &chunks);
    let mut wire = Frame::Response {
        nonce: nonce.clone(),
    }
    .encode();
    for (_, s, last) in &chunks {
        Frame::Chunk {
            last: *last,
            sealed: s.clone(),
        }
        .encode_into(&mut wire);
    }
    cases.push(CaseResult::check(
        format!("{name}/response"),
        sealed
            .and_then(|got| {
                let want: Vec<Vec<u8>> = chunks.iter().map(|c| c.1.clone()).collect();
                if got == want {
                    Ok(())
                } else {
                    Err("sealed chunks differ".into())
                }
            })
            .and(eq("response wire bytes", &wire, &hex_field(resp, "wire")?)),
    ));
    let mut opener = client.response_opener(&nonce).map_err(e)?;
    let plain_chunks: Vec<(Vec<u8>, bool)> = chunks.iter().map(|c| (c.1.clone(), c.2)).collect();
    let want_plain: Vec<u8> = chunks.iter().flat_map(|c| c.0.iter().copied()).collect();
    cases.push(CaseResult::check(
        format!("{name}/response-opened"),
        open_all(&mut opener, &plain_chunks)
            .and_then(|p| eq("response plaintext", &p, &want_plain)),
    ));

    // Session turns.
    let mut client_session = client.into_session();
    let mut enclave_session = server.session(UnixMillis::EPOCH, SessionLimits::default());
    let sess = &x["session"];
    let mut turns = Vec::new();
    cases.push(CaseResult::check(
        format!("{name}/session-id"),
        eq("session id", client_session.id(), &hex_field(sess, "id")?),
    ));
    for t in sess["turns"].as_array().ok_or("no turns")? {
        let seq = t["seq"].as_u64().ok_or("no seq")?;
        let plain = hex_field(t, "plaintext")?;
        let reply = chunk_list(&t["reply"])?;
        let outcome = (|| -> R<(u64, Vec<u8>)> {
            let (got_seq, frame) = client_session.seal_turn(&plain);
            if got_seq != seq {
                return Err(format!("sequence {got_seq}, want {seq}"));
            }
            eq("SESSION frame", &frame.encode(), &hex_field(t, "frame")?)?;
            let Frame::Session { ciphertext, .. } = frame else {
                return Err("not a SESSION frame".into());
            };
            eq(
                "turn plaintext",
                &enclave_session
                    .open_turn(seq, &ciphertext, UnixMillis::from_millis(1))
                    .map_err(e)?,
                &plain,
            )?;
            let sealed = seal_chunks(|| Ok(enclave_session.reply_sealer(seq)), &reply)?;
            let want: Vec<Vec<u8>> = reply.iter().map(|c| c.1.clone()).collect();
            if sealed != want {
                return Err("sealed reply differs".into());
            }
            let mut opener = client_session.reply_opener(seq);
            let chunks: Vec<(Vec<u8>, bool)> = reply.iter().map(|c| (c.1.clone(), c.2)).collect();
            let want_plain: Vec<u8> = reply.iter().flat_map(|c| c.0.iter().copied()).collect();
            eq(
                "reply plaintext",
                &open_all(&mut opener, &chunks)?,
                &want_plain,
            )?;
            Ok((seq, ciphertext))
        })();
        cases.push(CaseResult::check(
            format!("{name}/turn-{seq}"),
            outcome.as_ref().map(|_| ()).map_err(Clone::clone),
        ));
        if let Ok((seq, ct)) = outcome {
            turns.push((seq, ct, reply.iter().map(|c| (c.1.clone(), c.2)).collect()));
        }
    }
    Ok(Exchange {
        suite,
        key_id,
        binding,
        plaintext,
        ikm_e,
        encapsulated: want,
        nonce,
        chunks: plain_chunks,
        turns,
    })
}

/// Seals `chunks` (plaintext, _, last) with a fresh sealer; the last one consumes it.
fn seal_chunks(
    make: impl Fn() -> R<confidant_protocol::chunks::ChunkSealer>,
    chunks: &[VectorChunk],
) -> R<Vec<Vec<u8>>> {
    let mut sealer = Some(make()?);
    let mut out = Vec::new();
    for (plain, _, last) in chunks {
        let mut ct = Vec::new();
        if *last {
            sealer
                .take()
                .ok_or("chunk after the last")?
                .seal_last(plain, &mut ct)
                .map_err(|x| x.to_string())?;
        } else {
            sealer
                .as_mut()
                .ok_or("chunk after the last")?
                .seal(plain, &mut ct)
                .map_err(|x| x.to_string())?;
        }
        out.push(ct);
    }
    Ok(out)
}

/// Applies one negative case; `Err(code)` is the rejection.
fn negative(n: &Value, x: &Exchange, keys: &[KeyPair]) -> Result<(), String> {
    let code = |err: ProtocolError| err.code().as_str().to_string();
    let name = n["name"].as_str().unwrap_or("");
    let decap = |bytes: &[u8], binding: &[u8]| -> Result<ServerRequest, String> {
        request::decapsulate(keys, binding, bytes, &CONFIDANT_LABELS).map_err(code)
    };
    match n["target"].as_str().unwrap_or("") {
        "request" => {
            let mut bytes = x.encapsulated.clone();
            let mut binding = x.binding.clone();
            match name {
                "tampered-request-tag" => *bytes.last_mut().ok_or("empty")? ^= 1,
                "wrong-key-id" => bytes[0] = 9,
                "wrong-suite" => bytes[5..7].copy_from_slice(&[0, 4]),
                "other-attestation-binding" => binding = sha256(b"another document").to_vec(),
                "replayed-enc" => {
                    let mut cache = ReplayCache::new(16);
                    for _ in 0..2 {
                        let r = decap(&bytes, &binding)?;
                        cache.check_and_record(r.key_id, r.enc()).map_err(code)?;
                    }
                    return Ok(());
                }
                other => return Err(format!("unknown negative case {other}")),
            }
            decap(&bytes, &binding).map(|_| ())
        }
        "response" => {
            let mut opener = client_request(x, keys)?
                .response_opener(&x.nonce)
                .map_err(code)?;
            let c = &x.chunks;
            let order: Vec<(Vec<u8>, bool)> = match name {
                "reordered-chunk" => vec![c[1].clone(), c[0].clone(), c[2].clone()],
                "dropped-chunk" => vec![c[0].clone(), c[2].clone()],
                "duplicated-chunk" => vec![c[0].clone(), c[0].clone(), c[1].clone(), c[2].clone()],
                "tampered-chunk" => {
                    let mut t = c[1].clone();
                    t.0[0] ^= 1;
                    vec![c[0].clone(), t, c[2].clone()]
                }
                "final-flag-forged" => vec![(c[0].0.clone(), true)],
                "truncated-stream" => vec![c[0].clone(), c[1].clone()],
                "chunk-after-final" => vec![c[0].clone(), c[1].clone(), c[2].clone(), c[2].clone()],
                other => return Err(format!("unknown negative case {other}")),
            };
            for (sealed, last) in &order {
                opener.open(sealed, *last).map_err(code)?;
            }
            opener.finish().map_err(code)
        }
        "session" => {
            let server = decap(&x.encapsulated, &x.binding)?;
            let mut session: EnclaveSession =
                server.session(UnixMillis::EPOCH, SessionLimits::default());
            let turn = |i: usize| x.turns.get(i).cloned().ok_or("missing turn".to_string());
            let (s1, ct1, reply1) = turn(0)?;
            let (s2, ct2, _) = turn(1)?;
            match name {
                "sequence-reuse" => {
                    session
                        .open_turn(s1, &ct1, UnixMillis::from_millis(1))
                        .map_err(code)?;
                    session
                        .open_turn(s1, &ct1, UnixMillis::from_millis(2))
                        .map_err(code)?;
                }
                "sequence-rewind" => {
                    session
                        .open_turn(s2, &ct2, UnixMillis::from_millis(1))
                        .map_err(code)?;
                    session
                        .open_turn(s1, &ct1, UnixMillis::from_millis(2))
                        .map_err(code)?;
                }
                "tampered-turn" => {
                    let mut ct = ct1.clone();
                    *ct.last_mut().ok_or("empty")? ^= 1;
                    session
                        .open_turn(s1, &ct, UnixMillis::from_millis(1))
                        .map_err(code)?;
                }
                "reply-to-other-turn" => {
                    let client: ClientSession = client_request(x, keys)?.into_session();
                    let mut opener = client.reply_opener(s2);
                    for (sealed, last) in &reply1 {
                        opener.open(sealed, *last).map_err(code)?;
                    }
                }
                other => return Err(format!("unknown negative case {other}")),
            }
            Ok(())
        }
        "frame" => {
            let bytes = hex_field(n, "hex")?;
            let mut dec = FrameDecoder::default();
            dec.push(&bytes);
            while dec.next_frame().map_err(code)?.is_some() {}
            dec.finish().map_err(code)
        }
        other => Err(format!("unknown target {other}")),
    }
}

/// The client's request state for the exchange, rebuilt from its inputs (ikmE makes it deterministic).
fn client_request(x: &Exchange, keys: &[KeyPair]) -> Result<request::ClientRequest, String> {
    let pair = keys
        .iter()
        .find(|k| k.config.key_id == x.key_id)
        .ok_or("no key")?;
    let mut rng = ReplayRng::new(&x.ikm_e);
    let (bytes, client) = request::encapsulate(
        &pair.config,
        x.suite,
        &x.binding,
        &x.plaintext,
        &CONFIDANT_LABELS,
        &mut rng,
    )
    .map_err(|err| err.code().to_string())?;
    if bytes != x.encapsulated {
        return Err("could not rebuild the client state".into());
    }
    Ok(client)
}
