//! What travels inside the encryption: the question (JSON in a `REQUEST` or `SESSION` turn) and the
//! trailer (JSON in the final response chunk). Every other chunk is UTF-8 answer text.
//!
//! The question is parsed by hand rather than derived: its errors name the offending field from a
//! fixed list, never a value or an unknown key the client sent (they travel back in cleartext `ERROR`
//! frames), and the prompt is held in zeroizing memory from the moment it is parsed.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use zeroize::Zeroizing;

/// A question and how to answer it.
#[derive(Clone, PartialEq, Default)]
pub struct Ask {
    pub prompt: Zeroizing<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub seed: Option<u64>,
    /// Keep a session (its keys and the model's state) for follow-up turns. A one-shot question
    /// (`false`, the default) leaves nothing behind in the enclave once it is answered.
    pub session: bool,
    /// The traffic shape (`shape`): `None` leaves it to the enclave (on by default); `Some(false)`
    /// asks for each piece of text as it comes, unpadded.
    pub shape: Option<bool>,
}

impl fmt::Debug for Ask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prompt is secret: its length only.
        f.debug_struct("Ask")
            .field("prompt_bytes", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("top_k", &self.top_k)
            .field("seed", &self.seed)
            .field("session", &self.session)
            .field("shape", &self.shape)
            .finish()
    }
}

/// Why a decrypted question was refused. Messages are fixed text and field names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    #[error("the question is not a JSON object")]
    NotAnObject,
    #[error("the question has a field this version does not know")]
    UnknownField,
    #[error("the question's field `{0}` appears twice")]
    DuplicateField(&'static str),
    #[error("the question's field `{0}` has the wrong type or is out of range")]
    WrongType(&'static str),
    #[error("the question has no `prompt`")]
    MissingPrompt,
}

const FIELDS: [&str; 8] = [
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "session",
    "shape",
];

impl Ask {
    /// A question with default generation options.
    pub fn new(prompt: impl Into<String>) -> Ask {
        Ask {
            prompt: Zeroizing::new(prompt.into()),
            ..Ask::default()
        }
    }

    /// The JSON encoding, in zeroizing memory sized up front so no reallocation leaves a copy of
    /// the prompt behind.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        // JSON escaping at most sextuples a character (`\u00XX`).
        let mut out = Zeroizing::new(Vec::with_capacity(self.prompt.len() * 6 + 160));
        out.extend_from_slice(b"{\"prompt\":");
        let _ = serde_json::to_writer(&mut *out, self.prompt.as_str());
        let mut field = |name: &str, value: serde_json::Value| {
            out.extend_from_slice(format!(",\"{name}\":{value}").as_bytes());
        };
        if let Some(v) = self.max_tokens {
            field("max_tokens", v.into());
        }
        if let Some(v) = self.temperature {
            field("temperature", f64::from(v).into());
        }
        if let Some(v) = self.top_p {
            field("top_p", f64::from(v).into());
        }
        if let Some(v) = self.top_k {
            field("top_k", v.into());
        }
        if let Some(v) = self.seed {
            field("seed", v.into());
        }
        if self.session {
            field("session", true.into());
        }
        if let Some(v) = self.shape {
            field("shape", v.into());
        }
        out.push(b'}');
        out
    }

    /// Strict decoding: unknown, duplicate or mistyped fields are refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ask, AskError> {
        let mut failure = None;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = AskSeed {
            failure: &mut failure,
        }
        .deserialize(&mut de)
        .and_then(|ask| de.end().map(|()| ask));
        match (parsed, failure) {
            (Ok(ask), None) => Ok(ask),
            (_, Some(e)) => Err(e),
            (Err(_), None) => Err(AskError::NotAnObject),
        }
    }
}

/// Deserializes an [`Ask`], recording a precise [`AskError`] beside serde's (which may quote values).
struct AskSeed<'a> {
    failure: &'a mut Option<AskError>,
}

impl<'de> DeserializeSeed<'de> for AskSeed<'_> {
    type Value = Ask;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Ask, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AskSeed<'_> {
    type Value = Ask;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a question object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ask, A::Error> {
        let mut ask = Ask::default();
        let mut seen = [false; FIELDS.len()];
        let mut fail = |e: AskError| -> A::Error {
            *self.failure = Some(e);
            de::Error::custom("refused")
        };
        // Keys are borrowed or dropped at once: an unknown key is never kept or quoted.
        while let Some(key) = map.next_key::<KeyName>()? {
            let Some(index) = key.0 else {
                return Err(fail(AskError::UnknownField));
            };
            let name = FIELDS[index];
            if std::mem::replace(&mut seen[index], true) {
                return Err(fail(AskError::DuplicateField(name)));
            }
            let wrong = |_| AskError::WrongType(name);
            match name {
                "prompt" => {
                    let s: Zeroizing<String> = map
                        .next_value::<ZeroizingString>()
                        .map_err(|e| fail(wrong(e)))?
                        .0;
                    ask.prompt = s;
                }
                "max_tokens" => {
                    ask.max_tokens = Some(map.next_value().map_err(|e| fail(wrong(e)))?)
                }
                "temperature" => {
                    let v: f32 = map.next_value().map_err(|e| fail(wrong(e)))?;
                    ask.temperature =
                        Some(finite(v).ok_or_else(|| fail(AskError::WrongType(name)))?);
                }
                "top_p" => {
                    let v: f32 = map.next_value().map_err(|e| fail(wrong(e)))?;
                    ask.top_p = Some(finite(v).ok_or_else(|| fail(AskError::WrongType(name)))?);
                }
                "top_k" => ask.top_k = Some(map.next_value().map_err(|e| fail(wrong(e)))?),
                "seed" => ask.seed = Some(map.next_value().map_err(|e| fail(wrong(e)))?),
                "session" => ask.session = map.next_value().map_err(|e| fail(wrong(e)))?,
                _ => ask.shape = Some(map.next_value().map_err(|e| fail(wrong(e)))?),
            }
        }
        if !seen[0] {
            return Err(fail(AskError::MissingPrompt));
        }
        Ok(ask)
    }
}

