//! The KMS key policy for sealed settings: the enclave may Decrypt only with an attestation document
//! whose measurements match; nobody may Decrypt without one; the administrator manages the key but
//! cannot use it.

use serde_json::{json, Value};

use super::sealed::{CONTEXT_KEY, CONTEXT_VALUE};

/// What the policy binds.
#[derive(Debug, Clone)]
pub struct PolicySpec {
    pub account: String,
    pub admin_role: String,
    /// Who seals settings (GenerateDataKey); none means that grant is made elsewhere.
    pub operator_role: Option<String>,
    /// PCR index → 96 hex digits (SHA-384).
    pub pcrs: Vec<(usize, String)>,
    pub image_sha384: Option<String>,
}

/// Why a policy cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicySpecError {
    #[error("account id {0:?} is not 12 digits")]
    Account(String),
    #[error("{0:?} is not an IAM ARN")]
    Arn(String),
    #[error("PCR{0} is not 96 hex digits (SHA-384)")]
    Pcr(usize),
    #[error("PCR index {0} is out of range 0..=31")]
    PcrIndex(usize),
    #[error("--image-sha384 is not 96 hex digits")]
    ImageSha384,
    #[error("no measurement to require: give --pcr and/or --image-sha384")]
    Unbound,
}

fn sha384_hex(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl PolicySpec {
    fn validate(&self) -> Result<(), PolicySpecError> {
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PolicySpecError::Account(self.account.clone()));
        }
        for arn in std::iter::once(&self.admin_role).chain(self.operator_role.iter()) {
            if !arn.starts_with("arn:aws") || arn.split(':').count() < 6 {
                return Err(PolicySpecError::Arn(arn.clone()));
            }
        }
        for (i, v) in &self.pcrs {
            if *i > 31 {
                return Err(PolicySpecError::PcrIndex(*i));
            }
            if !sha384_hex(v) {
                return Err(PolicySpecError::Pcr(*i));
            }
        }
        if self.image_sha384.as_deref().is_some_and(|v| !sha384_hex(v)) {
            return Err(PolicySpecError::ImageSha384);
        }
        if self.pcrs.is_empty() && self.image_sha384.is_none() {
            return Err(PolicySpecError::Unbound);
        }
        Ok(())
    }

    /// The key policy document.
    pub fn policy(&self) -> Result<Value, PolicySpecError> {
        self.validate()?;
        let mut attestation = serde_json::Map::new();
        if let Some(image) = &self.image_sha384 {
            attestation.insert(
                "kms:RecipientAttestation:ImageSha384".into(),
                json!(image.to_lowercase()),
            );
        }
        for (i, v) in &self.pcrs {
            attestation.insert(
                format!("kms:RecipientAttestation:PCR{i}"),
                json!(v.to_lowercase()),
            );
        }
        let context = json!({ format!("kms:EncryptionContext:{CONTEXT_KEY}"): CONTEXT_VALUE });
        let mut statements = vec![
            json!({
                "Sid": "AdministerButNeverUse",
                "Effect": "Allow",
                "Principal": { "AWS": self.admin_role },
                "Action": [
                    "kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                    "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"
                ],
                "Resource": "*"
            }),
            json!({
                "Sid": "EnclaveDecryptsWithMatchingAttestation",
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:aws:iam::{}:root", self.account) },
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": { "StringEqualsIgnoreCase": attestation, "StringEquals": context }
            }),
            json!({
                "Sid": "DenyDecryptWithoutAttestation",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": { "Null": { "kms:RecipientAttestation:ImageSha384": "true" } }
            }),
        ];
        if let Some(operator) = &self.operator_role {
            statements.push(json!({
                "Sid": "OperatorSealsSettings",
                "Effect": "Allow",
                "Principal": { "AWS": operator },
                "Action": "kms:GenerateDataKey",
                "Resource": "*",
                "Condition": { "StringEquals": context }
            }));
        }
        Ok(
            json!({ "Version": "2012-10-17", "Id": "confidant-sealed-settings", "Statement": statements }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PolicySpec {
        PolicySpec {
            account: "123456789012".into(),
            admin_role: "arn:aws:iam::123456789012:role/KeyAdmin".into(),
            operator_role: Some("arn:aws:iam::123456789012:role/Operator".into()),
            pcrs: vec![(0, "AB".repeat(48)), (8, "cd".repeat(48))],
            image_sha384: Some("ef".repeat(48)),
        }
    }

    #[test]
    fn decrypt_requires_the_measurements_and_is_denied_without_attestation() {
        let p = spec().policy().unwrap();
        let text = serde_json::to_string(&p).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        let st = back["Statement"].as_array().unwrap();
        let allow = st
            .iter()
            .find(|s| s["Sid"] == "EnclaveDecryptsWithMatchingAttestation")
            .unwrap();
        let cond = &allow["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(cond["kms:RecipientAttestation:PCR0"], "ab".repeat(48));
        assert_eq!(cond["kms:RecipientAttestation:PCR8"], "cd".repeat(48));
        assert_eq!(
            cond["kms:RecipientAttestation:ImageSha384"],
            "ef".repeat(48)
        );
        let deny = st.iter().find(|s| s["Effect"] == "Deny").unwrap();
        assert_eq!(deny["Action"], "kms:Decrypt");
        assert_eq!(
            deny["Condition"]["Null"]["kms:RecipientAttestation:ImageSha384"],
            "true"
        );
        // The administrator may not use the key.
        let admin = st
            .iter()
            .find(|s| s["Sid"] == "AdministerButNeverUse")
            .unwrap();
        let actions: Vec<&str> = admin["Action"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(!actions
            .iter()
            .any(|a| a.contains("Decrypt") || a.contains("GenerateDataKey") || *a == "kms:*"));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let mut s = spec();
        s.account = "12".into();
        assert!(matches!(s.policy(), Err(PolicySpecError::Account(_))));
        let mut s = spec();
        s.pcrs = vec![(0, "ab".into())];
        assert_eq!(s.policy().unwrap_err(), PolicySpecError::Pcr(0));
        let mut s = spec();
        s.pcrs.clear();
        s.image_sha384 = None;
        assert_eq!(s.policy().unwrap_err(), PolicySpecError::Unbound);
        let mut s = spec();
        s.admin_role = "KeyAdmin".into();
        assert!(matches!(s.policy(), Err(PolicySpecError::Arn(_))));
    }
}
