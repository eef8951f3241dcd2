//! Certificates from PEM text.

/// Why PEM text did not yield certificates.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PemError {
    #[error("not valid PEM: {0}")]
    Invalid(String),
    #[error("PEM holds no CERTIFICATE block")]
    NoCertificate,
    #[error("PEM block {index} is a {tag}, not a CERTIFICATE")]
    UnexpectedBlock { index: usize, tag: String },
}

/// Every `CERTIFICATE` block of `text`, as DER, in order. Any other block is an error: a root file that
/// also holds a private key is a mistake worth stopping for.
pub fn certificates_from_pem(text: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = ::pem::parse_many(text).map_err(|e| PemError::Invalid(e.to_string()))?;
    if blocks.is_empty() {
        return Err(PemError::NoCertificate);
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            if block.tag() == "CERTIFICATE" {
                Ok(block.into_contents())
            } else {
                Err(PemError::UnexpectedBlock {
                    index,
                    tag: block.tag().to_string(),
                })
            }
        })
        .collect()
}

/// PEM text for one DER certificate.
pub fn certificate_to_pem(der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_foreign_blocks() {
        assert_eq!(certificates_from_pem(""), Err(PemError::NoCertificate));
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            certificates_from_pem(key),
            Err(PemError::UnexpectedBlock { index: 0, .. })
        ));
    }

    #[test]
    fn round_trips() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(
            certificates_from_pem(&certificate_to_pem(&der)).unwrap(),
            vec![der]
        );
    }
}
