//! The KMS key policy for sealed settings, as data: [`PolicySpec::key_policy`] builds it (the operator's
//! `kms-policy` prints [`KeyPolicy::to_json`]), and [`KeyPolicy::from_json`] + [`KeyPolicy::decide`]
//! evaluate the same types the way AWS KMS does for the calls Confidant makes (the test KMS gate).
//!
//! What the policy says: the enclave may `Decrypt` only with an attestation document whose
//! measurements match; nobody may `Decrypt` without one; the administrator manages the key but cannot
//! use it; the operator may only make data keys for settings.
//!
//! Evaluated: `Effect`, `Action` (with `*` and `?` wildcards), `Resource` (ignored: one key), and
//! `Condition` with `StringEquals`, `StringEqualsIgnoreCase` and `Null` over
//! `kms:RecipientAttestation:ImageSha384`, `kms:RecipientAttestation:PCR0`..`PCR31` and
//! `kms:EncryptionContext:KEY`. `Principal` is kept but not evaluated (the test server has one
//! caller). Anything else (`NotAction`, another operator or key) is refused when a policy is read, so
//! no part of a policy is silently ignored. Decision, as in IAM: an explicit Deny whose conditions hold
//! wins; otherwise an Allow whose conditions hold; otherwise the call is not allowed.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::sealed::{CONTEXT_KEY, CONTEXT_VALUE};

/// What the generated policy binds.
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

/// Why a policy cannot be generated.
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

/// Why a policy document cannot be enforced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("not a JSON key policy: {0}")]
    NotJson(String),
    #[error("the policy has no Statement")]
    NoStatement,
    #[error("statement {sid}: {what}")]
    Statement { sid: String, what: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operator {
    StringEquals,
    StringEqualsIgnoreCase,
    Null,
}

impl Operator {
    fn name(self) -> &'static str {
        match self {
            Operator::StringEquals => "StringEquals",
            Operator::StringEqualsIgnoreCase => "StringEqualsIgnoreCase",
            Operator::Null => "Null",
        }
    }
}

/// A condition key the policy may test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    ImageSha384,
    Pcr(usize),
    EncryptionContext(String),
}

impl std::fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConditionKey::ImageSha384 => write!(f, "kms:RecipientAttestation:ImageSha384"),
            ConditionKey::Pcr(i) => write!(f, "kms:RecipientAttestation:PCR{i}"),
            ConditionKey::EncryptionContext(k) => write!(f, "kms:EncryptionContext:{k}"),
        }
    }
}

impl ConditionKey {
    /// Condition key names are case-insensitive; an encryption-context key keeps its case.
    fn parse(name: &str) -> Option<ConditionKey> {
        let lower = name.to_ascii_lowercase();
        if lower == "kms:recipientattestation:imagesha384" {
            return Some(ConditionKey::ImageSha384);
        }
        if let Some(i) = lower.strip_prefix("kms:recipientattestation:pcr") {
            let i: usize = i.parse().ok().filter(|i| *i <= 31)?;
            return Some(ConditionKey::Pcr(i));
        }
        const CONTEXT: &str = "kms:encryptioncontext:";
        if lower.starts_with(CONTEXT) && name.len() > CONTEXT.len() {
            return Some(ConditionKey::EncryptionContext(
                name[CONTEXT.len()..].to_string(),
            ));
        }
        None
    }
}

/// One condition: the key's value must satisfy the operator for any one of `values` (IAM's OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub operator: Operator,
    pub key: ConditionKey,
    pub values: Vec<String>,
}

/// Who a statement names (kept for rendering; not evaluated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    Aws(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: String,
    pub effect: Effect,
    pub principal: Principal,
    pub actions: Vec<String>,
    pub conditions: Vec<Condition>,
}

/// A key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    pub id: String,
    pub statements: Vec<Statement>,
}

/// What a call brings for the condition keys.
#[derive(Debug, Default)]
pub struct Facts {
    /// The verified attestation document's PCRs; `None` when the call carries no attestation.
    pub pcrs: Option<BTreeMap<usize, Vec<u8>>>,
    pub encryption_context: BTreeMap<String, String>,
}

impl Facts {
    fn value(&self, key: &ConditionKey) -> Option<String> {
        match key {
            // KMS's ImageSha384 is PCR0, the measurement of the whole enclave image.
            ConditionKey::ImageSha384 => self.pcrs.as_ref()?.get(&0).map(hex::encode),
            ConditionKey::Pcr(i) => self.pcrs.as_ref()?.get(i).map(hex::encode),
            ConditionKey::EncryptionContext(k) => self.encryption_context.get(k).cloned(),
        }
    }
}

