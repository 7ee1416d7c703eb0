//! [`Manifest`]: what a file is made of, and its versioned, bounded wire encoding.

use serde::{Deserialize, Serialize};

use crate::{ChunkId, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};

/// The first byte of every encoded manifest. Bump it when the layout changes.
pub const MANIFEST_VERSION: u8 = 1;

/// The largest file a manifest may describe: 64 GiB. Larger files are refused rather than shipped.
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// The most chunks a manifest may list. Every chunk but the last is at least
/// [`MIN_CHUNK_BYTES`], so a [`MAX_FILE_BYTES`] file needs at most this many.
pub const MAX_MANIFEST_CHUNKS: usize = (MAX_FILE_BYTES / MIN_CHUNK_BYTES as u64) as usize + 1;

/// The longest encoded manifest accepted: version byte, size, count and, per chunk, a 32-byte id
/// and a length of at most 5 bytes (postcard varint). Longer input is refused before decoding.
pub const MAX_MANIFEST_BYTES: usize = 1 + 10 + 5 + MAX_MANIFEST_CHUNKS * (32 + 5);

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input was empty.
    #[error("manifest is empty")]
    Empty,
    /// The version byte is not [`MANIFEST_VERSION`].
    #[error("manifest version {0} is not supported (expected {MANIFEST_VERSION}); upgrade noodle")]
    Version(u8),
    /// The input is longer than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {len_bytes} bytes, more than {MAX_MANIFEST_BYTES}")]
    TooLong {
        /// The input length.
        len_bytes: usize,
    },
    /// The body did not decode.
    #[error("manifest does not decode: {0}")]
    Decode(#[from] postcard::Error),
    /// Bytes followed the manifest.
    #[error("manifest has {0} trailing bytes")]
    Trailing(usize),
    /// More than [`MAX_MANIFEST_CHUNKS`] chunks.
    #[error("manifest lists {0} chunks, more than {MAX_MANIFEST_CHUNKS}")]
    TooManyChunks(usize),
    /// A chunk of length zero or over [`MAX_CHUNK_BYTES`].
    #[error("manifest chunk {index} has length {len_bytes}, outside 1..={MAX_CHUNK_BYTES}")]
    BadChunkLen {
        /// Position in the list.
        index: usize,
        /// The length given.
        len_bytes: u32,
    },
    /// The chunk lengths do not add up to the size.
    #[error("manifest size {size_bytes} differs from the sum of its chunk lengths {sum_bytes}")]
    SizeMismatch {
        /// The size given.
        size_bytes: u64,
        /// The sum of the chunk lengths.
        sum_bytes: u64,
    },
}

/// What one file is made of: its size and its chunks, in order, with their lengths.
///
/// A manifest is always consistent (lengths add up to the size, all bounded); its [`id`](Self::id)
/// is the blake3 of its canonical encoding ([`encode`](Self::encode)), so two manifests are equal
/// exactly when their ids are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    size: u64,
    chunks: Vec<(ChunkId, u32)>,
    id: ChunkId,
}

/// The encoded body: kept apart from [`Manifest`] so the derived id is never on the wire.
#[derive(Serialize, Deserialize)]
struct Body {
    size: u64,
    chunks: Vec<(ChunkId, u32)>,
}

impl Manifest {
    /// A manifest for a file of `size` bytes made of `chunks`, checked against every bound.
    pub fn new(size: u64, chunks: Vec<(ChunkId, u32)>) -> Result<Manifest, ManifestError> {
        if chunks.len() > MAX_MANIFEST_CHUNKS {
            return Err(ManifestError::TooManyChunks(chunks.len()));
        }
        let mut sum_bytes = 0u64;
        for (index, &(_, len_bytes)) in chunks.iter().enumerate() {
            if len_bytes == 0 || len_bytes as usize > MAX_CHUNK_BYTES {
                return Err(ManifestError::BadChunkLen { index, len_bytes });
            }
            sum_bytes += u64::from(len_bytes);
        }
        if sum_bytes != size {
            return Err(ManifestError::SizeMismatch {
                size_bytes: size,
                sum_bytes,
            });
        }
        let mut manifest = Manifest {
            size,
            chunks,
            id: ChunkId([0; 32]),
        };
        manifest.id = ChunkId::of(&manifest.encode());
        Ok(manifest)
    }

    /// The file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The chunks, in file order, with their lengths.
    pub fn chunks(&self) -> &[(ChunkId, u32)] {
        &self.chunks
    }

    /// The chunk ids in file order (with repeats, if the file repeats a chunk).
    pub fn chunk_ids(&self) -> Vec<ChunkId> {
        self.chunks.iter().map(|&(id, _)| id).collect()
    }

    /// The manifest's own id: blake3 of [`encode`](Self::encode).
    pub fn id(&self) -> ChunkId {
        self.id
    }

    /// The canonical encoding: [`MANIFEST_VERSION`] then the postcard body.
    pub fn encode(&self) -> Vec<u8> {
        let body = Body {
            size: self.size,
            chunks: self.chunks.clone(),
        };
        let mut out = vec![MANIFEST_VERSION];
        // Serializing plain integers and byte arrays into a Vec cannot fail.
        out.extend(postcard::to_allocvec(&body).expect("postcard encodes plain data into a Vec"));
        out
    }

    /// Decodes and checks a manifest from untrusted bytes; input longer than
    /// [`MAX_MANIFEST_BYTES`] is refused before any decoding.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLong {
                len_bytes: bytes.len(),
            });
        }
        let (&version, rest) = bytes.split_first().ok_or(ManifestError::Empty)?;
        if version != MANIFEST_VERSION {
            return Err(ManifestError::Version(version));
        }
        let (body, trailing) = postcard::take_from_bytes::<Body>(rest)?;
        if !trailing.is_empty() {
            return Err(ManifestError::Trailing(trailing.len()));
        }
        Manifest::new(body.size, body.chunks)
    }
}
