//! Suite `receipts`: answer receipts (`docs/protocol.md`, "Receipts"). The two good receipts are
//! re-signed from their fields byte for byte (Ed25519 is deterministic) and verified in their
//! context; every negative case must fail with its code, and a `receipt_mismatch` must name the
//! altered field.

use std::path::Path;

use confidant_protocol::message::Finish;
use confidant_protocol::receipt::{self, Expected, ReceiptSigner};
use confidant_protocol::user_data::{sha256, UserData};
use confidant_protocol::{ProtocolError, UnixMillis};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{hex_field, read_json, CaseResult};

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, String> {
    let v = read_json(&dir.join("receipts/vectors.json"))?;
    let seed = v["key_seed"].as_str().ok_or("missing `key_seed`")?;
    let signer = ReceiptSigner::from_seed(Zeroizing::new(sha256(seed.as_bytes())));
    let pk: [u8; 32] = hex_field(&v, "public_key")?
        .try_into()
        .map_err(|_| "`public_key` is not 32 bytes")?;
    let mut results = vec![CaseResult::check(
        "receipts/key",
        if signer.public_key() == pk {
            Ok(())
        } else {
            Err("the key derived from `key_seed` is not `public_key`".into())
        },
    )];
    let cases = v["cases"].as_array().ok_or("missing `cases`")?;
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        results.push(CaseResult::check(
            format!("receipts/{name}"),
            one(case, &pk, &signer),
        ));
    }
    Ok(results)
}

fn one(case: &Value, pk: &[u8; 32], signer: &ReceiptSigner) -> Result<(), String> {
    let cose = hex_field(case, "cose")?;
    let c = &case["context"];
    let user_data = UserData::decode(&hex_field(c, "user_data")?).map_err(|e| e.to_string())?;
    let digest = |v: &Value, k: &str| -> Result<[u8; 32], String> {
        hex_field(v, k)?
            .try_into()
            .map_err(|_| format!("`{k}` is not 32 bytes"))
    };
    let t = &c["trailer"];
    let finish: Finish =
        serde_json::from_value(t["finish"].clone()).map_err(|e| format!("trailer: {e}"))?;
    let count = |k: &str| t[k].as_u64().ok_or_else(|| format!("trailer `{k}`"));
    let previous = match &c["previous"] {
        Value::Null => None,
        _ => Some(digest(c, "previous")?),
    };
    let expected = Expected {
        document: digest(c, "document_sha256")?,
        document_time: UnixMillis::from_millis(
            c["document_time"].as_u64().ok_or("`document_time`")?,
        ),
        user_data: &user_data,
        request: Some(digest(c, "request_sha256")?),
        question: Some(c["question"].as_str().ok_or("`question`")?),
        answer: Some(c["answer"].as_str().ok_or("`answer`")?),
        trailer: Some((finish, count("prompt_tokens")?, count("generated_tokens")?)),
        previous: Some(previous),
    };
    let outcome = receipt::open(&cose, pk).and_then(|r| r.check(&expected).map(|()| r));
    match (case["expect"].as_str(), outcome) {
        (Some("ok"), Ok(r)) => {
            // What the enclave would sign for these fields is exactly these bytes.
            if signer.sign(&r) == cose {
                Ok(())
            } else {
                Err("re-signing the receipt's fields does not give the same bytes".into())
            }
        }
        (Some("ok"), Err(e)) => Err(format!("refused a good receipt: {}: {e}", e.code())),
        (Some(want), Err(e)) if e.code().as_str() == want => match (&e, case["field"].as_str()) {
            (ProtocolError::ReceiptMismatch(got), Some(field)) if *got != field => {
                Err(format!("named field `{got}`, want `{field}`"))
            }
            _ => Ok(()),
        },
        (Some(want), Err(e)) => Err(format!("got {}: {e}, want {want}", e.code())),
        (Some(want), Ok(_)) => Err(format!("accepted, want {want}")),
        (None, _) => Err("missing `expect`".into()),
    }
}