/// The outcome for one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// An explicit Deny applies (its Sid).
    Denied(String),
    /// No Allow applies; for each Allow statement that names the action, the first condition that
    /// failed ("Sid: key").
    NotAllowed(Vec<String>),
}

impl Decision {
    /// Why the call is refused, for the log and the error; `None` when it is allowed.
    pub fn refusal(&self) -> Option<String> {
        match self {
            Decision::Allowed => None,
            Decision::Denied(sid) => Some(format!("denied by statement {sid}")),
            Decision::NotAllowed(failed) if failed.is_empty() => {
                Some("no statement allows it".into())
            }
            Decision::NotAllowed(failed) => Some(format!(
                "no statement allows it (not satisfied: {})",
                failed.join(", ")
            )),
        }
    }
}

fn sha384_hex(s: &str) -> bool {
    s.len() == 96 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The actions an administrator holds: manage, never use.
const ADMIN_ACTIONS: [&str; 14] = [
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
];

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

    /// The key policy for sealed settings.
    pub fn key_policy(&self) -> Result<KeyPolicy, PolicySpecError> {
        self.validate()?;
        let eq = |operator, key, value: &str| Condition {
            operator,
            key,
            values: vec![value.to_string()],
        };
        let context = || {
            eq(
                Operator::StringEquals,
                ConditionKey::EncryptionContext(CONTEXT_KEY.into()),
                CONTEXT_VALUE,
            )
        };
        let mut attested: Vec<Condition> = self
            .image_sha384
            .iter()
            .map(|image| {
                eq(
                    Operator::StringEqualsIgnoreCase,
                    ConditionKey::ImageSha384,
                    &image.to_lowercase(),
                )
            })
            .chain(self.pcrs.iter().map(|(i, v)| {
                eq(
                    Operator::StringEqualsIgnoreCase,
                    ConditionKey::Pcr(*i),
                    &v.to_lowercase(),
                )
            }))
            .collect();
        attested.push(context());
        let mut statements = vec![
            Statement {
                sid: "AdministerButNeverUse".into(),
                effect: Effect::Allow,
                principal: Principal::Aws(vec![self.admin_role.clone()]),
                actions: ADMIN_ACTIONS.iter().map(|a| a.to_string()).collect(),
                conditions: Vec::new(),
            },
            Statement {
                sid: "EnclaveDecryptsWithMatchingAttestation".into(),
                effect: Effect::Allow,
                principal: Principal::Aws(vec![format!("arn:aws:iam::{}:root", self.account)]),
                actions: vec!["kms:Decrypt".into()],
                conditions: attested,
            },
            Statement {
                sid: "DenyDecryptWithoutAttestation".into(),
                effect: Effect::Deny,
                principal: Principal::Any,
                actions: vec!["kms:Decrypt".into()],
                conditions: vec![eq(Operator::Null, ConditionKey::ImageSha384, "true")],
            },
        ];
        if let Some(operator) = &self.operator_role {
            statements.push(Statement {
                sid: "OperatorSealsSettings".into(),
                effect: Effect::Allow,
                principal: Principal::Aws(vec![operator.clone()]),
                actions: vec!["kms:GenerateDataKey".into()],
                conditions: vec![context()],
            });
        }
        Ok(KeyPolicy {
            id: "confidant-sealed-settings".into(),
            statements,
        })
    }
}

/// One string, or a list of them.
fn one_or_many(values: &[String]) -> Value {
    match values {
        [one] => json!(one),
        many => json!(many),
    }
}

impl KeyPolicy {
    /// The policy document, as `put-key-policy` takes it.
    pub fn to_json(&self) -> Value {
        let statements: Vec<Value> = self
            .statements
            .iter()
            .map(|s| {
                let mut st = Map::new();
                st.insert("Sid".into(), json!(s.sid));
                st.insert(
                    "Effect".into(),
                    json!(match s.effect {
                        Effect::Allow => "Allow",
                        Effect::Deny => "Deny",
                    }),
                );
                st.insert(
                    "Principal".into(),
                    match &s.principal {
                        Principal::Any => json!("*"),
                        Principal::Aws(arns) => json!({ "AWS": one_or_many(arns) }),
                    },
                );
                st.insert("Action".into(), one_or_many(&s.actions));
                st.insert("Resource".into(), json!("*"));
                if !s.conditions.is_empty() {
                    let mut by_operator: BTreeMap<Operator, Map<String, Value>> = BTreeMap::new();
                    for c in &s.conditions {
                        by_operator
                            .entry(c.operator)
                            .or_default()
                            .insert(c.key.to_string(), one_or_many(&c.values));
                    }
                    let block: Map<String, Value> = by_operator
                        .into_iter()
                        .map(|(op, keys)| (op.name().to_string(), Value::Object(keys)))
                        .collect();
                    st.insert("Condition".into(), Value::Object(block));
                }
                Value::Object(st)
            })
            .collect();
        json!({ "Version": "2012-10-17", "Id": self.id, "Statement": statements })
    }

