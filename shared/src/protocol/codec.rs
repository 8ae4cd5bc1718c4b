//! The one JSON codec of the wire: typed errors for what could not be decoded (and why), and
//! encoding that reports a failure instead of sending an empty payload.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A message or record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON shape of `what`.
    #[error("malformed {what}: {source}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Well-formed, but its content is refused (a path escaping its folder, a bad chunk).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

impl DecodeError {
    pub fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        DecodeError::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A value that could not be encoded (a serializer error; never silently an empty payload).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {what}: {source}")]
pub struct EncodeError {
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

/// Decodes `what` from JSON.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { what, source })
}

/// Encodes `what` as JSON.
pub fn encode<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Bytes, EncodeError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|source| EncodeError { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn decode_errors_say_what_was_malformed() {
        let err = decode::<u32>(b"{", "task event").unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Malformed {
                what: "task event",
                ..
            }
        ));
        assert!(
            err.to_string().starts_with("malformed task event: "),
            "{err}"
        );
    }

    #[test]
    fn an_encode_failure_is_an_error_not_an_empty_payload() {
        // JSON object keys must be strings: a map keyed by a tuple cannot be encoded.
        let bad: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
        let err = encode(&bad, "reply").unwrap_err();
        assert_eq!(err.what, "reply");
        assert_eq!(&encode(&[1, 2], "list").unwrap()[..], b"[1,2]");
    }
}
