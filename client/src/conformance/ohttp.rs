//! Suite `ohttp`: RFC 9458 appendix A and the chunked-OHTTP draft's worked example, run through the
//! protocol crate with their labels and inputs.
//!
//! Everything the server (our enclave) produces is reproduced byte for byte: the key config, the
//! encapsulated response, and every chunk of the chunked response. For the request side the examples
//! fix the client's ephemeral *private key*, which the `hpke` crate cannot be handed (it derives
//! ephemeral keys from `ikmE`), so the suite checks the header and HPKE info byte for byte and has the
//! server open the example's exact request bytes; a fresh client request is also opened to show the
//! client side is compatible.

use std::path::Path;

use confidant_protocol::keyconfig::{KeyConfig, KeyPair};
use confidant_protocol::request::{self, Labels, BHTTP_LABELS};
use confidant_protocol::{hpke_ops, Aead, Kem, ProtocolError, Suite};
use serde_json::Value;

use super::{hex_field, read_json, CaseResult};

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, String> {
    let mut results = rfc9458(&read_json(&dir.join("ohttp/rfc9458-appendix-a.json"))?)?;
    results.extend(chunked(&read_json(
        &dir.join("ohttp/chunked-ohttp-draft-example.json"),
    )?)?);
    Ok(results)
}

fn eq(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {}, want {}",
            hex::encode(got),
            hex::encode(want)
        ))
    }
}

const SUITE: Suite = Suite {
    kem: Kem::X25519HkdfSha256,
    aead: Aead::Aes128Gcm,
};

