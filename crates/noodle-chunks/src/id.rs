//! [`ChunkId`]: the blake3 hash of a chunk's bytes, the only name a chunk has.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The blake3 hash of a chunk's bytes. Displayed and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`: their blake3 hash.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    /// The 64 hex digits, as used for file names in the store.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// Bytes known to hash to their id: made only by hashing them, so that a store given one
/// need not hash them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<B = Vec<u8>> {
    id: ChunkId,
    data: B,
}

impl<B: AsRef<[u8]>> Checked<B> {
    /// `data`, if it hashes to `id`.
    pub fn new(id: ChunkId, data: B) -> Result<Checked<B>, crate::ChunkError> {
        let actual = ChunkId::of(data.as_ref());
        if actual != id {
            return Err(crate::ChunkError::HashMismatch { id, actual });
        }
        Ok(Checked { id, data })
    }

    /// `data`, named by its hash.
    pub fn hashed(data: B) -> Checked<B> {
        Checked {
            id: ChunkId::of(data.as_ref()),
            data,
        }
    }

    pub fn id(&self) -> ChunkId {
        self.id
    }

    pub fn data(&self) -> &[u8] {
        self.data.as_ref()
    }

    pub fn into_data(self) -> B {
        self.data
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a chunk id (expected 64 hex digits): {input:?}")]
pub struct ParseChunkIdError {
    /// The rejected input, cut to 80 characters so a huge string does not end up in logs.
    pub input: String,
}

impl FromStr for ChunkId {
    type Err = ParseChunkIdError;

    fn from_str(s: &str) -> Result<ChunkId, ParseChunkIdError> {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(s, &mut out) {
            Ok(()) => Ok(ChunkId(out)),
            Err(_) => Err(ParseChunkIdError {
                input: s.chars().take(80).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let id = ChunkId::of(b"noodle");
        assert_eq!(id.to_string().len(), 64);
        assert_eq!(id.to_string().parse::<ChunkId>(), Ok(id));
        assert_eq!(id.to_string().to_uppercase().parse::<ChunkId>(), Ok(id));
        for bad in ["", "ab", &"g".repeat(64), &"a".repeat(63), &"a".repeat(66)] {
            assert!(bad.parse::<ChunkId>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn postcard_round_trip() -> Result<(), postcard::Error> {
        let id = ChunkId::of(b"x");
        let bytes = postcard::to_allocvec(&id)?;
        assert_eq!(bytes.len(), 32);
        assert_eq!(postcard::from_bytes::<ChunkId>(&bytes)?, id);
        Ok(())
    }
}
