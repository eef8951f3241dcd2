//! Suite `attestation`: the cases of `attestation/manifest.json` through the verifier, and the
//! Wycheproof ECDSA P-384/SHA-384 P1363 vectors through the very function that checks COSE signatures.

use std::path::Path;

use confidant_verifier::signature::verify_es384;
use confidant_verifier::{Code, PcrPin, Policy, UnixMillis, Verifier, VerifyAt};
use serde_json::Value;

use super::{hex_field, read_json, CaseResult};

pub fn run(dir: &Path) -> Result<Vec<CaseResult>, String> {
    let suite = dir.join("attestation");
    let manifest = read_json(&suite.join("manifest.json"))?;
    let cases = manifest["cases"]
        .as_array()
        .ok_or("manifest.json has no `cases` array")?;
    let mut results = Vec::with_capacity(cases.len() + 280);
    for case in cases {
        let name = case["name"].as_str().unwrap_or("(unnamed)").to_string();
        results.push(CaseResult::check(
            format!("attestation/{name}"),
            run_case(&suite, case),
        ));
    }
    let wycheproof = dir.join("wycheproof/ecdsa_secp384r1_sha384_p1363_test.json");
    results.extend(wycheproof_p1363(&wycheproof)?);
    Ok(results)
}

fn run_case(suite: &Path, case: &Value) -> Result<(), String> {
    let file = case["file"].as_str().ok_or("case has no `file`")?;
    let bytes = std::fs::read(suite.join(file)).map_err(|e| format!("{file}: {e}"))?;
    let roots = match case["root"].as_str().unwrap_or("aws") {
        "aws" => vec![confidant_certs::aws_nitro_root_g1().to_vec()],
        pem => {
            let text =
                std::fs::read_to_string(suite.join(pem)).map_err(|e| format!("{pem}: {e}"))?;
            confidant_certs::pem::certificates_from_pem(&text).map_err(|e| format!("{pem}: {e}"))?
        }
    };
    let at = match &case["at"] {
        Value::String(s) if s == "doc" => VerifyAt::DocumentTime,
        Value::String(s) if s == "now" => VerifyAt::Instant(UnixMillis::now()),
        v => VerifyAt::Instant(UnixMillis::from_millis(
            v.as_u64().ok_or("`at` is not doc, now or milliseconds")?,
        )),
    };
    let policy = policy(&case["policy"])?;
    let verifier = Verifier::new(roots).map_err(|e| format!("root: {e}"))?;
    let report = verifier.report(&bytes, &policy, at);
    let expect = case["expect"].as_str().ok_or("case has no `expect`")?;
    match (expect, &report.error) {
        ("valid", None) => Ok(()),
        ("valid", Some(e)) => Err(format!("expected valid, rejected: {e}")),
        (code, None) => Err(format!("expected {code}, but the document was accepted")),
        (code, Some(e)) => {
            let want =
                Code::parse(code).ok_or_else(|| format!("unknown expected code `{code}`"))?;
            if e.code() == want {
                Ok(())
            } else {
                Err(format!("expected {code}, rejected with {e}"))
            }
        }
    }
}

fn policy(v: &Value) -> Result<Policy, String> {
    let mut policy = Policy::default();
    // A case without `max_age_secs` checks no maximum age.
    policy
        .set_allow_debug(v["allow_debug"].as_bool().unwrap_or(false))
        .set_max_age(
            v["max_age_secs"]
                .as_u64()
                .map(std::time::Duration::from_secs),
        );
    if let Some(pcrs) = v["pcrs"].as_object() {
        for (idx, value) in pcrs {
            let idx: usize = idx.parse().map_err(|_| format!("PCR index `{idx}`"))?;
            let value =
                hex::decode(value.as_str().unwrap_or("")).map_err(|_| "PCR value is not hex")?;
            policy.pin_pcr(PcrPin::new(idx, &value).map_err(|e| e.to_string())?);
        }
    }
    if v.get("nonce").is_some() {
        policy.expect_nonce(hex_field(v, "nonce")?);
    }
    if v.get("user_data").is_some() {
        policy.expect_user_data(hex_field(v, "user_data")?);
    }
    if v.get("public_key").is_some() {
        policy.expect_public_key(hex_field(v, "public_key")?);
    }
    Ok(policy)
}

/// Each Wycheproof test must verify iff its result is `valid` (the file has no `acceptable` cases).
fn wycheproof_p1363(path: &Path) -> Result<Vec<CaseResult>, String> {
    let file = read_json(path)?;
    let mut results = Vec::new();
    for group in file["testGroups"].as_array().ok_or("no testGroups")? {
        let key = hex_field(&group["publicKey"], "uncompressed")?;
        for test in group["tests"].as_array().ok_or("no tests")? {
            let id = test["tcId"].as_u64().unwrap_or(0);
            let outcome = (|| {
                let msg = hex_field(test, "msg")?;
                let sig = hex_field(test, "sig")?;
                let want = match test["result"].as_str() {
                    Some("valid") => true,
                    Some("invalid") => false,
                    other => return Err(format!("unexpected result {other:?}")),
                };
                let got = verify_es384(&key, &msg, &sig);
                if got == want {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: expected {}, got {} ({})",
                        test["comment"].as_str().unwrap_or(""),
                        if want { "valid" } else { "invalid" },
                        if got { "valid" } else { "invalid" },
                        test["flags"]
                    ))
                }
            })();
            results.push(CaseResult::check(
                format!("wycheproof/ecdsa-p384-p1363/{id}"),
                outcome,
            ));
        }
    }
    Ok(results)
}
