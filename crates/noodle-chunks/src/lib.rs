//! Content-addressed chunk store: the storage model under `noodle run` file shipping, and the seed
//! of the memory fabric.
//!
//! # The model
//!
//! A file is cut into chunks by content-defined chunking ([`chunker`], FastCDC 2020). Each chunk
//! is named by the blake3 hash of its bytes ([`ChunkId`]). A file is described by a [`Manifest`]:
//! its size and the ordered list of `(ChunkId, length)`; the manifest has an id of its own, the
//! blake3 of its canonical encoding, so "the same file" is one 32-byte value.
//!
//! Shipping a file to another node is then:
//!
//! 1. the sender builds the manifest ([`Store::put_file`] or a bare [`Chunker`]);
//! 2. the receiver answers with [`Store::missing`] — the chunks it does not have;
//! 3. the sender ships only those, the receiver [`Store::put`]s each (the hash is checked, so a
//!    forged or damaged chunk is refused), then [`Store::assemble`]s the file atomically.
//!
//! The second run of the same binary ships nothing: every chunk is already present. Because cut
//! points depend on content, not offsets, a small edit in a large file changes only the one or two
//! chunks around it, so a rebuilt binary ships only what changed.
//!
//! # Invariants
//!
//! - A chunk file in the store always holds bytes whose blake3 is its name: writes go through a
//!   temporary file, `fsync` and `rename`, and [`Store::get`] re-verifies on every read.
//! - Everything is bounded: chunk length ([`MAX_CHUNK_BYTES`]), stored objects (chunks and
//!   encoded manifests, [`MAX_OBJECT_BYTES`]), file size ([`MAX_FILE_BYTES`]),
//!   manifest length ([`MAX_MANIFEST_CHUNKS`], [`MAX_MANIFEST_BYTES`]) and store size (the cap
//!   given to [`Store::open`]).
//! - This crate does no networking and knows nothing of nodes: the caller moves bytes.
//!
//! # How the memory fabric builds on it
//!
//! The fabric keeps this model and adds placement on top: a fabric object is a manifest, its
//! chunks are the unit of replication (replicate a [`ChunkId`] to R nodes, repair by re-fetching
//! from any holder, since ids are self-verifying), and garbage collection becomes reference
//! counting from manifests to chunks. Nothing here should need to change for that; new layers go
//! beside [`Store`], not inside it.

#![forbid(unsafe_code)]

pub mod chunker;
mod error;
mod id;
mod manifest;
mod store;

pub use chunker::{AVG_CHUNK_BYTES, Chunk, Chunker, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES};
pub use error::ChunkError;
pub use id::{Checked, ChunkId, ParseChunkIdError};
pub use manifest::{
    MANIFEST_VERSION, MAX_FILE_BYTES, MAX_MANIFEST_BYTES, MAX_MANIFEST_CHUNKS, Manifest,
    ManifestError,
};
pub use store::{MAX_OBJECT_BYTES, Store, object_path};
