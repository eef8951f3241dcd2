//! Suite `hpke`: RFC 9180 base-mode vectors for every suite the protocol crate supports (DHKEM(X25519)
//! with HKDF-SHA256 and AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305), and the X-Wing vectors of the
//! HPKE post-quantum draft with HKDF-SHA256. Every encryption and every export is a case, checked on
//! the sealing side (with the vector's `ikmE` as the ephemeral randomness) and on the opening side.

use std::path::Path;

use confidant_protocol::hpke_ops;
use confidant_protocol::{Aead, Kem, ReplayRng, Suite};
use serde_json::Value;

use super::{hex_field, read_json, CaseResult};

const FILES: [&str; 3] = [
    "test-vectors.json",
    "hpke-pq-test-vectors.json",
    "xwing-hpke-go-8aa8a04.json",
];

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, String> {
    let mut results = Vec::new();
    for file in FILES {
        let vectors = read_json(&dir.join("hpke").join(file))?;
        for (index, v) in vectors.as_array().ok_or("not an array")?.iter().enumerate() {
            if let Some(suite) = supported(v) {
                let name = format!(
                    "hpke/{}#{index}/{}+{}",
                    file.trim_end_matches(".json"),
                    suite.kem.name(),
                    suite.aead.name()
                );
                results.extend(vector(&name, suite, v));
            }
        }
    }
    Ok(results)
}

/// The vector's suite, if it is base mode with HKDF-SHA256 and a KEM and AEAD the crate speaks.
fn supported(v: &Value) -> Option<Suite> {
    let id = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    if id("mode")? != 0 || id("kdf_id")? != 1 {
        return None;
    }
    Some(Suite {
        kem: Kem::from_id(id("kem_id")?)?,
        aead: Aead::from_id(id("aead_id")?)?,
    })
}

fn vector(name: &str, suite: Suite, v: &Value) -> Vec<CaseResult> {
    match vector_inner(name, suite, v) {
        Ok(cases) => cases,
        Err(e) => vec![CaseResult::check(name.to_string(), Err(e))],
    }
}

fn vector_inner(name: &str, suite: Suite, v: &Value) -> Result<Vec<CaseResult>, String> {
    let info = hex_field(v, "info")?;
    let pk = hex_field(v, "pkRm")?;
    let sk = hex_field(v, "skRm")?;
    let ikm_r = hex_field(v, "ikmR")?;
    let ikm_e = hex_field(v, "ikmE")?;
    let enc = hex_field(v, "enc")?;
    let encryptions = v["encryptions"].as_array().ok_or("no encryptions")?;
    let exports = v["exports"].as_array().ok_or("no exports")?;

    let mut pts = Vec::new();
    let mut aads = Vec::new();
    let mut cts = Vec::new();
    for e in encryptions {
        pts.push(hex_field(e, "pt")?);
        aads.push(hex_field(e, "aad")?);
        cts.push(hex_field(e, "ct")?);
    }
    let mut labels = Vec::new();
    let mut wanted = Vec::new();
    for x in exports {
        labels.push(hex_field(x, "exporter_context")?);
        wanted.push(hex_field(x, "exported_value")?);
    }
    let lens: Vec<usize> = exports
        .iter()
        .map(|x| x["L"].as_u64().unwrap_or(0) as usize)
        .collect();
    let export_args: Vec<(&[u8], usize)> = labels.iter().map(|l| l.as_slice()).zip(lens).collect();

    let mut cases = Vec::new();
    // DeriveKeyPair(ikmR) gives the vector's key pair.
    // RFC 9180 §7.1.2: an X25519 SerializePrivateKey() output is clamped; the published skRm values
    // predate that rule, so they are compared clamped. Public keys are compared as they are.
    let (derived_sk, derived_pk) = hpke_ops::derive_keypair(suite.kem, &ikm_r);
    let (derived_sk, derived_pk) = (derived_sk.to_bytes(), derived_pk.to_bytes());
    let mut want_sk = sk.clone();
    if suite.kem == Kem::X25519HkdfSha256 && want_sk.len() == 32 {
        want_sk[0] &= 248;
        want_sk[31] &= 127;
        want_sk[31] |= 64;
    }
    cases.push(CaseResult::check(
        format!("{name}/derive-keypair"),
        if derived_sk.as_slice() == want_sk.as_slice() && derived_pk == pk {
            Ok(())
        } else {
            Err("DeriveKeyPair(ikmR) differs from (skRm, pkRm)".into())
        },
    ));

    // Sender: replaying ikmE must reproduce enc, every ciphertext and every export.
    let messages: Vec<(&[u8], &[u8])> = pts
        .iter()
        .map(|p| p.as_slice())
        .zip(aads.iter().map(|a| a.as_slice()))
        .collect();
    let mut rng = ReplayRng::new(&ikm_e);
    let public_key =
        hpke_ops::PublicKey::from_bytes(suite.kem, &pk).map_err(|e| format!("pkRm: {e:?}"))?;
    let sealed = hpke_ops::seal(
        suite.aead,
        &public_key,
        &info,
        &messages,
        &export_args,
        &mut rng,
    )
    .map_err(|e| format!("seal failed: {e:?}"))?;
    cases.push(CaseResult::check(
        format!("{name}/enc"),
        if sealed.enc == enc && rng.exhausted() && !rng.overrun() {
            Ok(())
        } else {
            Err("enc differs (or ikmE was not consumed exactly)".into())
        },
    ));
    // Receiver: opening the vector's ciphertexts must give the plaintexts and the same exports.
    let ct_messages: Vec<(&[u8], &[u8])> = cts
        .iter()
        .map(|c| c.as_slice())
        .zip(aads.iter().map(|a| a.as_slice()))
        .collect();
    let private_key =
        hpke_ops::PrivateKey::from_bytes(suite.kem, &sk).map_err(|e| format!("skRm: {e:?}"))?;
    let opened = hpke_ops::open(
        suite.aead,
        &private_key,
        &enc,
        &info,
        &ct_messages,
        &export_args,
    );
    for (i, (ct, pt)) in cts.iter().zip(&pts).enumerate() {
        let sealed_ok = sealed.ciphertexts.get(i) == Some(ct);
        let opened_ok = opened.as_ref().is_ok_and(|o| {
            o.plaintexts
                .get(i)
                .is_some_and(|p| p.as_slice() == pt.as_slice())
        });
        cases.push(CaseResult::check(
            format!("{name}/encryption-{i}"),
            match (sealed_ok, opened_ok) {
                (true, true) => Ok(()),
                (false, _) => Err("sealed ciphertext differs".into()),
                (true, false) => {
                    Err("the vector's ciphertext did not open to its plaintext".into())
                }
            },
        ));
    }
    for (i, want) in wanted.iter().enumerate() {
        let sealed_ok = sealed
            .exports
            .get(i)
            .is_some_and(|x| x.as_slice() == want.as_slice());
        let opened_ok = opened.as_ref().is_ok_and(|o| {
            o.exports
                .get(i)
                .is_some_and(|x| x.as_slice() == want.as_slice())
        });
        cases.push(CaseResult::check(
            format!("{name}/export-{i}"),
            if sealed_ok && opened_ok {
                Ok(())
            } else {
                Err("exported value differs".into())
            },
        ));
    }
    Ok(cases)
}
