//! Reading the fields of a strict CBOR map (attested `user_data`, receipts, release manifests): each
//! key once, each value of its one type and size. Every reader reports through its document's own
//! malformed-input error, so one set of checks serves all three.

use confidant_verifier::cbor::Item;

use crate::error::ProtocolError;

/// The field readers of one kind of document, reporting with `bad`.
#[derive(Clone, Copy)]
pub(crate) struct Fields(pub fn(String) -> ProtocolError);

impl Fields {
    /// Fills `slot`, refusing a key seen before.
    pub fn set<T>(self, slot: &mut Option<T>, key: &str, value: T) -> Result<(), ProtocolError> {
        if slot.replace(value).is_some() {
            return Err(self.0(format!("duplicate key `{key}`")));
        }
        Ok(())
    }

    /// Exactly `N` bytes.
    pub fn bytes<const N: usize>(
        self,
        key: &str,
        value: Item<'_>,
    ) -> Result<[u8; N], ProtocolError> {
        match value {
            Item::Bytes(b) => b
                .try_into()
                .map_err(|_| self.0(format!("`{key}` must be {N} bytes, is {}", b.len()))),
            other => Err(self.0(format!(
                "`{key}` must be bytes, found {}",
                other.kind()
            ))),
        }
    }

    pub fn uint(self, key: &str, value: Item<'_>) -> Result<u64, ProtocolError> {
        match value {
            Item::Uint(n) => Ok(n),
            other => Err(self.0(format!(
                "`{key}` must be an unsigned integer, found {}",
                other.kind()
            ))),
        }
    }
}
