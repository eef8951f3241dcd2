//! Generates `test-vectors/attestation/synthetic/` and `test-vectors/attestation/manifest.json`.
//!
//! Run once, commit the output: `cargo run -p confidant-verifier --features encode --example
//! gen-attestation-vectors -- test-vectors/attestation`. Each synthetic case is derived from a real
//! document and carries exactly one defect; cases that need a valid signature over altered content are
//! signed by a four-level chain made here (root → regional → zonal → instance → leaf, P-384, like AWS's)
//! and verified against that chain's root, `synthetic/root.pem`. Keys are thrown away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_arguments)]

use std::path::{Path, PathBuf};

use ciborium::Value;
use confidant_verifier::document;
use confidant_verifier::encode::{cose_sign1, encode_map, payload_entries, sign, PROTECTED_ES384};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use serde_bytes::ByteBuf;
use serde_json::{json, Value as Json};
use time::OffsetDateTime;

/// A payload map's entries, in order.
type Entries = Vec<(Value, Value)>;

/// One certificate and its key.
struct Issued {
    der: Vec<u8>,
    key: KeyPair,
    params: CertificateParams,
}

/// How to make one certificate.
struct Spec {
    names: Vec<(DnType, String)>,
    ca: IsCa,
    usages: Vec<KeyUsagePurpose>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    p256: bool,
    critical_unknown: bool,
}

impl Spec {
    fn ca(cn: &str, path_len: u8) -> Spec {
        Spec {
            names: vec![
                (DnType::CountryName, "US".into()),
                (DnType::OrganizationName, "Confidant test vectors".into()),
                (DnType::OrganizationalUnitName, "NOT AWS".into()),
                (DnType::CommonName, cn.into()),
            ],
            ca: IsCa::Ca(BasicConstraints::Constrained(path_len)),
            usages: vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ],
            not_before: time::macros::datetime!(2019-01-01 0:00 UTC),
            not_after: time::macros::datetime!(2049-12-31 0:00 UTC),
            p256: false,
            critical_unknown: false,
        }
    }

    fn leaf(cn: &str, timestamp_ms: u64) -> Spec {
        let t = OffsetDateTime::from_unix_timestamp((timestamp_ms / 1000) as i64).unwrap();
        Spec {
            ca: IsCa::ExplicitNoCa,
            usages: vec![KeyUsagePurpose::DigitalSignature],
            not_before: t - time::Duration::minutes(1),
            not_after: t + time::Duration::hours(3),
            ..Spec::ca(cn, 0)
        }
    }

    fn issue(&self, issuer: Option<&Issued>) -> Issued {
        let key = KeyPair::generate_for(if self.p256 {
            &PKCS_ECDSA_P256_SHA256
        } else {
            &PKCS_ECDSA_P384_SHA384
        })
        .unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (ty, v) in &self.names {
            dn.push(ty.clone(), v.clone());
        }
        params.distinguished_name = dn;
        params.is_ca = self.ca;
        params.key_usages = self.usages.clone();
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        if self.critical_unknown {
            let mut ext =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 55555, 1], vec![5, 0]);
            ext.set_criticality(true);
            params.custom_extensions.push(ext);
        }
        let cert = match issuer {
            None => params.self_signed(&key).unwrap(),
            Some(i) => params
                .signed_by(&key, &Issuer::from_params(&i.params, &i.key))
                .unwrap(),
        };
        Issued {
            der: cert.der().to_vec(),
            key,
            params,
        }
    }
}

/// root → regional → zonal → instance, the shape of a real cabundle.
struct Chain {
    cas: Vec<Issued>,
}

impl Chain {
    fn new(specs: [Spec; 4]) -> Chain {
        let mut cas: Vec<Issued> = Vec::new();
        for spec in specs {
            let issued = spec.issue(cas.last());
            cas.push(issued);
        }
        Chain { cas }
    }

    fn project() -> Chain {
        Chain::new([
            Spec::ca("confidant test-vector root (not AWS)", 3),
            Spec::ca("regional.test-vectors.confidant", 2),
            Spec::ca("zonal.test-vectors.confidant", 1),
            Spec::ca("instance.test-vectors.confidant", 0),
        ])
    }

