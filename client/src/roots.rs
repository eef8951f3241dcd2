//! Which roots a command trusts: the embedded AWS Nitro root unless `--root` says otherwise.

use std::path::PathBuf;

use crate::SetupError;

/// DER of the roots in `paths`, or the AWS Nitro root G1 when `paths` is empty.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, SetupError> {
    if paths.is_empty() {
        return Ok(vec![confidant_certs::aws_nitro_root_g1().to_vec()]);
    }
    let mut roots = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SetupError::Io(format!("--root {}: {e}", path.display())))?;
        let certs = confidant_certs::pem::certificates_from_pem(&text)
            .map_err(|e| SetupError::Invalid(format!("--root {}: {e}", path.display())))?;
        roots.extend(certs);
    }
    Ok(roots)
}
