//! The one JSON codec of the wire: typed errors for what could not be decoded (and why), and
//! encoding that reports a failure instead of sending an empty payload.
//!
//! Every decode is bounded by the size of what it reads: a message over [`MAX_MESSAGE`] is
//! refused before it is parsed, and an encode that would produce one is refused before it is
//! sent, so the sender learns why instead of NATS dropping the message. Objects read from the
//! store (manifests) carry their own larger limit through [`decode_limited`].

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest message on the wire, in bytes: NATS's default `max_payload` (1 MiB), which every
/// server Suanli starts or documents keeps. API requests and replies, events, task messages
/// and KV records are all NATS messages.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// A message or record that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Bigger than its limit; refused before parsing.
    #[error("{what} of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
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

/// A value that could not be encoded; never silently an empty payload.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The serializer failed (e.g. a map whose keys are not strings).
    #[error("cannot encode {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Encoded, but over [`MAX_MESSAGE`]: NATS would refuse to carry it.
    #[error("{what} of {size} bytes is over the {limit}-byte limit of a message")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
}

impl EncodeError {
    /// What was being encoded.
    pub fn what(&self) -> &'static str {
        match self {
            EncodeError::Serialize { what, .. } | EncodeError::TooLarge { what, .. } => what,
        }
    }
}

/// Decodes `what` from a message of at most [`MAX_MESSAGE`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    decode_limited(bytes, what, MAX_MESSAGE)
}

/// Decodes `what` from at most `limit` bytes; larger input is refused before it is parsed.
/// For what does not travel as one NATS message (manifests in the store); everything else
/// goes through [`decode`].
pub fn decode_limited<T: DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    limit: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            what,
            size: bytes.len(),
            limit,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed { what, source })
}

/// Encodes `what` as JSON, refusing a message over [`MAX_MESSAGE`].
pub fn encode<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Bytes, EncodeError> {
    let bytes =
        serde_json::to_vec(value).map_err(|source| EncodeError::Serialize { what, source })?;
    if bytes.len() > MAX_MESSAGE {
        return Err(EncodeError::TooLarge {
            what,
            size: bytes.len(),
            limit: MAX_MESSAGE,
        });
    }
    Ok(Bytes::from(bytes))
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
        assert!(matches!(err, EncodeError::Serialize { what: "reply", .. }));
        assert_eq!(err.what(), "reply");
        assert_eq!(&encode(&[1, 2], "list").unwrap()[..], b"[1,2]");
    }

    #[test]
    fn an_oversized_message_is_refused_before_parsing_with_its_size() {
        // Three mebibytes of a valid JSON string: refused for its size, not parsed.
        let mut big = vec![b'"'];
        big.resize(3 * 1024 * 1024 - 1, b'a');
        big.push(b'"');
        let err = decode::<String>(&big, "task message").unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooLarge {
                what: "task message",
                size: 3_145_728,
                limit: MAX_MESSAGE
            }
        ));
        assert_eq!(
            err.to_string(),
            "task message of 3145728 bytes is over the 1048576-byte limit"
        );
        // The same bytes under a larger limit decode; exactly at the limit is allowed.
        assert_eq!(
            decode_limited::<String>(&big, "manifest", big.len())
                .unwrap()
                .len(),
            big.len() - 2
        );
        let mut at_limit = vec![b'"'];
        at_limit.resize(MAX_MESSAGE - 1, b'a');
        at_limit.push(b'"');
        assert!(decode::<String>(&at_limit, "task message").is_ok());
    }

    #[test]
    fn an_oversized_message_is_refused_on_encode_with_its_size() {
        // A string of MAX_MESSAGE bytes encodes to two more (its quotes).
        let text = "a".repeat(MAX_MESSAGE);
        let err = encode(&text, "task event").unwrap_err();
        assert!(matches!(
            err,
            EncodeError::TooLarge {
                what: "task event",
                size,
                limit: MAX_MESSAGE
            } if size == MAX_MESSAGE + 2
        ));
        assert_eq!(
            err.to_string(),
            "task event of 1048578 bytes is over the 1048576-byte limit of a message"
        );
        let fits = "a".repeat(MAX_MESSAGE - 2);
        assert_eq!(encode(&fits, "task event").unwrap().len(), MAX_MESSAGE);
    }
}
