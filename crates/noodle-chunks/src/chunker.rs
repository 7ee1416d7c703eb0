//! [`Chunker`]: streams a file (or any reader) into content-defined chunks, one at a time, and
//! notices when the source changes underneath it.
//!
//! Only one chunk (at most [`MAX_CHUNK_BYTES`]) and FastCDC's window of the same size are held in
//! memory, whatever the file size.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use fastcdc::v2020::{self, StreamCDC};

use crate::{ChunkError, ChunkId, MAX_FILE_BYTES, Manifest};

// The chunking parameters. Changing any of them (or the fastcdc version, pinned for this reason)
// moves the cut points and so changes the id of every chunk and manifest: nodes on old and new
// parameters would then share nothing and re-ship everything. Treat them as part of the format.

/// No chunk but the last of a file is shorter than this: 256 KiB.
pub const MIN_CHUNK_BYTES: usize = 256 << 10;
/// The average chunk length FastCDC aims for: 1 MiB.
pub const AVG_CHUNK_BYTES: usize = 1 << 20;
/// No chunk is longer than this: 4 MiB. Also the largest chunk [`Store::put`](crate::Store::put)
/// accepts.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// One chunk: its bytes (1..=[`MAX_CHUNK_BYTES`] long) and their id.
pub type Chunk = crate::Checked<Vec<u8>>;

/// Size and modification time of a file, compared at the start and end of reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(meta: &std::fs::Metadata) -> Stamp {
    Stamp {
        len: meta.len(),
        modified: meta.modified().ok(),
    }
}

/// Splits a stream of a known length into content-defined chunks.
///
/// Call [`next_chunk`](Self::next_chunk) until it returns `None`, then
/// [`finish`](Self::finish) for the [`Manifest`]. The stream must deliver exactly
/// `expected_bytes`: ending early or running long is [`ChunkError::Changed`]. A chunker made by
/// [`open`](Self::open) also checks that the file's size and modification time did not change and
/// that it still exists.
pub struct Chunker<R: Read> {
    cdc: StreamCDC<io::Take<R>>,
    path: PathBuf,
    expected_bytes: u64,
    done_bytes: u64,
    chunks: Vec<(ChunkId, u32)>,
    start: Option<Stamp>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
    Failed,
}

impl Chunker<File> {
    /// Opens `path` and records its size and modification time.
    pub fn open(path: &Path) -> Result<Chunker<File>, ChunkError> {
        let io_err = |source| ChunkError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let start = stamp(&file.metadata().map_err(io_err)?);
        let mut chunker = Chunker::new(file, start.len, path)?;
        chunker.start = Some(start);
        Ok(chunker)
    }
}

impl<R: Read> Chunker<R> {
    /// Chunks `reader`, which must yield exactly `expected_bytes`; `label` names the source in
    /// errors (usually its path).
    pub fn new(
        reader: R,
        expected_bytes: u64,
        label: impl Into<PathBuf>,
    ) -> Result<Chunker<R>, ChunkError> {
        let path = label.into();
        if expected_bytes > MAX_FILE_BYTES {
            return Err(ChunkError::FileTooLarge {
                path,
                size_bytes: expected_bytes,
                max_bytes: MAX_FILE_BYTES,
            });
        }
        // Read at most one byte past the expected end: enough to see that the source runs long,
        // without reading an endless source forever.
        let reader = reader.take(expected_bytes + 1);
        // fastcdc zeroes a buffer of the maximum chunk size for each source: for a source
        // shorter than that, a buffer as large as the source (and the byte past it) is enough,
        // and the cuts are the same (a chunk is cut at the maximum only when more remains).
        let max = usize::try_from(expected_bytes + 2)
            .unwrap_or(MAX_CHUNK_BYTES)
            .next_multiple_of(2)
            .clamp(v2020::MAXIMUM_MIN, MAX_CHUNK_BYTES);
        let cdc = StreamCDC::new(reader, MIN_CHUNK_BYTES, AVG_CHUNK_BYTES, max);
        Ok(Chunker {
            cdc,
            path,
            expected_bytes,
            done_bytes: 0,
            chunks: Vec::new(),
            start: None,
            state: State::Reading,
        })
    }

    /// The number of bytes the source should deliver.
    pub fn expected_bytes(&self) -> u64 {
        self.expected_bytes
    }

    /// The number of bytes chunked so far.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    fn changed(&self, detail: String) -> ChunkError {
        ChunkError::Changed {
            path: self.path.clone(),
            detail,
        }
    }

    /// The next chunk, or `None` once the whole stream has been chunked and checked.
    ///
    /// After an error every later call fails too: a stream that went wrong is never finished
    /// into a manifest.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, ChunkError> {
        match self.state {
            State::Reading => {}
            State::Done => return Ok(None),
            State::Failed => return Err(self.changed("an earlier error stopped chunking".into())),
        }
        let result = self.step();
        match &result {
            Ok(Some(_)) => {}
            Ok(None) => self.state = State::Done,
            Err(_) => self.state = State::Failed,
        }
        result
    }

    fn step(&mut self) -> Result<Option<Chunk>, ChunkError> {
        match self.cdc.next() {
            Some(Ok(chunk)) => {
                self.done_bytes += chunk.data.len() as u64;
                if self.done_bytes > self.expected_bytes {
                    return Err(self.changed(format!(
                        "it is longer than the {} bytes it had when opened",
                        self.expected_bytes
                    )));
                }
                let chunk = Chunk::hashed(chunk.data);
                // Chunks are at most MAX_CHUNK_BYTES (4 MiB), which fits in u32.
                let len = u32::try_from(chunk.data().len()).expect("chunk length fits in u32");
                self.chunks.push((chunk.id(), len));
                Ok(Some(chunk))
            }
            Some(Err(err)) => {
                let source = match err {
                    v2020::Error::IoError(source) => source,
                    other => io::Error::other(other.to_string()),
                };
                Err(ChunkError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
            None => {
                if self.done_bytes != self.expected_bytes {
                    return Err(self.changed(format!(
                        "it ended after {} of the {} bytes it had when opened",
                        self.done_bytes, self.expected_bytes
                    )));
                }
                self.check_unchanged()?;
                Ok(None)
            }
        }
    }

    fn check_unchanged(&self) -> Result<(), ChunkError> {
        let Some(start) = self.start else {
            return Ok(());
        };
        let end = match std::fs::metadata(&self.path) {
            Ok(meta) => stamp(&meta),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(self.changed("it was removed".to_owned()));
            }
            Err(source) => {
                return Err(ChunkError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        if end != start {
            return Err(self.changed(format!(
                "size {} -> {} bytes, modification time {:?} -> {:?}",
                start.len, end.len, start.modified, end.modified
            )));
        }
        Ok(())
    }

    /// Reads any remaining chunks (discarding them) and returns the manifest of the whole stream.
    pub fn finish(mut self) -> Result<Manifest, ChunkError> {
        while self.next_chunk()?.is_some() {}
        Ok(Manifest::new(self.expected_bytes, self.chunks)?)
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = Result<Chunk, ChunkError>;

    /// Yields chunks; after an error, yields `None`.
    fn next(&mut self) -> Option<Self::Item> {
        if self.state == State::Failed {
            return None;
        }
        self.next_chunk().transpose()
    }
}
