//! The chat template: how a conversation becomes model input, and the stop string that ends an answer.
//! The one definition the engine, the tools and the tests use.
//!
//! ```text
//! [system prompt "\n"]  "User: " question "\nAssistant:"  answer  "\nUser: " question "\nAssistant:" …
//! ```
//!
//! The system prefix and each turn are tokenized separately and their ids concatenated, so the system
//! prompt's tokens (and their KV cache) are the same for every conversation. (A newline is its own
//! pre-token for byte-level BPE, so the split never changes a merge across it.)

use zeroize::Zeroizing;

/// The string whose appearance ends an answer (the start of the next user turn); it is not emitted.
pub const STOP: &str = "\nUser:";

/// A conversation's framing around the sealed system prompt.
#[derive(Clone, Default)]
pub struct ChatTemplate {
    system_prefix: Zeroizing<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The system prompt is a sealed setting: its length only.
        f.debug_struct("ChatTemplate")
            .field("system_prefix_bytes", &self.system_prefix.len())
            .finish()
    }
}

impl ChatTemplate {
    /// A template with `system` (possibly empty) before every conversation.
    pub fn new(system: &str) -> ChatTemplate {
        let system_prefix = if system.is_empty() {
            String::new()
        } else {
            format!("{system}\n")
        };
        ChatTemplate {
            system_prefix: Zeroizing::new(system_prefix),
        }
    }

    /// What precedes the first turn of every conversation (empty without a system prompt).
    pub fn system_prefix(&self) -> &str {
        &self.system_prefix
    }

    /// The text of a user turn: the first one of a conversation, or a later one.
    pub fn turn(user: &str, first: bool) -> Zeroizing<String> {
        let sep = if first { "" } else { "\n" };
        Zeroizing::new(format!("{sep}User: {user}\nAssistant:"))
    }

    /// The stop strings of an answer.
    pub fn stop_strings() -> Vec<String> {
        vec![STOP.to_string()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_join_into_the_documented_transcript() {
        let t = ChatTemplate::new("Be brief.");
        let text = format!(
            "{}{} Sure.{}",
            t.system_prefix(),
            *ChatTemplate::turn("Hi?", true),
            *ChatTemplate::turn("More?", false)
        );
        assert_eq!(
            text,
            "Be brief.\nUser: Hi?\nAssistant: Sure.\nUser: More?\nAssistant:"
        );
        assert_eq!(ChatTemplate::new("").system_prefix(), "");
        assert!(ChatTemplate::turn("x", false).starts_with(STOP));
    }
}
