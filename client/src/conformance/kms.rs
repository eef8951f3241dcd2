//! Suite `kms`: the KMS `CiphertextForRecipient` fixture and the Wycheproof RSA-OAEP-2048 SHA-256
//! vectors, run in process through the very unwrap and envelope code the enclave uses
//! (`confidant-sealing`).

use std::path::Path;

use confidant_sealing::RecipientKey;
use serde_json::Value;

use super::{CaseResult, SuiteError};

fn hex_field(v: &Value, k: &str) -> Result<Vec<u8>, SuiteError> {
    hex::decode(
        v[k].as_str()
            .ok_or_else(|| SuiteError::Failed(format!("a case lacks {k}")))?,
    )
    .map_err(|_| SuiteError::Failed(format!("{k} is not hex")))
}

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, SuiteError> {
    let dir = dir.join("kms");
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .map_err(|e| SuiteError::Failed(format!("{}: {e}", dir.join(name).display())))
    };
    let mut cases = Vec::new();
    let key = RecipientKey::from_pkcs8(&read("recipient-key.pk8.der")?)
        .map_err(|e| SuiteError::Failed(e.to_string()))?;
    let fixture = key.open(&read("kms-ciphertext-for-recipient.ber")?);
    cases.push(CaseResult::check(
        "kms/fixture-hello-world",
        match fixture {
            Ok(p) if p.as_slice() == b"Hello, World" => Ok(()),
            Ok(_) => Err("opened to other content".into()),
            Err(e) => Err(e.to_string()),
        },
    ));
    let v: Value = serde_json::from_slice(&read("rsa_oaep_2048_sha256_mgf1sha256_test.json")?)
        .map_err(|e| SuiteError::Failed(e.to_string()))?;
    let groups = v["testGroups"]
        .as_array()
        .ok_or_else(|| SuiteError::Failed("no testGroups".into()))?;
    for group in groups {
        let key = RecipientKey::from_pkcs8(&hex_field(group, "privateKeyPkcs8")?)
            .map_err(|e| SuiteError::Failed(e.to_string()))?;
        let tests = group["tests"]
            .as_array()
            .ok_or_else(|| SuiteError::Failed("no tests".into()))?;
        for t in tests {
            let got = key.unwrap_key(&hex_field(t, "ct")?, Some(&hex_field(t, "label")?));
            let want = hex_field(t, "msg")?;
            let valid = t["result"] == "valid";
            let ok = match &got {
                Ok(m) => valid && m.as_slice() == want.as_slice(),
                Err(_) => !valid,
            };
            cases.push(CaseResult::check(
                format!("kms/wycheproof-rsa-oaep-2048-sha256/{}", t["tcId"]),
                if ok {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {}, {}",
                        t["result"],
                        if got.is_ok() { "decrypted" } else { "refused" }
                    ))
                },
            ));
        }
    }
    Ok(cases)
}
