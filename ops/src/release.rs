//! `release-key` and `release-sign`: the operator's release key (P-384) and the manifests it signs
//! (`confidant_protocol::release`). Clients pin the key's public half instead of raw PCR values.
//!
//! The private key is a PKCS#8 file written 0600; keep it off the parent instances. A key held in
//! AWS KMS (ECC_NIST_P384, SIGN_VERIFY) works the same way: `release-sign --tbs-out` writes the COSE
//! `Sig_structure` to sign, `aws kms sign --message-type RAW --signing-algorithm ECDSA_SHA_384`
//! signs it (KMS hashes it with SHA-384, as ES384 does), and `release-sign --kms-signature`
//! assembles the manifest from the DER signature KMS returns.
//!
//! A release can also be signed through Sigstore, so that it is public in the Rekor log:
//! `release-sign --body-out` writes the manifest's body, `cosign sign-blob --key … --bundle` signs
//! and logs it, and `release-pack` puts the body and the bundle into the one file the relay serves.

use std::path::PathBuf;

use confidant_protocol::release::{self, Manifest, PcrTuple};
use confidant_protocol::UnixMillis;
use confidant_verifier::signature::sig_structure;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Directory for release-key.pk8 (private, 0600) and release-key.pub (hex of the public point,
    /// what clients pin with --release-key).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Release number: higher than every earlier release (clients refuse to go back below the
    /// highest they accepted).
    #[arg(long)]
    version: u64,
    /// An image this release admits: PCR0,PCR1,PCR2 (hex, comma-separated); repeat for the old and
    /// the new image during a rollout.
    #[arg(long = "pcrs", value_name = "PCR0,PCR1,PCR2", required = true)]
    pcrs: Vec<String>,
    /// The model digest (SHA-256 hex) the enclaves attest.
    #[arg(long, value_name = "HEX")]
    model_digest: String,
    /// The settings digest the enclaves attest, if they have sealed settings.
    #[arg(long, value_name = "HEX")]
    settings_digest: Option<String>,
    /// Valid from (unix seconds) [default: now].
    #[arg(long, value_name = "SECS")]
    not_before: Option<u64>,
    /// Valid for this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    days: u64,
    /// The release key (PKCS#8, from release-key).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["tbs_out", "kms_signature", "body_out"])]
    key: Option<PathBuf>,
    /// Write the bytes to sign (the COSE Sig_structure, at most 4096 bytes as KMS takes a RAW
    /// message) for a key in KMS, and stop. Give the same flags, and --not-before, when assembling.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "kms_signature", "body_out"])]
    tbs_out: Option<PathBuf>,
    /// Write the manifest's body (canonical CBOR, unsigned) for `cosign sign-blob`, and stop; then
    /// `release-pack` joins it with cosign's bundle.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["key", "kms_signature"])]
    body_out: Option<PathBuf>,
    /// The DER ECDSA signature KMS returned over those bytes (`aws kms sign … --output text --query
    /// Signature | base64 -d`); the body is rebuilt from the same flags.
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    kms_signature: Option<PathBuf>,
    /// The public key to check a KMS signature against (hex, as release-key.pub).
    #[arg(long, value_name = "HEX", requires = "kms_signature")]
    public_key: Option<String>,
    /// Where to write the manifest (COSE_Sign1).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// The manifest's body, from `release-sign --body-out`.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// The Sigstore bundle `cosign sign-blob --bundle` wrote for it (JSON).
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// Where to write the file the relay serves (`--release-manifest`).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// The largest message KMS signs as RAW (it hashes it itself).
const KMS_RAW_MAX: usize = 4096;

pub fn key(args: KeyArgs) -> Result<(), String> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
        .map_err(|_| "generating the key failed".to_string())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "the generated key does not load".to_string())?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let private = args.out.join("release-key.pk8");
    write_private(&private, pkcs8.as_ref())?;
    let public = hex::encode(pair.public_key().as_ref());
    let pub_path = args.out.join("release-key.pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| format!("{}: {e}", pub_path.display()))?;
    println!("{public}");
    eprintln!(
        "wrote {} (keep it secret) and {}",
        private.display(),
        pub_path.display()
    );
    Ok(())
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn digest32(flag: &str, hex_str: &str) -> Result<[u8; 32], String> {
    hex::decode(hex_str.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{flag}: a SHA-256 digest is 64 hex digits"))
}

fn tuple(text: &str) -> Result<PcrTuple, String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let mut t = [[0u8; 48]; 3];
    if parts.len() != 3 {
        return Err("--pcrs takes PCR0,PCR1,PCR2".into());
    }
    for (slot, part) in t.iter_mut().zip(parts) {
        *slot = hex::decode(part)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("--pcrs: each PCR is 96 hex digits")?;
    }
    Ok(t)
}

fn manifest(args: &SignArgs) -> Result<Manifest, String> {
    let not_before = args
        .not_before
        .map_or_else(UnixMillis::now, UnixMillis::from_secs);
    let not_before = UnixMillis::from_secs(not_before.as_secs());
    let expires = not_before.saturating_add(std::time::Duration::from_secs(
        args.days.saturating_mul(86_400),
    ));
    if args.pcrs.len() > release::MAX_TUPLES {
        return Err(format!("at most {} --pcrs", release::MAX_TUPLES));
    }
    Ok(Manifest {
        version: args.version,
        not_before,
        expires,
        pcrs: args
            .pcrs
            .iter()
            .map(|p| tuple(p))
            .collect::<Result<_, _>>()?,
        model: digest32("--model-digest", &args.model_digest)?,
        settings: args
            .settings_digest
            .as_deref()
            .map(|s| digest32("--settings-digest", s))
            .transpose()?,
    })
}

pub fn sign(args: SignArgs) -> Result<(), String> {
    let m = manifest(&args)?;
    let (protected, body) = m.to_be_signed();
    let tbs = sig_structure(&protected, &body);
    if let Some(path) = &args.body_out {
        std::fs::write(path, &body).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "wrote release {}'s body to {}; sign it with `cosign sign-blob --key … --bundle \
             BUNDLE {}`, then run release-pack",
            m.version,
            path.display(),
            path.display()
        );
        return Ok(());
    }
    if let Some(path) = &args.tbs_out {
        if tbs.len() > KMS_RAW_MAX {
            return Err(format!(
                "the manifest's Sig_structure is {} bytes, over KMS's {KMS_RAW_MAX} for a RAW message: list fewer images",
                tbs.len()
            ));
        }
        std::fs::write(path, &tbs).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!(
            "wrote the bytes to sign to {}; sign them with KMS (--message-type RAW), then run again \
             with --kms-signature and --not-before {}",
            path.display(),
            m.not_before.as_secs()
        );
        return Ok(());
    }
    let signature = match (&args.key, &args.kms_signature) {
        (Some(key), _) => {
            let pkcs8 = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
            let rng = SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8, &rng)
                .map_err(|_| format!("{}: not a P-384 PKCS#8 key", key.display()))?;
            pair.sign(&rng, &tbs)
                .map_err(|_| "signing failed".to_string())?
                .as_ref()
                .to_vec()
        }
        (None, Some(der)) => {
            let der = std::fs::read(der).map_err(|e| format!("{}: {e}", der.display()))?;
            der_to_fixed(&der).ok_or("--kms-signature: not a DER ECDSA P-384 signature")?
        }
        (None, None) => return Err("give --key, --tbs-out or --kms-signature".into()),
    };
    let cose = release::assemble(&protected, &body, &signature);
    // Whatever signed it, the manifest must open under the key clients will pin.
    if let Some(pk) = &args.public_key {
        let pk = hex::decode(pk.trim()).map_err(|_| "--public-key: not hex".to_string())?;
        release::open(&cose, &pk)
            .map_err(|e| format!("the signed manifest does not verify: {e}"))?;
    }
    let out = args.out.ok_or("--out: where to write the manifest")?;
    std::fs::write(&out, &cose).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote release {} ({} image{}, valid {} to {}) to {}",
        m.version,
        m.pcrs.len(),
        if m.pcrs.len() == 1 { "" } else { "s" },
        m.not_before.to_rfc3339(),
        m.expires.to_rfc3339(),
        out.display()
    );
    Ok(())
}

