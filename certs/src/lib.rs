//! Trust anchors for Confidant.
//!
//! * [`aws_nitro_root_g1`]: the AWS Nitro Enclaves root "G1", embedded at build time and pinned by the
//!   SHA-256 of its DER ([`AWS_NITRO_ROOT_G1_SHA256`]). It is the only root a client trusts by default.
//! * [`pem`]: reading certificates from PEM files given on the command line.
//! * `dev_ca` (feature `dev-ca`): the development CA that signs documents of the emulated NSM. Its root
//!   names itself as a development root so nobody mistakes it for AWS.

#[cfg(feature = "dev-ca")]
pub mod dev_ca;
pub mod pem;

/// DER of the AWS Nitro Enclaves root G1 (CN=aws.nitro-enclaves, O=Amazon, OU=AWS, C=US; P-384).
///
/// Source: <https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>; the PEM beside it in
/// `roots/` is the same certificate (a test checks that they agree).
const AWS_NITRO_ROOT_G1_DER: &[u8] = include_bytes!("../roots/aws-nitro-root-g1.der");

/// SHA-256 of the DER of the AWS Nitro Enclaves root G1, as AWS documents it.
pub const AWS_NITRO_ROOT_G1_SHA256: [u8; 32] = [
    0x64, 0x1a, 0x03, 0x21, 0xa3, 0xe2, 0x44, 0xef, 0xe4, 0x56, 0x46, 0x31, 0x95, 0xd6, 0x06, 0x31,
    0x7e, 0xd7, 0xcd, 0xcc, 0x3c, 0x17, 0x56, 0xe0, 0x98, 0x93, 0xf3, 0xc6, 0x8f, 0x79, 0xbb, 0x5b,
];

/// The AWS Nitro Enclaves root G1 as DER.
///
/// The embedded bytes are checked against [`AWS_NITRO_ROOT_G1_SHA256`] on every call (one SHA-256 of
/// ~530 bytes), so a build that somehow embedded other bytes fails closed instead of trusting them.
pub fn aws_nitro_root_g1() -> &'static [u8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, AWS_NITRO_ROOT_G1_DER);
    assert!(
        digest.as_ref() == AWS_NITRO_ROOT_G1_SHA256,
        "embedded AWS Nitro root does not match its pinned SHA-256"
    );
    AWS_NITRO_ROOT_G1_DER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn root_g1_der_sha256_is_the_documented_fingerprint() {
        let digest = ring::digest::digest(&ring::digest::SHA256, aws_nitro_root_g1());
        assert_eq!(
            hex(digest.as_ref()),
            "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
        );
    }

    #[test]
    fn embedded_pem_and_der_agree() {
        let pem = include_str!("../roots/aws-nitro-root-g1.pem");
        let certs = pem::certificates_from_pem(pem).unwrap();
        assert_eq!(certs, vec![aws_nitro_root_g1().to_vec()]);
    }
}
