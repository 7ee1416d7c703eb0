//! [`ChunkError`]: everything chunking and the store can fail with.

use std::io;
use std::path::PathBuf;

use crate::{ChunkId, ManifestError};

/// An error from chunking a file or using the [`Store`](crate::Store).
///
/// Every variant names the file or chunk it is about. None leaves a partial file or chunk behind.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file changed (grew, shrank, was modified or removed) while it was being read.
    #[error("{path} changed while it was being read ({detail}); run again once it is stable")]
    Changed {
        /// The file, or the label given to [`Chunker::new`](crate::Chunker::new).
        path: PathBuf,
        /// What was observed.
        detail: String,
    },
    /// The file is larger than [`MAX_FILE_BYTES`](crate::MAX_FILE_BYTES).
    #[error(
        "{path} is {size_bytes} bytes, more than the {max_bytes} bytes a manifest may describe"
    )]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// A chunk offered to the store is larger than [`MAX_CHUNK_BYTES`](crate::MAX_CHUNK_BYTES).
    #[error("chunk {id} is {len_bytes} bytes, more than {max_bytes}; refused")]
    ChunkTooLarge {
        /// The claimed id.
        id: ChunkId,
        /// Its length.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// Bytes offered for a chunk do not hash to its id; nothing was stored.
    #[error("chunk {id} refused: its bytes hash to {actual}")]
    HashMismatch {
        /// The claimed id.
        id: ChunkId,
        /// The hash of the bytes actually offered.
        actual: ChunkId,
    },
    /// A stored chunk no longer matches its id (disk damage or tampering).
    #[error(
        "stored chunk {id} is corrupt ({path}); remove it with Store::remove and fetch it again"
    )]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// Its file in the store.
        path: PathBuf,
    },
    /// The chunk is not in the store.
    #[error("chunk {0} is not in the store")]
    NotFound(ChunkId),
    /// [`Store::assemble`](crate::Store::assemble) needs chunks the store does not have.
    #[error("{} chunk(s) missing, first {}; ship them before assembling", .0.len(), first_id(.0))]
    Missing(Vec<ChunkId>),
    /// Storing the chunk would take the store over its size cap.
    #[error("store full: {used_bytes} of {cap_bytes} bytes used, {needed_bytes} more needed")]
    StoreFull {
        /// Bytes the write needed.
        needed_bytes: u64,
        /// Bytes in the store now.
        used_bytes: u64,
        /// The cap given to [`Store::open`](crate::Store::open).
        cap_bytes: u64,
    },
    /// A chunk's length disagrees with the manifest that lists it.
    #[error("chunk {id} is {actual_bytes} bytes but the manifest says {manifest_bytes}")]
    LengthMismatch {
        /// The chunk.
        id: ChunkId,
        /// Its stored length.
        actual_bytes: u64,
        /// The length in the manifest.
        manifest_bytes: u64,
    },
    /// A manifest could not be built or decoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

fn first_id(ids: &[ChunkId]) -> String {
    ids.first()
        .map_or_else(|| "none".to_owned(), ChunkId::to_string)
}