    /// Reads a policy document, refusing anything this evaluator would not enforce.
    pub fn from_json(text: &[u8]) -> Result<KeyPolicy, PolicyError> {
        let doc: Value =
            serde_json::from_slice(text).map_err(|e| PolicyError::NotJson(e.to_string()))?;
        let statements: Vec<&Value> = match doc.get("Statement") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(s @ Value::Object(_)) => vec![s],
            _ => return Err(PolicyError::NoStatement),
        };
        if statements.is_empty() {
            return Err(PolicyError::NoStatement);
        }
        let statements = statements
            .iter()
            .enumerate()
            .map(|(i, s)| statement(i, s))
            .collect::<Result<_, _>>()?;
        Ok(KeyPolicy {
            id: doc
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            statements,
        })
    }

    /// The decision for `action` (such as `kms:Decrypt`) with these facts.
    pub fn decide(&self, action: &str, facts: &Facts) -> Decision {
        let applicable = self
            .statements
            .iter()
            .filter(|s| s.actions.iter().any(|p| glob(p, action)));
        let mut failed = Vec::new();
        let mut allowed = false;
        for s in applicable {
            match (s.effect, s.conditions.iter().find(|c| !holds(c, facts))) {
                (Effect::Deny, None) => return Decision::Denied(s.sid.clone()),
                (Effect::Deny, Some(_)) => {}
                (Effect::Allow, None) => allowed = true,
                (Effect::Allow, Some(c)) => failed.push(format!("{}: {}", s.sid, c.key)),
            }
        }
        if allowed {
            Decision::Allowed
        } else {
            Decision::NotAllowed(failed)
        }
    }
}

fn holds(c: &Condition, facts: &Facts) -> bool {
    let actual = facts.value(&c.key);
    match c.operator {
        Operator::StringEquals => actual.is_some_and(|a| c.values.contains(&a)),
        Operator::StringEqualsIgnoreCase => {
            actual.is_some_and(|a| c.values.iter().any(|v| v.eq_ignore_ascii_case(&a)))
        }
        // Values were checked to be "true" or "false" when read.
        Operator::Null => c.values.iter().any(|v| (v == "true") == actual.is_none()),
    }
}

fn statement(index: usize, s: &Value) -> Result<Statement, PolicyError> {
    let sid = s
        .get("Sid")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{index}"));
    let err = |what: String| PolicyError::Statement {
        sid: sid.clone(),
        what,
    };
    let Some(map) = s.as_object() else {
        return Err(err("not an object".into()));
    };
    for field in map.keys() {
        if !matches!(
            field.as_str(),
            "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition"
        ) {
            return Err(err(format!("{field} is not supported by the gate")));
        }
    }
    let effect = match map.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => return Err(err("Effect must be Allow or Deny".into())),
    };
    let principal = match map.get("Principal") {
        None => Principal::Any,
        Some(Value::String(s)) if s == "*" => Principal::Any,
        Some(p) => Principal::Aws(
            strings(p.get("AWS"))
                .ok_or_else(|| err("Principal must be \"*\" or {\"AWS\": …}".into()))?,
        ),
    };
    let actions = strings(map.get("Action")).ok_or_else(|| err("Action is missing".into()))?;
    let mut conditions = Vec::new();
    if let Some(block) = map.get("Condition") {
        let block = block
            .as_object()
            .ok_or_else(|| err("Condition is not an object".into()))?;
        for (op, keys) in block {
            let operator = match op.as_str() {
                "StringEquals" => Operator::StringEquals,
                "StringEqualsIgnoreCase" => Operator::StringEqualsIgnoreCase,
                "Null" => Operator::Null,
                other => return Err(err(format!("condition operator {other} is not supported"))),
            };
            let keys = keys
                .as_object()
                .ok_or_else(|| err(format!("{op} is not an object")))?;
            for (name, values) in keys {
                let key = ConditionKey::parse(name)
                    .ok_or_else(|| err(format!("condition key {name} is not supported")))?;
                let values = strings(Some(values))
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| err(format!("{op} {name}: values must be strings")))?;
                if operator == Operator::Null && values.iter().any(|v| v != "true" && v != "false")
                {
                    return Err(err(format!(
                        "Null {name}: value must be \"true\" or \"false\""
                    )));
                }
                conditions.push(Condition {
                    operator,
                    key,
                    values,
                });
            }
        }
    }
    Ok(Statement {
        sid,
        effect,
        principal,
        actions,
        conditions,
    })
}

