//! `confidant-enclave kms-check DIR`: the KMS fixture and the Wycheproof RSA-OAEP-2048 SHA-256 vectors
//! through the enclave's own unwrap, one JSON object (the `kms` conformance suite runs it).

use std::path::Path;

use confidant_enclave::kms::RecipientKey;
use serde_json::{json, Value};

fn hex_field(v: &Value, k: &str) -> Result<Vec<u8>, String> {
    hex::decode(v[k].as_str().ok_or(format!("missing {k}"))?).map_err(|_| format!("{k} is not hex"))
}

pub fn run(dir: &Path) -> Result<u8, String> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let mut cases = Vec::new();
    let key =
        RecipientKey::from_pkcs8(&read("recipient-key.pk8.der")?).map_err(|e| e.to_string())?;
    let fixture = key.open(&read("kms-ciphertext-for-recipient.ber")?);
    cases.push(json!({
        "case": "fixture-hello-world",
        "ok": fixture.as_ref().is_ok_and(|p| p.as_slice() == b"Hello, World"),
        "why": fixture.err().map(|e| e.to_string()),
    }));
    let v: Value = serde_json::from_slice(&read("rsa_oaep_2048_sha256_mgf1sha256_test.json")?)
        .map_err(|e| e.to_string())?;
    for group in v["testGroups"].as_array().ok_or("no testGroups")? {
        let key = RecipientKey::from_pkcs8(&hex_field(group, "privateKeyPkcs8")?)
            .map_err(|e| e.to_string())?;
        for t in group["tests"].as_array().ok_or("no tests")? {
            let got = key.unwrap_key(&hex_field(t, "ct")?, Some(&hex_field(t, "label")?));
            let want = hex_field(t, "msg")?;
            let valid = t["result"] == "valid";
            let ok = match &got {
                Ok(m) => valid && m.as_slice() == want.as_slice(),
                Err(_) => !valid,
            };
            cases.push(json!({
                "case": format!("wycheproof-rsa-oaep-2048-sha256/{}", t["tcId"]),
                "ok": ok,
                "why": if ok { Value::Null } else { json!(format!("expected {}, {}", t["result"], if got.is_ok() { "decrypted" } else { "refused" })) },
            }));
        }
    }
    let all = cases.iter().all(|c| c["ok"] == true);
    println!("{}", json!({ "passed": all, "cases": cases }));
    Ok(if all { 0 } else { 1 })
}