    fn bundle(&self) -> Vec<ByteBuf> {
        self.cas
            .iter()
            .map(|c| ByteBuf::from(c.der.clone()))
            .collect()
    }

    fn leaf(&self, spec: Spec) -> Issued {
        spec.issue(self.cas.last())
    }
}

fn pem(der: &[u8]) -> String {
    confidant_certs::pem::certificate_to_pem(der)
}

struct Gen {
    dir: PathBuf,
    cases: Vec<Json>,
}

impl Gen {
    fn write(&mut self, name: &str, bytes: &[u8]) -> String {
        let rel = format!("synthetic/{name}.cose");
        std::fs::write(self.dir.join(&rel), bytes).unwrap();
        rel
    }

    fn case(
        &mut self,
        name: &str,
        file: &str,
        root: &str,
        at: Json,
        policy: Json,
        expect: &str,
        why: &str,
    ) {
        self.cases.push(json!({
            "name": name, "file": file, "root": root, "at": at, "policy": policy,
            "expect": expect, "description": why,
        }));
    }

    /// A synthetic document (written to `synthetic/NAME.cose`) verified against the project root at its
    /// own timestamp.
    fn synthetic(&mut self, name: &str, bytes: &[u8], policy: Json, expect: &str, why: &str) {
        let file = self.write(name, bytes);
        self.case(
            name,
            &file,
            "synthetic/root.pem",
            json!("doc"),
            policy,
            expect,
            why,
        );
    }
}