/// A string or a list of strings.
fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
        _ => None,
    }
}

/// IAM action matching: case-insensitive, `*` any run, `?` one character.
fn glob(pattern: &str, action: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let a: Vec<char> = action.to_ascii_lowercase().chars().collect();
    // Two-pointer wildcard match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < a.len() {
        if i < p.len() && (p[i] == '?' || p[i] == a[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const PCR0: [u8; 48] = [0xab; 48];
    const PCR8: [u8; 48] = [0xcd; 48];

    fn spec() -> PolicySpec {
        PolicySpec {
            account: "123456789012".into(),
            admin_role: "arn:aws:iam::123456789012:role/KeyAdmin".into(),
            operator_role: Some("arn:aws:iam::123456789012:role/Operator".into()),
            pcrs: vec![(0, hex::encode(PCR0)), (8, hex::encode_upper(PCR8))],
            image_sha384: None,
        }
    }

    /// The policy `kms-policy` prints, read back as the gate reads it.
    fn generated() -> KeyPolicy {
        let text = spec().key_policy().unwrap().to_json().to_string();
        KeyPolicy::from_json(text.as_bytes()).unwrap()
    }

    fn facts(pcrs: Option<&[(usize, [u8; 48])]>, context: &[(&str, &str)]) -> Facts {
        Facts {
            pcrs: pcrs.map(|p| p.iter().map(|(i, v)| (*i, v.to_vec())).collect()),
            encryption_context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const PURPOSE: (&str, &str) = ("purpose", "confidant-settings");

    #[test]
    fn rendering_and_reading_are_inverse() {
        // JSON groups conditions by operator and orders keys: compare in that order.
        let canonical = |mut p: KeyPolicy| {
            for s in &mut p.statements {
                s.conditions
                    .sort_by_key(|c| (c.operator.name(), c.key.to_string()));
            }
            p
        };
        let policy = spec().key_policy().unwrap();
        let read = KeyPolicy::from_json(policy.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(canonical(read), canonical(policy));
    }

    #[test]
    fn the_rendered_document_requires_the_measurements_and_denies_without_attestation() {
        let mut s = spec();
        s.image_sha384 = Some("EF".repeat(48));
        let doc = s.key_policy().unwrap().to_json();
        let st = doc["Statement"].as_array().unwrap();
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
        assert_eq!(deny["Principal"], "*");
        assert_eq!(
            deny["Condition"]["Null"]["kms:RecipientAttestation:ImageSha384"],
            "true"
        );
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
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.account = "12".into();
        assert!(matches!(s.key_policy(), Err(PolicySpecError::Account(_))));
        let mut s = spec();
        s.pcrs = vec![(0, "ab".into())];
        assert_eq!(s.key_policy().unwrap_err(), PolicySpecError::Pcr(0));
        let mut s = spec();
        s.pcrs = vec![(32, "ab".repeat(48))];
        assert_eq!(s.key_policy().unwrap_err(), PolicySpecError::PcrIndex(32));
        let mut s = spec();
        s.pcrs.clear();
        s.image_sha384 = None;
        assert_eq!(s.key_policy().unwrap_err(), PolicySpecError::Unbound);
        let mut s = spec();
        s.admin_role = "KeyAdmin".into();
        assert!(matches!(s.key_policy(), Err(PolicySpecError::Arn(_))));
    }

    #[test]
    fn the_generated_policy_releases_only_to_the_measured_enclave() {
        let p = generated();
        let good = facts(Some(&[(0, PCR0), (8, PCR8)]), &[PURPOSE]);
        assert_eq!(p.decide("kms:Decrypt", &good), Decision::Allowed);

        let other = facts(Some(&[(0, [0x11; 48]), (8, PCR8)]), &[PURPOSE]);
        assert_eq!(
            p.decide("kms:Decrypt", &other),
            Decision::NotAllowed(vec![
                "EnclaveDecryptsWithMatchingAttestation: kms:RecipientAttestation:PCR0".into()
            ])
        );
        // A document without a required PCR is not a match (fail closed).
        let missing = facts(Some(&[(0, PCR0)]), &[PURPOSE]);
        assert!(matches!(
            p.decide("kms:Decrypt", &missing),
            Decision::NotAllowed(_)
        ));
        // Another encryption context: the data key was not made for settings.
        let context = facts(Some(&[(0, PCR0), (8, PCR8)]), &[("purpose", "other")]);
        assert!(matches!(
            p.decide("kms:Decrypt", &context),
            Decision::NotAllowed(_)
        ));
    }

    #[test]
    fn nobody_decrypts_without_attestation_and_the_operator_only_seals() {
        let p = generated();
        let plain = facts(None, &[PURPOSE]);
        assert_eq!(
            p.decide("kms:Decrypt", &plain),
            Decision::Denied("DenyDecryptWithoutAttestation".into())
        );
        assert_eq!(p.decide("kms:GenerateDataKey", &plain), Decision::Allowed);
        assert!(matches!(
            p.decide("kms:GenerateDataKey", &facts(None, &[])),
            Decision::NotAllowed(_)
        ));
        // Administration is allowed without conditions; use beyond sealing is not.
        assert_eq!(p.decide("kms:DescribeKey", &plain), Decision::Allowed);
        assert!(matches!(
            p.decide("kms:Encrypt", &plain),
            Decision::NotAllowed(_)
        ));
    }

    #[test]
    fn what_cannot_be_enforced_is_refused_when_read() {
        let bad = |statement: &str| {
            KeyPolicy::from_json(format!(r#"{{"Statement":[{statement}]}}"#).as_bytes())
                .unwrap_err()
        };
        for (statement, what) in [
            (
                r#"{"Sid":"S","Effect":"Allow","NotAction":"kms:Decrypt"}"#,
                "NotAction is not supported",
            ),
            (
                r#"{"Sid":"S","Effect":"Maybe","Action":"kms:Decrypt"}"#,
                "Effect must be",
            ),
            (r#"{"Sid":"S","Effect":"Allow"}"#, "Action is missing"),
            (
                r#"{"Sid":"S","Effect":"Allow","Action":"kms:Decrypt","Condition":{"StringLike":{"kms:RecipientAttestation:PCR0":"a*"}}}"#,
                "operator StringLike",
            ),
            (
                r#"{"Sid":"S","Effect":"Allow","Action":"kms:Decrypt","Condition":{"StringEquals":{"aws:SourceIp":"10.0.0.1"}}}"#,
                "key aws:SourceIp",
            ),
            (
                r#"{"Sid":"S","Effect":"Allow","Action":"kms:Decrypt","Condition":{"StringEquals":{"kms:RecipientAttestation:PCR32":"00"}}}"#,
                "key kms:RecipientAttestation:PCR32",
            ),
            (
                r#"{"Sid":"S","Effect":"Deny","Action":"kms:Decrypt","Condition":{"Null":{"kms:RecipientAttestation:PCR0":"yes"}}}"#,
                "must be \"true\" or \"false\"",
            ),
            (
                r#"{"Sid":"S","Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:Decrypt"}"#,
                "Principal must be",
            ),
        ] {
            let e = bad(statement).to_string();
            assert!(e.contains(what) && e.starts_with("statement S"), "{e}");
        }
        assert_eq!(
            KeyPolicy::from_json(br#"{"Statement":[]}"#).unwrap_err(),
            PolicyError::NoStatement
        );
        assert!(matches!(
            KeyPolicy::from_json(b"{"),
            Err(PolicyError::NotJson(_))
        ));
    }

    #[test]
    fn actions_match_like_iam() {
        assert!(glob("kms:*", "kms:Decrypt"));
        assert!(glob("KMS:decrypt", "kms:Decrypt"));
        assert!(glob("kms:Generate*", "kms:GenerateDataKey"));
        assert!(glob("kms:*Key", "kms:GenerateDataKey"));
        assert!(glob("kms:Decryp?", "kms:Decrypt"));
        assert!(glob("*", "kms:Decrypt"));
        assert!(!glob("kms:Describe*", "kms:Decrypt"));
        assert!(!glob("kms:Decrypt", "kms:DecryptMore"));
        assert!(!glob("kms:Decrypt?", "kms:Decrypt"));
    }
}
