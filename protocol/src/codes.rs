//! The one registry of error codes: every code the enclave, the relay or the client puts on the wire
//! (`ERROR` frames) or prints (`error: <code>: …`, `rejected: <code>: …`). Codes are stable: scripts,
//! tests and the conformance vectors match them, so one is never renamed or reused.
//!
//! `docs/protocol.md` lists exactly these codes (a test compares them), together with the verifier's
//! rejection codes (`confidant_verifier::Code`), which attestation failures print.

use std::fmt;

/// Defines [`Code`] from groups of `Variant = "wire_name": "meaning";` entries.
macro_rules! errors {
    ($(
        $group:literal {
            $( $(#[$attr:meta])* $variant:ident = $wire:literal : $meaning:literal; )*
        }
    )*) => {
        /// A stable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($( $(#[$attr])* $variant, )*)*
        }

        impl Code {
            /// Every code, in registry order.
            pub const ALL: &'static [Code] = &[$($(Code::$variant,)*)*];

            /// The wire form, `[a-z0-9_]+`.
            pub const fn as_str(self) -> &'static str {
                match self { $($(Code::$variant => $wire,)*)* }
            }

            /// What the code means, for documentation and help text.
            pub const fn meaning(self) -> &'static str {
                match self { $($(Code::$variant => $meaning,)*)* }
            }

            /// The registry group the code belongs to (`framing`, `requests`, …).
            pub const fn group(self) -> &'static str {
                match self { $($(Code::$variant => $group,)*)* }
            }

            /// The code with this wire form, if it is registered.
            pub fn from_wire(wire: &str) -> Option<Code> {
                match wire {
                    $($($wire => Some(Code::$variant),)*)*
                    _ => None,
                }
            }
        }
    };
}

errors! {
    "framing" {
        UnknownFrame = "unknown_frame": "a frame type this protocol version does not define";
        OversizeFrame = "oversize_frame": "a frame body longer than the maximum";
        TruncatedFrame = "truncated_frame": "the stream ended inside a frame";
        MalformedFrame = "malformed_frame": "a frame body of the wrong shape";
        UnexpectedFrame = "unexpected_frame": "a frame that is not valid at this point of the exchange";
        FrameDeadline = "frame_deadline": "the peer did not send a whole frame in time";
    }
    "binding" {
        MalformedKeyConfig = "malformed_key_config": "a key config or key-config list that does not decode";
        MalformedUserData = "malformed_user_data": "the attested user_data does not decode strictly";
        UnsupportedVersion = "unsupported_version": "the attested protocol version is not 1";
        KeyConfigsMismatch = "key_configs_mismatch": "the key-config list does not hash to the attested `kc`";
        ModelMismatch = "model_mismatch": "the attested model digest differs from the pinned one";
        SettingsMismatch = "settings_mismatch": "the attested settings digest differs from the pinned one";
        DtypeMismatch = "dtype_mismatch": "the attested inference dtype differs from the pinned one (or is not attested)";
        KeysExpired = "keys_expired": "the attested key configs have expired";
        NoSupportedSuite = "no_supported_suite": "no key config offers a suite the client supports";
    }
    "releases" {
        MalformedManifest = "malformed_manifest": "a release manifest that does not decode strictly";
        ReleaseSignature = "release_signature": "no release manifest verifies under the pinned release key";
        ReleaseExpired = "release_expired": "the release manifest listing the enclave is expired or not yet valid";
        ReleasePcrs = "release_pcrs": "the enclave's PCR0/1/2 tuple is in no valid release manifest";
        ReleaseMismatch = "release_mismatch": "the release manifest's model or settings digest differs from the attested one";
        ReleaseRollback = "release_rollback": "the enclave's release is older than one this client already accepted from this relay";
        ReleaseSigstore = "release_sigstore": "a Sigstore-signed release manifest does not verify against the trusted root and the pinned release key";
    }
    "requests" {
        UnknownKeyId = "unknown_key_id": "the request names a key the enclave does not hold (re-attest)";
        SuiteMismatch = "suite_mismatch": "the request's suite is not its key's";
        UnknownAttestation = "unknown_attestation": "the request is bound to a document this enclave did not issue (re-attest)";
        RequestDecrypt = "request_decrypt": "the request did not decrypt";
        Replayed = "replayed": "the request's `enc` was seen before under this key";
        KeyExhausted = "key_exhausted": "the key has served its maximum number of requests (re-attest)";
        BadRequest = "bad_request": "the decrypted question is not valid (the message names the field, never its value)";
        ContextLimit = "context_limit": "the question and its answer would exceed the attested context limit (the message gives it)";
    }
    "responses" {
        ChunkAuth = "chunk_auth": "a response chunk did not authenticate (altered, reordered, dropped or duplicated)";
        TruncatedResponse = "truncated_response": "the response ended without its final chunk";
        TrailingChunk = "trailing_chunk": "data after the final response chunk";
        BadChunk = "bad_chunk": "an authentic answer chunk that is not UTF-8 text";
        BadTrailer = "bad_trailer": "an authentic final chunk whose trailer does not decode";
        BadReceipt = "bad_receipt": "an answer's receipt is missing, does not decode, or its signature does not verify under the attested receipt key";
        ReceiptMismatch = "receipt_mismatch": "an authentic receipt covers something other than this exchange (the message names the field)";
    }
    "sessions" {
        UnknownSession = "unknown_session": "the session is not (or no longer) known to the enclave";
        SessionExpired = "session_expired": "the session outlived its idle or absolute lifetime";
        SequenceReused = "sequence_reused": "a turn's sequence number is not above the last accepted one";
        SessionAuth = "session_auth": "a session turn did not authenticate";
        SessionBusy = "session_busy": "the session's previous turn is still being answered";
    }
    "enclave" {
        Busy = "busy": "the enclave is at capacity; the message says when to retry";
        GenerationFailed = "generation_failed": "the model failed while answering this question";
        NsmFailed = "nsm_failed": "the enclave could not obtain an attestation document";
        Internal = "internal": "an internal limit of the enclave was reached";
    }
    "relay" {
        EnclaveUnreachable = "enclave_unreachable": "the relay could not reach the enclave, or lost it";
        RelayOverloaded = "relay_overloaded": "the relay refused the stream: too many at once from this source or in all";
        EnclaveUnknown = "enclave_unknown": "the enclave the exchange was routed to is not (or no longer) behind this relay; attest again";
    }
    "client" {
        Usage = "usage": "the command line or a file it names is not usable";
        RelayUnreachable = "relay_unreachable": "the client could not reach the relay, or lost it";
        Timeout = "timeout": "the exchange did not complete within the client's deadline";
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_well_formed_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in Code::ALL {
            let wire = code.as_str();
            assert!(seen.insert(wire), "{wire} twice");
            assert!(
                !wire.is_empty()
                    && wire
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{wire}"
            );
            assert_eq!(Code::from_wire(wire), Some(code));
            assert!(!code.meaning().is_empty());
        }
        assert_eq!(Code::from_wire("no_such_code"), None);
    }
}