fn rfc9458(v: &Value) -> Result<Vec<CaseResult>, String> {
    let n = |s: &str| format!("ohttp/rfc9458-appendix-a/{s}");
    let key_config = hex_field(v, "key_config")?;
    let sk = hex_field(v, "server_sk_r")?;
    let request_bytes = hex_field(v, "encapsulated_request")?;
    let request_plain = hex_field(v, "request_bhttp")?;
    let response_plain = hex_field(v, "response_bhttp")?;
    let response_nonce = hex_field(v, "response_nonce")?;
    let mut cases = Vec::new();

    let config = KeyConfig::decode(&key_config);
    cases.push(CaseResult::check(
        n("key-config"),
        match &config {
            Ok(c) => eq("re-encoded key config", &c.encode(), &key_config).and(eq(
                "public key",
                &c.public_key,
                &hex_field(v, "server_pk_r")?,
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    let config = config.map_err(|e| e.to_string())?;
    let hdr = request::header(config.key_id, SUITE);
    cases.push(CaseResult::check(
        n("header"),
        eq("header", &hdr, &request_bytes[..7]),
    ));
    cases.push(CaseResult::check(
        n("hpke-info"),
        eq(
            "info",
            &request::info(&BHTTP_LABELS, &hdr, b""),
            &hex_field(v, "hpke_info")?,
        ),
    ));

    let keys = [KeyPair::from_private_key(config.clone(), &sk).map_err(|e| e.to_string())?];
    let server = request::decapsulate(&keys, b"", &request_bytes, &BHTTP_LABELS);
    cases.push(CaseResult::check(
        n("server-opens-request"),
        match &server {
            Ok(r) => eq("request", &r.plaintext, &request_plain).and(eq(
                "enc",
                r.enc(),
                &hex_field(v, "client_pk_e")?,
            )),
            Err(e) => Err(e.to_string()),
        },
    ));
    let server = server.map_err(|e| e.to_string())?;

    // The response: response_nonce ‖ Seal(key, nonce, "", response), exactly.
    let mut sealed = response_nonce.clone();
    server
        .respond_with_nonce(&response_nonce)
        .seal(&response_plain, &mut sealed)
        .map_err(|e| e.to_string())?;
    cases.push(CaseResult::check(
        n("encapsulated-response"),
        eq(
            "encapsulated response",
            &sealed,
            &hex_field(v, "encapsulated_response")?,
        ),
    ));

    // A client request of ours to the example's key, opened by the server; its response opened back.
    let outcome = (|| -> Result<(), String> {
        let mut rng = hpke_ops::system_rng();
        let (bytes, client) =
            request::encapsulate(&config, SUITE, b"", &request_plain, &BHTTP_LABELS, &mut rng)
                .map_err(|e| e.to_string())?;
        let opened =
            request::decapsulate(&keys, b"", &bytes, &BHTTP_LABELS).map_err(|e| e.to_string())?;
        eq("round-trip request", &opened.plaintext, &request_plain)?;
        let (nonce, mut sealer) = opened.respond(&mut rng);
        let mut ct = Vec::new();
        sealer
            .seal(&response_plain, &mut ct)
            .map_err(|e| e.to_string())?;
        let mut opener = client.response_opener(&nonce).map_err(|e| e.to_string())?;
        let got = opener.open(&ct, false).map_err(|e| e.to_string())?;
        eq("round-trip response", &got, &response_plain)
    })();
    cases.push(CaseResult::check(n("client-round-trip"), outcome));
    Ok(cases)
}

/// The sealed chunk in one part of a chunked message: `varint(len) ‖ ct` for a non-final chunk,
/// `0 ‖ ct` (ct running to the end) for the final one.
fn part_chunk(part: &[u8]) -> Result<&[u8], String> {
    let first = *part.first().ok_or("empty part")?;
    let size = 1usize << (first >> 6);
    if part.len() < size {
        return Err("varint cut short".into());
    }
    let len = part[1..size]
        .iter()
        .fold(u64::from(first & 0x3f), |l, b| (l << 8) | u64::from(*b)) as usize;
    let rest = &part[size..];
    if len != 0 && rest.len() != len {
        return Err(format!(
            "part holds {} bytes, its length says {len}",
            rest.len()
        ));
    }
    Ok(rest)
}

fn chunked(v: &Value) -> Result<Vec<CaseResult>, String> {
    const LABELS: Labels<'static> = Labels {
        request: b"message/bhttp chunked request",
        response: b"message/bhttp chunked response",
    };
    let n = |s: &str| format!("ohttp/chunked-draft-example/{s}");
    let config = KeyConfig::decode(&hex_field(v, "key_config")?).map_err(|e| e.to_string())?;
    let sk = hex_field(v, "server_sk_r")?;
    let hex_list = |key: &str| -> Result<Vec<Vec<u8>>, String> {
        v[key]
            .as_array()
            .ok_or(format!("no {key}"))?
            .iter()
            .map(|p| hex::decode(p.as_str().unwrap_or("")).map_err(|_| format!("{key}: not hex")))
            .collect()
    };
    let req_parts = hex_list("encapsulated_request_parts")?;
    let resp_parts = hex_list("encapsulated_response_parts")?;
    let request_plain = hex_field(v, "request_bhttp")?;
    let response_plain = hex_field(v, "response_bhttp")?;
    let mut cases = Vec::new();

    let hdr = request::header(config.key_id, SUITE);
    let info = request::info(&LABELS, &hdr, b"");
    cases.push(CaseResult::check(
        n("header"),
        eq("header", &hdr, &req_parts[0]),
    ));
    cases.push(CaseResult::check(
        n("hpke-info"),
        eq("info", &info, &hex_field(v, "hpke_info")?),
    ));

    // Request chunks: every chunk but the last with AAD "", the last (length 0) with AAD "final".
    let enc = req_parts[1].clone();
    let mut messages: Vec<(Vec<u8>, &[u8])> = Vec::new();
    for (i, part) in req_parts[2..].iter().enumerate() {
        let last = i == req_parts.len() - 3;
        messages.push((
            part_chunk(part)?.to_vec(),
            if last { b"final" } else { b"" },
        ));
    }
    let msgs: Vec<(&[u8], &[u8])> = messages.iter().map(|(c, a)| (c.as_slice(), *a)).collect();
    let private_key =
        hpke_ops::PrivateKey::from_bytes(SUITE.kem, &sk).map_err(|e| format!("{e:?}"))?;
    let opened = hpke_ops::open(
        SUITE.aead,
        &private_key,
        &enc,
        &info,
        &msgs,
        &[(LABELS.response, 16)],
    );
    cases.push(CaseResult::check(
        n("server-opens-chunked-request"),
        match &opened {
            Ok(o) => eq(
                "request",
                &o.plaintexts
                    .iter()
                    .flat_map(|p| p.iter().copied())
                    .collect::<Vec<_>>(),
                &request_plain,
            )
            .and(eq(
                "exported response secret",
                &o.exports[0],
                &hex_field(v, "response_export_secret")?,
            )),
            Err(e) => Err(format!("{e:?}")),
        },
    ));
    let secret = opened.map_err(|e| format!("{e:?}"))?.exports.remove(0);

    // Response chunks, byte for byte: 1 byte, 2 bytes, then an empty final chunk.
    let nonce = resp_parts[0].clone();
    let mut sealer = request::response_sealer(SUITE.aead, &enc, &secret, &nonce);
    let mut got = Vec::new();
    for (i, piece) in [&response_plain[..1], &response_plain[1..]]
        .iter()
        .enumerate()
    {
        let mut ct = Vec::new();
        sealer.seal(piece, &mut ct).map_err(|e| e.to_string())?;
        let want = part_chunk(&resp_parts[1 + i])?;
        cases.push(CaseResult::check(
            n(&format!("response-chunk-{i}")),
            eq("chunk", &ct, want),
        ));
        got.push(ct);
    }
    let mut last = Vec::new();
    sealer
        .seal_last(b"", &mut last)
        .map_err(|e| e.to_string())?;
    cases.push(CaseResult::check(
        n("response-final-chunk"),
        eq("final chunk", &last, part_chunk(&resp_parts[3])?),
    ));

    // The client side opens them back; without the final chunk the response is truncated.
    let mut opener = request::response_opener(SUITE.aead, &enc, &secret, &nonce);
    let outcome = (|| -> Result<(), String> {
        let mut plain = Vec::new();
        for ct in &got {
            plain.extend_from_slice(&opener.open(ct, false).map_err(|e| e.to_string())?);
        }
        if opener.finish() != Err(ProtocolError::TruncatedResponse) {
            return Err("a response without its final chunk was not reported truncated".into());
        }
        plain.extend_from_slice(&opener.open(&last, true).map_err(|e| e.to_string())?);
        opener.finish().map_err(|e| e.to_string())?;
        eq("response", &plain, &response_plain)
    })();
    cases.push(CaseResult::check(n("client-opens-response"), outcome));
    Ok(cases)
}