/// Joins a manifest body and its Sigstore bundle into the relay's file, after checking that the
/// body is a manifest and the bundle JSON. The bundle's signature is the client's to check (against
/// its trusted root); `cosign verify-blob` checks it here.
pub fn pack(args: PackArgs) -> Result<(), String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let body = read(&args.manifest)?;
    let m = Manifest::decode(&body).map_err(|e| format!("--manifest: {e}"))?;
    let bundle = String::from_utf8(read(&args.bundle)?)
        .map_err(|_| "--bundle: not UTF-8 JSON".to_string())?;
    match serde_json::from_str::<serde_json::Value>(&bundle) {
        Ok(v) if v.get("mediaType").is_some() => {}
        _ => return Err("--bundle: not a Sigstore bundle (JSON with a mediaType)".into()),
    }
    let packed = release::pack_sigstore(&body, &bundle);
    if packed.len() > release::MAX_LEN {
        return Err(format!(
            "the packed manifest is {} bytes, over the {} a client reads: list fewer images",
            packed.len(),
            release::MAX_LEN
        ));
    }
    std::fs::write(&args.out, &packed).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!(
        "wrote release {} (Sigstore-signed) to {}",
        m.version,
        args.out.display()
    );
    Ok(())
}

/// An ECDSA signature's DER `SEQUENCE { r INTEGER, s INTEGER }` as COSE's r ‖ s, 48 bytes each.
fn der_to_fixed(der: &[u8]) -> Option<Vec<u8>> {
    let (tag, len, rest) = (der.first()?, *der.get(1)? as usize, der.get(2..)?);
    if *tag != 0x30 || len != rest.len() || len > 0x7f {
        return None;
    }
    let mut out = Vec::with_capacity(96);
    let mut rest = rest;
    for _ in 0..2 {
        let (t, n) = (*rest.first()?, *rest.get(1)? as usize);
        let int = rest.get(2..2 + n)?;
        if t != 0x02 || n == 0 {
            return None;
        }
        let int = match int {
            [0, tail @ ..] if tail.first().is_some_and(|b| b & 0x80 != 0) => tail,
            _ => int,
        };
        if int.len() > 48 {
            return None;
        }
        out.extend(std::iter::repeat_n(0, 48 - int.len()));
        out.extend_from_slice(int);
        rest = &rest[2 + n..];
    }
    rest.is_empty().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING;

    #[test]
    fn a_der_signature_becomes_the_fixed_form_that_verifies() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let der_key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap();
        let m = Manifest {
            version: 1,
            not_before: UnixMillis::from_secs(1),
            expires: UnixMillis::from_secs(2),
            pcrs: vec![[[1; 48], [2; 48], [3; 48]]],
            model: [4; 32],
            settings: None,
        };
        let (p, body) = m.to_be_signed();
        // As KMS signs: DER, over the same Sig_structure.
        for _ in 0..20 {
            let der = der_key.sign(&rng, &sig_structure(&p, &body)).unwrap();
            let fixed = der_to_fixed(der.as_ref()).unwrap();
            let cose = release::assemble(&p, &body, &fixed);
            assert_eq!(
                release::open(&cose, der_key.public_key().as_ref()).unwrap(),
                m
            );
        }
        assert!(der_to_fixed(&[0x30, 0x00]).is_none());
        assert!(der_to_fixed(b"not der").is_none());
    }
}
