//! The relay's TLS certificate: given as PEM files, or self-signed and kept in a directory; and a
//! resolver that picks up a renewed certificate without a restart (certbot or an ACM export rewrites
//! the files; the relay checks their modification times every few seconds).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub type CertAndKey = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

pub fn load(cert: &Path, key: &Path) -> Result<CertAndKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((certs, key))
}

/// The names a self-signed certificate always covers.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// `DIR/cert.pem` and `DIR/key.pem` for `localhost`, 127.0.0.1, ::1 and `extra` names; made on first
/// use, and made again when the names asked for change (they are recorded in `DIR/names`).
pub fn self_signed(dir: &Path, extra: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let names_file = dir.join("names");
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
    names.extend(
        extra
            .iter()
            .filter(|n| !LOCAL_NAMES.contains(&n.as_str()))
            .cloned(),
    );
    let wanted = names.join("\n") + "\n";
    let recorded = std::fs::read_to_string(&names_file).unwrap_or_else(|_| {
        // A directory from before names were recorded covers the local names.
        LOCAL_NAMES.join("\n") + "\n"
    });
    if !cert.exists() || recorded != wanted {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        // The key first, private from the start; then the certificate clients pin.
        write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
        std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
        std::fs::write(&names_file, wanted)
            .map_err(|e| format!("{}: {e}", names_file.display()))?;
    }
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn certified(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let (certs, key) = load(cert, key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("private key: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The certificate in use, replaced when its files change.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl Reloading {
    /// Loads the pair; a bad pair at start is an error.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Reloading>, String> {
        let loaded = certified(&cert, &key)?;
        let stamps = (modified(&cert), modified(&key));
        Ok(Arc::new(Reloading {
            current: RwLock::new((loaded, stamps.0, stamps.1)),
            cert,
            key,
        }))
    }

    /// Reloads when either file's modification time changed. `Ok(true)`: a new certificate is in use;
    /// an error keeps the old one (a renewal half-written is tried again at the next check).
    pub fn refresh(&self) -> Result<bool, String> {
        let stamps = (modified(&self.cert), modified(&self.key));
        {
            let current = self
                .current
                .read()
                .map_err(|_| "certificate lock poisoned")?;
            if (current.1, current.2) == stamps {
                return Ok(false);
            }
        }
        let loaded = certified(&self.cert, &self.key)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| "certificate lock poisoned")?;
        *current = (loaded, stamps.0, stamps.1);
        Ok(true)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_covers_extra_names_and_a_renewed_certificate_is_picked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed(dir.path(), &[]).expect("make");
        let first = std::fs::read(&cert).expect("cert");
        // Same names: kept.
        self_signed(dir.path(), &[]).expect("again");
        assert_eq!(std::fs::read(&cert).expect("cert"), first);
        let resolver = Reloading::new(cert.clone(), key.clone()).expect("load");
        assert!(!resolver.refresh().expect("unchanged"));
        // An extra name: a new certificate covering it, which the running resolver then serves.
        std::thread::sleep(std::time::Duration::from_millis(20));
        self_signed(dir.path(), &["relay.example.com".into()]).expect("renew");
        let renewed = std::fs::read(&cert).expect("cert");
        assert_ne!(renewed, first);
        let der = CertificateDer::pem_slice_iter(&renewed)
            .next()
            .expect("pem")
            .expect("der");
        assert!(
            der.windows(17).any(|w| w == b"relay.example.com"),
            "the new name is in the certificate"
        );
        assert!(resolver.refresh().expect("reload"));
        let served = resolver.current.read().expect("lock").0.cert[0].clone();
        assert_eq!(served, der);
        // A broken renewal keeps the old certificate.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, "not pem").expect("break");
        assert!(resolver.refresh().is_err());
        assert_eq!(resolver.current.read().expect("lock").0.cert[0], der);
    }
}