fn finite(v: f32) -> Option<f32> {
    v.is_finite().then_some(v)
}

/// A map key: the index of a known field, or `None` (the key itself is not kept).
struct KeyName(Option<usize>);

impl<'de> Deserialize<'de> for KeyName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyName, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyName, E> {
                Ok(KeyName(FIELDS.iter().position(|f| *f == v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON string read straight into zeroizing memory.
struct ZeroizingString(Zeroizing<String>);

impl<'de> Deserialize<'de> for ZeroizingString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ZeroizingString, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ZeroizingString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ZeroizingString, E> {
                Ok(ZeroizingString(Zeroizing::new(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<ZeroizingString, E> {
                Ok(ZeroizingString(Zeroizing::new(v)))
            }
        }
        d.deserialize_string(V)
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// The model ended its answer.
    Eos,
    /// The answer reached a stop string (the start of the next turn).
    Stop,
    /// The answer reached its token limit: it is cut short.
    Length,
}

impl Finish {
    pub const fn as_str(self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

impl fmt::Display for Finish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the answer ended; the final chunk's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trailer {
    pub finish: Finish,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// The answer's signed receipt (`receipt`), as standard base64 of its COSE_Sign1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
}

impl Trailer {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Trailer, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Base64 of a receipt, as the `receipt` field carries it.
    pub fn encode_receipt(cose: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(cose)
    }

    /// The receipt's bytes, if the trailer carries one that decodes.
    pub fn receipt_bytes(&self) -> Option<Result<Vec<u8>, ()>> {
        use base64::Engine;
        let r = self.receipt.as_deref()?;
        Some(
            base64::engine::general_purpose::STANDARD
                .decode(r)
                .map_err(|_| ()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let a = Ask {
            max_tokens: Some(8),
            seed: Some(1),
            temperature: Some(0.5),
            session: true,
            shape: Some(false),
            ..Ask::new("hi")
        };
        assert_eq!(Ask::from_bytes(&a.to_bytes()).unwrap(), a);
        // Padding: whitespace after the object is JSON, and changes nothing.
        let mut padded = a.to_bytes().to_vec();
        padded.resize(1024, b' ');
        assert_eq!(Ask::from_bytes(&padded).unwrap(), a);
        assert_eq!(
            Ask::from_bytes(br#"{"prompt":"x","max_token":3}"#),
            Err(AskError::UnknownField)
        );
        assert_eq!(Ask::from_bytes(b"not json"), Err(AskError::NotAnObject));
        assert_eq!(Ask::from_bytes(b"[1]"), Err(AskError::NotAnObject));
        assert_eq!(Ask::from_bytes(b"{}"), Err(AskError::MissingPrompt));
        assert_eq!(
            Ask::from_bytes(br#"{"prompt":"x"} trailing"#),
            Err(AskError::NotAnObject)
        );
    }

    #[test]
    fn errors_name_fields_never_values() {
        for (body, want) in [
            (
                r#"{"prompt":"x","max_tokens":"SECRET-VALUE"}"#,
                AskError::WrongType("max_tokens"),
            ),
            (r#"{"prompt":17}"#, AskError::WrongType("prompt")),
            (
                r#"{"prompt":"x","prompt":"SECRET-VALUE"}"#,
                AskError::DuplicateField("prompt"),
            ),
            (r#"{"SECRET-KEY":1,"prompt":"x"}"#, AskError::UnknownField),
            (r#"{"prompt":"x","seed":-1}"#, AskError::WrongType("seed")),
            (
                r#"{"prompt":"x","session":"yes"}"#,
                AskError::WrongType("session"),
            ),
            (
                r#"{"prompt":"x","temperature":1e300}"#,
                AskError::WrongType("temperature"),
            ),
        ] {
            let e = Ask::from_bytes(body.as_bytes()).unwrap_err();
            assert_eq!(e, want, "{body}");
            assert!(!e.to_string().contains("SECRET"), "{e}");
        }
    }

    #[test]
    fn the_trailer_finish_is_typed() {
        let t = Trailer {
            finish: Finish::Length,
            prompt_tokens: 3,
            generated_tokens: 4,
            receipt: None,
        };
        assert_eq!(
            String::from_utf8(t.to_bytes()).unwrap(),
            r#"{"finish":"length","prompt_tokens":3,"generated_tokens":4}"#
        );
        assert_eq!(Trailer::from_bytes(&t.to_bytes()).unwrap(), t);
        assert!(Trailer::from_bytes(
            br#"{"finish":"cancelled","prompt_tokens":1,"generated_tokens":1}"#
        )
        .is_err());
    }
}