fn read(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Signs payload entries with `leaf`'s key under the given protected header.
fn signed(
    entries: &[(Value, Value)],
    leaf: &Issued,
    protected: &[u8],
    indefinite: bool,
) -> Vec<u8> {
    let payload = encode_map(entries, indefinite);
    let sig = sign(protected, &payload, &leaf.key.serialize_der()).unwrap();
    cose_sign1(protected, &payload, &sig, false)
}

fn set(entries: &mut [(Value, Value)], key: &str, value: Value) {
    let slot = entries
        .iter_mut()
        .find(|(k, _)| *k == Value::Text(key.into()))
        .unwrap();
    slot.1 = value;
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: gen-attestation-vectors DIR"),
    );
    std::fs::create_dir_all(dir.join("synthetic")).unwrap();
    let mut g = Gen {
        dir: dir.clone(),
        cases: Vec::new(),
    };

    // Real documents: valid as of their timestamp with their PCRs pinned, expired now.
    let manifest: Json = serde_json::from_slice(&read(&dir, "real/manifest.json")).unwrap();
    for e in manifest["valid"].as_array().unwrap() {
        let file = e["file"].as_str().unwrap();
        let stem = file.trim_end_matches(".cose");
        let policy =
            json!({ "pcrs": e["pcrs"], "allow_debug": e["debug_mode"], "max_age_secs": 0 });
        g.case(
            &format!("real/{stem}"),
            &format!("real/{file}"),
            "aws",
            json!("doc"),
            policy,
            "valid",
            "real Nitro document, verified as of its own timestamp with every non-zero PCR pinned",
        );
        g.case(
            &format!("real/{stem}@now"),
            &format!("real/{file}"),
            "aws",
            json!("now"),
            json!({"allow_debug": true}),
            "cert_expired",
            "real Nitro document at the current time: its 3-hour leaf has expired",
        );
    }
    for e in manifest["negative"].as_array().unwrap() {
        let file = e["file"].as_str().unwrap().trim_start_matches("negative/");
        let expect = match file {
            f if f.contains("malformed") => "malformed",
            f if f.contains("badsig") => "bad_signature",
            _ => "chain_untrusted",
        };
        g.case(
            &format!("negative/{}", file.trim_end_matches(".cose")),
            &format!("negative/{file}"),
            "aws",
            json!("doc"),
            json!({"allow_debug": true}),
            expect,
            e["why"].as_str().unwrap_or("shared negative"),
        );
    }

    // Base material: a production document with nonce, user_data and 16 PCRs.
    let base_file = "real/veracruz-20221109T225200-prod.cose";
    let base_bytes = read(&dir, base_file);
    let base = document::parse(&base_bytes).unwrap().doc;
    let ts = base.timestamp;
    let base_pcrs: Json = manifest["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["file"] == "veracruz-20221109T225200-prod.cose")
        .unwrap()["pcrs"]
        .clone();
    let other_bytes = read(&dir, "real/evervault-20221013T085802-prod.cose");
    let other = document::parse(&other_bytes).unwrap().doc;
    let base_leaf_nb = x509_parser::parse_x509_certificate(&base.certificate)
        .unwrap()
        .1
        .validity()
        .not_before
        .timestamp();

    // Cases on the real document itself (AWS root).
    let mut flipped = base_bytes.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x01;
    let f = g.write("real-flipped-signature-byte", &flipped);
    g.case(
        "flipped-signature-byte",
        &f,
        "aws",
        json!("doc"),
        json!({}),
        "bad_signature",
        "one bit of the COSE signature flipped",
    );
    let mut swapped = base.clone();
    swapped.certificate = other.certificate.clone();
    let b = confidant_verifier::encode::encode_map(&payload_entries(&swapped), false);
    let f = g.write(
        "real-leaf-swapped",
        &cose_sign1(&PROTECTED_ES384, &b, &[0u8; 96], false),
    );
    g.case("leaf-swapped-from-another-document", &f, "aws", json!("doc"), json!({}), "chain_untrusted",
        "leaf certificate replaced by the leaf of another real document (issued by another instance CA)");
    g.case(
        "expired-at-now",
        base_file,
        "aws",
        json!("now"),
        json!({}),
        "cert_expired",
        "real document verified at the current time",
    );
    g.case(
        "before-leaf-validity",
        base_file,
        "aws",
        json!((base_leaf_nb - 1) * 1000),
        json!({}),
        "cert_not_yet_valid",
        "real document verified one second before its leaf's notBefore",
    );
    g.case("stale-by-max-age", base_file, "aws", json!(ts + 3_600_000), json!({"max_age_secs": 300}), "stale",
        "real document verified an hour after its timestamp (leaf still valid) with a 5-minute maximum age");
    g.case(
        "nonce-mismatch",
        base_file,
        "aws",
        json!("doc"),
        json!({"nonce": "00".repeat(32)}),
        "nonce_mismatch",
        "expected nonce differs from the document's",
    );
    g.case(
        "nonce-expected-but-null",
        "real/marlin-20240807T063809-prod.cose",
        "aws",
        json!("doc"),
        json!({"nonce": "11".repeat(32)}),
        "nonce_mismatch",
        "a nonce was sent but the document carries null",
    );
    let mut wrong_pcr0 = base_pcrs.clone();
    wrong_pcr0["0"] = json!("ab".repeat(48));
    g.case(
        "pcr-mismatch",
        base_file,
        "aws",
        json!("doc"),
        json!({"pcrs": wrong_pcr0}),
        "pcr_mismatch",
        "PCR0 pinned to a different measurement",
    );
    g.case(
        "pinned-pcr-absent",
        base_file,
        "aws",
        json!("doc"),
        json!({"pcrs": {"20": "00".repeat(48)}}),
        "pcr_missing",
        "PCR20 pinned; the document has PCRs 0..15 only (fail closed)",
    );
    g.case("debug-mode-under-pcr0-pins", "real/evervault-20221012T135006-debug.cose", "aws", json!("doc"),
        json!({"pcrs": {"0": "f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b"}}),
        "debug_mode", "a debug-mode document (PCR0 all zeros) against a production PCR0 pin");
    g.case(
        "debug-mode-refused-by-default",
        "real/evervault-20221012T135006-debug.cose",
        "aws",
        json!("doc"),
        json!({}),
        "debug_mode",
        "a debug-mode document with debug not allowed",
    );
    g.case(
        "user-data-mismatch",
        base_file,
        "aws",
        json!("doc"),
        json!({"user_data": "00".repeat(32)}),
        "user_data_mismatch",
        "expected user_data differs from the document's",
    );
    g.case(
        "public-key-mismatch",
        "real/marlin-20240807T063809-prod.cose",
        "aws",
        json!("doc"),
        json!({"public_key": "00".repeat(64)}),
        "public_key_mismatch",
        "expected public_key differs",
    );

    // The project's own chain, for documents whose content is altered and re-signed.
    let chain = Chain::project();
    std::fs::write(dir.join("synthetic/root.pem"), pem(&chain.cas[0].der)).unwrap();
    let leaf = chain.leaf(Spec::leaf(
        "i-00000000000000000-enc0000000000000000.test.confidant",
        ts,
    ));
    let mut doc = base.clone();
    doc.certificate = ByteBuf::from(leaf.der.clone());
    doc.cabundle = chain.bundle();
    let entries = payload_entries(&doc);
    let ok = signed(&entries, &leaf, &PROTECTED_ES384, false);

    g.synthetic("resigned-valid", &ok, json!({"pcrs": base_pcrs}), "valid",
        "the base document re-signed by the project chain (control: everything else derives from it)");
    let indef = signed(&entries, &leaf, &PROTECTED_ES384, true);
    g.synthetic(
        "resigned-indefinite-map-valid",
        &indef,
        json!({}),
        "valid",
        "indefinite-length payload map, as the NSM writes since late 2025",
    );
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&ok);
    g.synthetic(
        "tag-18-valid",
        &tagged,
        json!({}),
        "valid",
        "COSE_Sign1 under its tag, 18",
    );
    let mut tag98 = vec![0xd8, 0x62];
    tag98.extend_from_slice(&ok);
    g.synthetic(
        "tag-other-than-18",
        &tag98,
        json!({}),
        "malformed",
        "COSE_Sign1 under tag 98 (COSE_Sign)",
    );

    let es256 = [0xa1, 0x01, 0x26];
    g.synthetic(
        "wrong-alg-header",
        &signed(&entries, &leaf, &es256, false),
        json!({}),
        "unsupported_alg",
        "protected header {1: -7} (ES256), signed consistently",
    );
    let extra = [0xa2, 0x01, 0x38, 0x22, 0x04, 0x41, 0x00];
    g.synthetic(
        "protected-header-extra-entry",
        &signed(&entries, &leaf, &extra, false),
        json!({}),
        "unsupported_alg",
        "protected header {1: -35, 4: h'00'}: anything but exactly {1: -35} is refused",
    );

    let payload = encode_map(&entries, false);
    let sig = sign(&PROTECTED_ES384, &payload, &leaf.key.serialize_der()).unwrap();
    g.synthetic(
        "signature-95-bytes",
        &cose_sign1(&PROTECTED_ES384, &payload, &sig[..95], false),
        json!({}),
        "malformed",
        "signature one byte short",
    );
    let mut long = sig.clone();
    long.push(0);
    g.synthetic(
        "signature-97-bytes",
        &cose_sign1(&PROTECTED_ES384, &payload, &long, false),
        json!({}),
        "malformed",
        "signature one byte long",
    );
    let mut trailing = ok.clone();
    trailing.push(0x00);
    g.synthetic(
        "trailing-bytes",
        &trailing,
        json!({}),
        "malformed",
        "one byte after the COSE_Sign1 array",
    );
    g.synthetic(
        "truncated-document",
        &ok[..ok.len() / 2],
        json!({}),
        "malformed",
        "the first half of a document",
    );
    g.synthetic("empty-input", &[], json!({}), "malformed", "zero bytes");
    let mut not_array = ok.clone();
    not_array[0] = 0xa4;
    g.synthetic(
        "not-an-array",
        &not_array,
        json!({}),
        "malformed",
        "outer item is a map, not an array of 4",
    );
    let mut unprot = Vec::new();
    unprot.push(0x84);
    unprot.extend_from_slice(&[0x44, 0xa1, 0x01, 0x38, 0x22]);
    unprot.extend_from_slice(&[0xa1, 0x04, 0x41, 0x00]);
    unprot.extend_from_slice(&ok[1 + 5 + 1..]);
    g.synthetic(
        "unprotected-header-not-empty",
        &unprot,
        json!({}),
        "malformed",
        "unprotected header {4: h'00'} (unauthenticated headers are refused)",
    );

    let mut mutate = |name: &str, why: &str, expect: &str, f: &dyn Fn(&mut Entries)| {
        let mut e = entries.clone();
        f(&mut e);
        let bytes = signed(&e, &leaf, &PROTECTED_ES384, false);
        g.synthetic(name, &bytes, json!({}), expect, why);
    };
    mutate(
        "duplicate-map-key",
        "`user_data` appears twice (in place of `nonce`)",
        "malformed",
        &|e| {
            let ud = e[7].clone();
            e[8] = ud;
        },
    );
    mutate(
        "missing-required-key",
        "`timestamp` removed (8 keys)",
        "malformed",
        &|e| {
            e.remove(2);
        },
    );
    mutate(
        "unknown-payload-key",
        "`nonce` renamed to `nonces`",
        "malformed",
        &|e| {
            e[8].0 = Value::Text("nonces".into());
        },
    );
    mutate(
        "wrong-type-timestamp",
        "`timestamp` is a text string",
        "malformed",
        &|e| {
            set(e, "timestamp", Value::Text("1668034320696".into()));
        },
    );
    mutate(
        "wrong-type-module-id",
        "`module_id` is a byte string",
        "malformed",
        &|e| {
            set(e, "module_id", Value::Bytes(b"i-0".to_vec()));
        },
    );
    mutate("wrong-type-pcrs", "`pcrs` is an array", "malformed", &|e| {
        set(e, "pcrs", Value::Array(vec![Value::Bytes(vec![0; 48])]));
    });
    mutate(
        "wrong-type-certificate-null",
        "`certificate` is null",
        "malformed",
        &|e| {
            set(e, "certificate", Value::Null);
        },
    );
    mutate(
        "wrong-type-nonce-integer",
        "`nonce` is an integer",
        "malformed",
        &|e| {
            set(e, "nonce", Value::Integer(7.into()));
        },
    );
    mutate(
        "oversize-user-data",
        "`user_data` of 513 bytes (limit 512)",
        "malformed",
        &|e| {
            set(e, "user_data", Value::Bytes(vec![0x55; 513]));
        },
    );
    mutate(
        "oversize-nonce",
        "`nonce` of 513 bytes (limit 512)",
        "malformed",
        &|e| {
            set(e, "nonce", Value::Bytes(vec![0x55; 513]));
        },
    );
    mutate(
        "oversize-public-key",
        "`public_key` of 1025 bytes (limit 1024)",
        "malformed",
        &|e| {
            set(e, "public_key", Value::Bytes(vec![0x55; 1025]));
        },
    );
    mutate(
        "pcr-index-out-of-range",
        "a PCR at index 32",
        "malformed",
        &|e| {
            if let Value::Map(p) = &mut e[3].1 {
                p.push((Value::Integer(32.into()), Value::Bytes(vec![0; 48])));
            }
        },
    );
    mutate("pcr-wrong-length", "PCR3 of 32 bytes", "malformed", &|e| {
        if let Value::Map(p) = &mut e[3].1 {
            p[3].1 = Value::Bytes(vec![0; 32]);
        }
    });
    mutate(
        "duplicate-pcr-index",
        "PCR index 2 twice",
        "malformed",
        &|e| {
            if let Value::Map(p) = &mut e[3].1 {
                p[3].0 = Value::Integer(2.into());
            }
        },
    );
    mutate(
        "cabundle-empty",
        "`cabundle` is an empty array",
        "malformed",
        &|e| {
            set(e, "cabundle", Value::Array(vec![]));
        },
    );
    mutate(
        "digest-sha256",
        "`digest` is SHA256",
        "unsupported_alg",
        &|e| {
            set(e, "digest", Value::Text("SHA256".into()));
        },
    );
    mutate(
        "certificate-not-der",
        "`certificate` holds 64 bytes that are not X.509",
        "bad_certificate",
        &|e| {
            set(e, "certificate", Value::Bytes(vec![0x30; 64]));
        },
    );
    let bundle_without = |drop: usize| {
        let mut b: Vec<Value> = chain
            .cas
            .iter()
            .map(|c| Value::Bytes(c.der.clone()))
            .collect();
        b.remove(drop);
        Value::Array(b)
    };
    mutate(
        "cabundle-entry-dropped",
        "the zonal CA removed from `cabundle`",
        "chain_untrusted",
        &|e| {
            set(e, "cabundle", bundle_without(2));
        },
    );
    mutate(
        "cabundle-reordered",
        "regional and zonal CAs swapped in `cabundle`",
        "chain_untrusted",
        &|e| {
            let mut b: Vec<Value> = chain
                .cas
                .iter()
                .map(|c| Value::Bytes(c.der.clone()))
                .collect();
            b.swap(1, 2);
            set(e, "cabundle", Value::Array(b));
        },
    );

    // Altered payload re-signed by the right leaf, time checks.
    let mut future = doc.clone();
    future.timestamp = ts + 2 * 3_600_000;
    let bytes = signed(&payload_entries(&future), &leaf, &PROTECTED_ES384, false);
    let file = g.write("from-the-future", &bytes);
    g.case(
        "from-the-future",
        &file,
        "synthetic/root.pem",
        json!(ts),
        json!({}),
        "from_future",
        "timestamp two hours ahead of the verification time (leaf valid throughout)",
    );

    // Chains with one defect each.
    // The leaf signs, except a P-256 leaf, which cannot make ES384: another P-384 key stands in (the
    // verifier refuses the key type before looking at the signature).
    let mut defect =
        |name: &str, why: &str, expect: &str, root: &str, cas: &[&Issued], leaf: &Issued| {
            let mut d = base.clone();
            d.certificate = ByteBuf::from(leaf.der.clone());
            d.cabundle = cas.iter().map(|c| ByteBuf::from(c.der.clone())).collect();
            let signer = if leaf.key.algorithm() == &PKCS_ECDSA_P256_SHA256 {
                &chain.cas[3]
            } else {
                leaf
            };
            let bytes = signed(&payload_entries(&d), signer, &PROTECTED_ES384, false);
            let file = g.write(name, &bytes);
            g.case(name, &file, root, json!("doc"), json!({}), expect, why);
        };
    let cas: Vec<&Issued> = chain.cas.iter().collect();
    let leaf_ca = chain.leaf(Spec {
        ca: IsCa::Ca(BasicConstraints::Unconstrained),
        usages: vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ],
        ..Spec::leaf("leaf-is-ca", ts)
    });
    defect(
        "leaf-is-a-ca",
        "the leaf has cA=true",
        "bad_basic_constraints",
        "synthetic/root.pem",
        &cas,
        &leaf_ca,
    );
    let p256 = chain.leaf(Spec {
        p256: true,
        ..Spec::leaf("p256-leaf", ts)
    });
    defect(
        "leaf-key-p256",
        "the leaf key is P-256; ES384 needs P-384",
        "unsupported_alg",
        "synthetic/root.pem",
        &cas,
        &p256,
    );
    let no_ds = chain.leaf(Spec {
        usages: vec![KeyUsagePurpose::KeyEncipherment],
        ..Spec::leaf("no-ds", ts)
    });
    defect(
        "leaf-without-digital-signature",
        "the leaf's key usage is keyEncipherment only",
        "bad_key_usage",
        "synthetic/root.pem",
        &cas,
        &no_ds,
    );
    let crit = chain.leaf(Spec {
        critical_unknown: true,
        ..Spec::leaf("critical-ext", ts)
    });
    defect(
        "leaf-unknown-critical-extension",
        "the leaf carries an unknown critical extension",
        "bad_certificate",
        "synthetic/root.pem",
        &cas,
        &crit,
    );
    // Instance CA that is not a CA.
    let not_ca = Spec {
        ca: IsCa::ExplicitNoCa,
        ..Spec::ca("instance-not-ca", 0)
    }
    .issue(Some(&chain.cas[2]));
    let leaf2 = Spec::leaf("leaf-under-non-ca", ts).issue(Some(&not_ca));
    defect(
        "intermediate-not-a-ca",
        "the instance certificate has cA=false yet issued the leaf",
        "bad_basic_constraints",
        "synthetic/root.pem",
        &[cas[0], cas[1], cas[2], &not_ca],
        &leaf2,
    );
    // Instance CA without keyCertSign.
    let no_kcs = Spec {
        usages: vec![KeyUsagePurpose::DigitalSignature],
        ..Spec::ca("instance-no-kcs", 0)
    }
    .issue(Some(&chain.cas[2]));
    let leaf3 = Spec::leaf("leaf-under-no-kcs", ts).issue(Some(&no_kcs));
    defect(
        "ca-without-key-cert-sign",
        "the instance CA's key usage lacks keyCertSign",
        "bad_key_usage",
        "synthetic/root.pem",
        &[cas[0], cas[1], cas[2], &no_kcs],
        &leaf3,
    );
    // Path length: a separate root constrained to one intermediate, with three below it.
    let tight = Chain::new([
        Spec::ca("confidant test-vector pathlen root (not AWS)", 1),
        Spec::ca("regional.pathlen", 2),
        Spec::ca("zonal.pathlen", 1),
        Spec::ca("instance.pathlen", 0),
    ]);
    std::fs::write(
        dir.join("synthetic/pathlen-root.pem"),
        pem(&tight.cas[0].der),
    )
    .unwrap();
    let leaf4 = tight.leaf(Spec::leaf("leaf-pathlen", ts));
    let tcas: Vec<&Issued> = tight.cas.iter().collect();
    defect(
        "path-length-exceeded",
        "the root allows one intermediate CA below it; the chain has three",
        "bad_basic_constraints",
        "synthetic/pathlen-root.pem",
        &tcas,
        &leaf4,
    );
    // A self-made chain with the exact AWS names, against the real AWS root.
    let real_names = |i: usize| {
        let der = &base.cabundle[i];
        let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
        let mut names = Vec::new();
        for rdn in c.subject().iter() {
            for atv in rdn.iter() {
                let v = atv.as_str().unwrap().to_string();
                let ty = match atv.attr_type().to_id_string().as_str() {
                    "2.5.4.6" => DnType::CountryName,
                    "2.5.4.8" => DnType::StateOrProvinceName,
                    "2.5.4.7" => DnType::LocalityName,
                    "2.5.4.10" => DnType::OrganizationName,
                    "2.5.4.11" => DnType::OrganizationalUnitName,
                    _ => DnType::CommonName,
                };
                names.push((ty, v));
            }
        }
        names
    };
    let lookalike = Chain::new([
        Spec {
            names: real_names(0),
            ..Spec::ca("", 3)
        },
        Spec {
            names: real_names(1),
            ..Spec::ca("", 2)
        },
        Spec {
            names: real_names(2),
            ..Spec::ca("", 1)
        },
        Spec {
            names: real_names(3),
            ..Spec::ca("", 0)
        },
    ]);
    let leaf5 = lookalike.leaf(Spec::leaf(
        "i-04fd167167daacf3b-enc01845e97d0b3eb4e.eu-west-1.aws",
        ts,
    ));
    let lcas: Vec<&Issued> = lookalike.cas.iter().collect();
    defect(
        "self-made-root-with-aws-names",
        "a chain whose every name copies the real AWS chain, under a self-made root",
        "chain_untrusted",
        "aws",
        &lcas,
        &leaf5,
    );

    let synthetic = g
        .cases
        .iter()
        .filter(|c| {
            let name = c["name"].as_str().unwrap();
            !name.starts_with("real/") && !name.starts_with("negative/")
        })
        .count();
    let out = json!({
        "description": "Attestation conformance cases. `root`: \"aws\" (the embedded AWS Nitro root G1) or a PEM path relative to this directory. `at`: \"doc\" (the document's timestamp), \"now\", or unix milliseconds. `policy`: pcrs (index -> hex), allow_debug, max_age_secs, nonce, user_data, public_key (hex). `expect`: \"valid\" or an error code.",
        "cases": g.cases,
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&out).unwrap() + "\n",
    )
    .unwrap();
    eprintln!(
        "{} cases ({synthetic} derived rejection/control cases)",
        out["cases"].as_array().unwrap().len()
    );
}
