//! The versioned postcard storage encoding shared by entries and checkpoints.
//!
//! An encoded value is postcard of `Versioned::V1(value)`: the first byte is the variant
//! index of the format version (`0` for v1), followed by the value's postcard encoding.
//! A later format adds `V2` after `V1`, never before it, so old bytes keep decoding.
//!
//! Decoding is strict, because the bytes come from disk or from another node: at most
//! [`ENCODED_LEN_MAX`] bytes, no trailing bytes, and the value must re-encode to exactly the
//! input (postcard would otherwise accept, for instance, an over-long varint). Strictness means
//! a changed byte either fails to decode or decodes to a *different* value, which the chain
//! verification then catches.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Upper bound, in bytes, on one encoded entry or checkpoint. Bounded records are far smaller
/// (about 5 KiB at most); anything bigger did not come from this crate.
pub const ENCODED_LEN_MAX: usize = 64 * 1024;

/// The first byte of every value encoded by this version of the crate.
pub const FORMAT_V1: u8 = 0;

/// Why bytes could not be decoded as an entry or checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty input")]
    Empty,
    /// More than [`ENCODED_LEN_MAX`] bytes.
    #[error("encoded value is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// The input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The format version byte is not one this crate knows.
    #[error("unsupported format version {version}; this build reads version {FORMAT_V1}")]
    UnsupportedVersion {
        /// The first byte of the input.
        version: u8,
    },
    /// postcard could not decode the bytes.
    #[error("malformed encoding: {0}")]
    Malformed(#[from] postcard::Error),
    /// The value ended before the input did.
    #[error("{count} trailing bytes after the encoded value")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// The bytes decode, but are not the canonical encoding of what they decode to.
    #[error("non-canonical encoding")]
    NonCanonical,
    /// A string field is longer than [`crate::FIELD_LEN_MAX`], so it was not written by this crate.
    #[error("field {field} is longer than {max} bytes", max = crate::FIELD_LEN_MAX)]
    FieldTooLong {
        /// The field's name.
        field: &'static str,
    },
}

#[derive(Serialize, Deserialize)]
enum Versioned<T> {
    V1(T),
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Local invariant: our types are strings, integers, fixed arrays and enums, which postcard
    // always serialises into a growable Vec.
    postcard::to_stdvec(&Versioned::V1(value)).expect("audit types always serialise")
}

pub(crate) fn decode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let Some(&version) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    if bytes.len() > ENCODED_LEN_MAX {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: ENCODED_LEN_MAX,
        });
    }
    if version != FORMAT_V1 {
        return Err(DecodeError::UnsupportedVersion { version });
    }
    let (Versioned::V1(value), rest) = postcard::take_from_bytes::<Versioned<T>>(bytes)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { count: rest.len() });
    }
    if encode(&value) != bytes {
        return Err(DecodeError::NonCanonical);
    }
    Ok(value)
}
