//! The key policy the gate enforces: the JSON `confidant-enclave kms-policy` prints, evaluated as AWS
//! KMS evaluates it for the calls the gate sees.
//!
//! Supported: `Effect`, `Action` (with `*` and `?` wildcards), `Resource` (ignored: one key), and
//! `Condition` with `StringEquals`, `StringEqualsIgnoreCase` and `Null` over
//! `kms:RecipientAttestation:ImageSha384`, `kms:RecipientAttestation:PCR0`..`PCR31` and
//! `kms:EncryptionContext:KEY`. `Principal` is not evaluated: the test server has one caller.
//! Anything else (`NotAction`, another operator or key) is refused when the policy is loaded, so no
//! part of a policy is silently ignored.
//!
//! Decision, as in IAM: an explicit Deny whose conditions hold wins; otherwise an Allow whose
//! conditions hold; otherwise the call is not allowed.

use std::collections::BTreeMap;

use serde_json::Value;

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
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringEqualsIgnoreCase,
    Null,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    ImageSha384,
    Pcr(usize),
    EncryptionContext(String),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::ImageSha384 => write!(f, "kms:RecipientAttestation:ImageSha384"),
            Key::Pcr(i) => write!(f, "kms:RecipientAttestation:PCR{i}"),
            Key::EncryptionContext(k) => write!(f, "kms:EncryptionContext:{k}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    key: Key,
    /// Any one of them satisfies the condition (IAM's OR over a value list).
    values: Vec<String>,
}

#[derive(Debug, Clone)]
struct Statement {
    sid: String,
    effect: Effect,
    actions: Vec<String>,
    conditions: Vec<Condition>,
}

/// A parsed key policy.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    statements: Vec<Statement>,
}

/// What a call brings for the condition keys.
#[derive(Debug, Default)]
pub struct Facts {
    /// The verified attestation document's PCRs; `None` when the call carries no attestation.
    pub pcrs: Option<BTreeMap<usize, Vec<u8>>>,
    pub encryption_context: BTreeMap<String, String>,
}

impl Facts {
    fn value(&self, key: &Key) -> Option<String> {
        match key {
            // KMS's ImageSha384 is PCR0, the measurement of the whole enclave image.
            Key::ImageSha384 => self.pcrs.as_ref()?.get(&0).map(hex::encode),
            Key::Pcr(i) => self.pcrs.as_ref()?.get(i).map(hex::encode),
            Key::EncryptionContext(k) => self.encryption_context.get(k).cloned(),
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

impl KeyPolicy {
    pub fn parse(text: &[u8]) -> Result<KeyPolicy, PolicyError> {
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
        Ok(KeyPolicy { statements })
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
        // Values were checked to be "true" or "false" at parse time.
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
                let key = key(name)
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

/// Condition key names are case-insensitive; an encryption-context key keeps its case.
fn key(name: &str) -> Option<Key> {
    let lower = name.to_ascii_lowercase();
    if lower == "kms:recipientattestation:imagesha384" {
        return Some(Key::ImageSha384);
    }
    if let Some(i) = lower.strip_prefix("kms:recipientattestation:pcr") {
        let i: usize = i.parse().ok().filter(|i| *i <= 31)?;
        return Some(Key::Pcr(i));
    }
    const CONTEXT: &str = "kms:encryptioncontext:";
    if lower.starts_with(CONTEXT) && name.len() > CONTEXT.len() {
        return Some(Key::EncryptionContext(name[CONTEXT.len()..].to_string()));
    }
    None
}

/// IAM action matching: case-insensitive, `*` any run, `?` one character.
fn glob(pattern: &str, action: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let a: Vec<char> = action.to_ascii_lowercase().chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last `*`.
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
    use confidant_enclave::kms::policy::PolicySpec;

    const PCR0: [u8; 48] = [0xab; 48];
    const PCR8: [u8; 48] = [0xcd; 48];

    /// The policy `kms-policy` prints, parsed back.
    fn generated() -> KeyPolicy {
        let spec = PolicySpec {
            account: "123456789012".into(),
            admin_role: "arn:aws:iam::123456789012:role/KeyAdmin".into(),
            operator_role: Some("arn:aws:iam::123456789012:role/Operator".into()),
            pcrs: vec![(0, hex::encode(PCR0)), (8, hex::encode_upper(PCR8))],
            image_sha384: None,
        };
        KeyPolicy::parse(spec.policy().unwrap().to_string().as_bytes()).unwrap()
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
    fn what_the_gate_cannot_enforce_is_refused_at_load() {
        let bad = |statement: &str| {
            KeyPolicy::parse(format!(r#"{{"Statement":[{statement}]}}"#).as_bytes()).unwrap_err()
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
        ] {
            let e = bad(statement).to_string();
            assert!(e.contains(what) && e.starts_with("statement S"), "{e}");
        }
        assert_eq!(
            KeyPolicy::parse(br#"{"Statement":[]}"#).unwrap_err(),
            PolicyError::NoStatement
        );
        assert!(matches!(
            KeyPolicy::parse(b"{"),
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
