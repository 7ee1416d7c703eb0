//! The output log of one job: an append-only file of [`noodle_api::output_frame`]s with a bound
//! on its size, which readers can follow while the job runs.
//!
//! Writers (the stdout and stderr pumps of [`super::JobProcess`], and noodle's own notices) append
//! whole frames under a mutex with positional writes straight to the file, so a `read` sees
//! everything appended before it without an fsync. The length of the log only ever counts whole
//! frames: a frame is written first and counted after, and a failed write is overwritten by the
//! next one. A `watch` channel carries the length and whether the log is closed, so followers wake
//! when there is more to read.
//!
//! Bounds: the file never grows past `max_bytes` while the job runs, plus one final notice of
//! fewer than [`FINAL_NOTICE_MAX_BYTES`] at close. Output past the bound is dropped and counted;
//! room for the one notice that says so is kept below the bound. Once output is dropped, all later
//! output is dropped too, so what the log holds is always a prefix of what the job wrote.
//!
//! Read offsets are checked against frame boundaries exactly: the log remembers one frame start
//! per [`CHECKPOINT_SPACING_BYTES`] (a few KiB of memory for a large log) and walks the frame
//! headers from the checkpoint before an offset to the offset.
//!
//! It must never panic on an I/O error: failures are logged once and the bytes counted as dropped.

use noodle_api::output_frame::{HEADER_BYTES, NOTICE, PAYLOAD_MAX, STDERR, STDOUT};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// Room kept below `max_bytes` for the frame "output beyond N bytes is dropped" (its header
/// plus a text of at most 52 bytes).
const DROP_NOTICE_RESERVE_BYTES: u64 = 64;
/// Upper bound of the final "N bytes of output dropped" frame written at close, beyond the bound.
pub(crate) const FINAL_NOTICE_MAX_BYTES: u64 = 64;
/// Longest notice text; a longer one is cut (at a character boundary).
const NOTICE_TEXT_MAX_BYTES: usize = 4096;
/// One frame start is remembered at least every this many bytes, to check read offsets.
const CHECKPOINT_SPACING_BYTES: u64 = 64 * 1024;

/// What followers watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    /// Bytes of whole frames in the file.
    len: u64,
    /// No more frames will come.
    closed: bool,
}

/// The writer's side, under the mutex.
struct Writer {
    /// Bytes of whole frames written; the next frame goes here.
    len: u64,
    /// Bytes of output dropped: past the bound, or lost to a write error.
    dropped: u64,
    /// The bound was reached: everything from now on is dropped.
    full: bool,
    closed: bool,
    /// Frame starts, ascending, the first one 0; consecutive ones are at most
    /// `CHECKPOINT_SPACING_BYTES` plus one frame apart.
    checkpoints: Vec<u64>,
    /// A write error was logged already (logged once per log, not once per chunk).
    write_error_logged: bool,
}

/// A job's framed, bounded output log (see the module documentation).
pub(crate) struct OutputLog {
    path: PathBuf,
    /// Written with `write_all_at` under `writer`; read with `read_exact_at` without the lock.
    file: File,
    max_bytes: u64,
    writer: Mutex<Writer>,
    progress: watch::Sender<Progress>,
}

impl OutputLog {
    /// Creates (or truncates) the log file at `path` for a job whose output may take up to
    /// `max_bytes` of it.
    pub(crate) fn create(path: &Path, max_bytes: u64) -> io::Result<Arc<OutputLog>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(OutputLog::new(
            path,
            file,
            max_bytes,
            0,
            vec![0],
            false,
        )))
    }

    /// Opens the finished log of an earlier run of the node: closed, readable. A torn frame at
    /// the end (the node died while writing it) is left out.
    pub(crate) fn open_existing(path: &Path) -> io::Result<Arc<OutputLog>> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(64 * 1024, &file);
        let mut checkpoints = vec![0];
        let mut pos = 0u64;
        let mut header = [0u8; HEADER_BYTES];
        while file_len - pos >= HEADER_BYTES as u64 {
            reader.read_exact(&mut header)?;
            let Some(payload_len) = header_payload_len(&header) else {
                tracing::warn!(path = %path.display(), offset = pos, "output log has a bad frame header; reading it up to there");
                break;
            };
            let end = pos + (HEADER_BYTES + payload_len) as u64;
            if end > file_len {
                break;
            }
            reader.seek_relative(payload_len as i64)?;
            if checkpoints
                .last()
                .is_some_and(|&c| pos >= c + CHECKPOINT_SPACING_BYTES)
            {
                checkpoints.push(pos);
            }
            pos = end;
        }
        if pos != file_len {
            tracing::warn!(path = %path.display(), len = pos, file_len, "output log ends in a torn frame; it is left out");
        }
        drop(reader);
        Ok(Arc::new(OutputLog::new(
            path,
            file,
            pos,
            pos,
            checkpoints,
            true,
        )))
    }

    fn new(
        path: &Path,
        file: File,
        max_bytes: u64,
        len: u64,
        checkpoints: Vec<u64>,
        closed: bool,
    ) -> OutputLog {
        OutputLog {
            path: path.to_path_buf(),
            file,
            max_bytes,
            writer: Mutex::new(Writer {
                len,
                dropped: 0,
                full: false,
                closed,
                checkpoints,
                write_error_logged: false,
            }),
            progress: watch::Sender::new(Progress { len, closed }),
        }
    }

    /// Appends `bytes` as frames of `kind` (split at [`PAYLOAD_MAX`]). Past the bound the bytes
    /// are dropped and counted; the first time, one NOTICE frame says so. Ignored once closed.
    pub(crate) fn append(&self, kind: u8, bytes: &[u8]) {
        let mut w = self.lock();
        if w.closed {
            tracing::debug!(path = %self.path.display(), bytes = bytes.len(), "output after the log was closed is ignored");
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if w.full {
                w.dropped += rest.len() as u64;
                break;
            }
            let chunk_len = rest.len().min(PAYLOAD_MAX);
            let room = self
                .output_limit()
                .saturating_sub(w.len + HEADER_BYTES as u64);
            let take = chunk_len.min(usize::try_from(room).unwrap_or(usize::MAX));
            if take > 0 {
                self.write_frame(&mut w, kind, &rest[..take]);
            }
            rest = &rest[take..];
            if take < chunk_len {
                self.start_dropping(&mut w);
            }
        }
        self.publish(&w);
    }

    /// Appends a NOTICE frame (cut to 4 KiB), if it fits below the bound; else it is left out.
    pub(crate) fn notice(&self, text: &str) {
        let text = cut_at_char_boundary(text, NOTICE_TEXT_MAX_BYTES);
        let mut w = self.lock();
        if w.closed || w.full {
            tracing::debug!(path = %self.path.display(), text, "notice left out of a closed or full output log");
            return;
        }
        if w.len + (HEADER_BYTES + text.len()) as u64 > self.output_limit() {
            tracing::debug!(path = %self.path.display(), text, "notice left out: the output log is nearly full");
            return;
        }
        self.write_frame(&mut w, NOTICE, text.as_bytes());
        self.publish(&w);
    }

    /// No more appends; followers see the end. If output was dropped, a last NOTICE frame says
    /// how much (it may go beyond the bound by at most [`FINAL_NOTICE_MAX_BYTES`]).
    pub(crate) fn close(&self) {
        let mut w = self.lock();
        if w.closed {
            return;
        }
        if w.dropped > 0 {
            let text = format!("{} bytes of output dropped", w.dropped);
            debug_assert!((HEADER_BYTES + text.len()) as u64 <= FINAL_NOTICE_MAX_BYTES);
            self.write_frame(&mut w, NOTICE, text.as_bytes());
        }
        w.closed = true;
        // A failed write may have left a torn frame past `len`: cut it off (best effort; readers
        // never look past `len` anyway).
        if let Err(error) = self.file.set_len(w.len) {
            tracing::debug!(path = %self.path.display(), %error, "cannot trim the output log");
        }
        self.publish(&w);
    }

    /// Bytes of whole frames in the log.
    pub(crate) fn len(&self) -> u64 {
        self.progress.borrow().len
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.progress.borrow().closed
    }

    /// Bytes of output dropped so far.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the count is in the log's last notice")
    )]
    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Whole frames from `offset` on, about `max` bytes of them but always at least one whole
    /// frame if there is one; returns them and the offset of the next frame. `offset` must be a
    /// frame boundary (0, or an offset this returned): anything else is an error.
    pub(crate) fn read(&self, offset: u64, max: usize) -> io::Result<(Vec<u8>, u64)> {
        let (len, checkpoint) = {
            let w = self.lock();
            let i = w.checkpoints.partition_point(|&c| c <= offset);
            (w.len, w.checkpoints[i.saturating_sub(1)])
        };
        if offset > len {
            return Err(invalid_input(format!(
                "output offset {offset} is past the end ({len} bytes)"
            )));
        }
        if offset == len {
            return Ok((Vec::new(), len));
        }
        self.check_boundary(checkpoint, offset)?;

        let mut header = [0u8; HEADER_BYTES];
        self.file.read_exact_at(&mut header, offset)?;
        let first_len = header_payload_len(&header)
            .map(|n| (HEADER_BYTES + n) as u64)
            .ok_or_else(|| invalid_data(format!("bad output frame header at {offset}")))?;
        let want = (max as u64).max(first_len).min(len - offset);
        let mut buf = vec![0u8; want as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        // Keep whole frames only.
        let mut used = 0;
        while let Some(n) = buf.get(used..).and_then(whole_frame_len) {
            used += n;
        }
        if used == 0 {
            return Err(invalid_data(format!("bad output frame at {offset}")));
        }
        buf.truncate(used);
        Ok((buf, offset + used as u64))
    }

    /// Waits until the log is longer than `offset`, is closed, or `timeout` passed.
    pub(crate) async fn wait_past(&self, offset: u64, timeout: Duration) {
        let mut progress = self.progress.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail; a timeout is an answer.
        let _ =
            tokio::time::timeout(timeout, progress.wait_for(|p| p.len > offset || p.closed)).await;
    }

    /// Everything up to here is output; the rest of the bound is kept for the drop notice.
    fn output_limit(&self) -> u64 {
        self.max_bytes.saturating_sub(DROP_NOTICE_RESERVE_BYTES)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave `Writer` inconsistent in a way that
        // matters more than losing the output: keep going.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, w: &Writer) {
        let now = Progress {
            len: w.len,
            closed: w.closed,
        };
        self.progress.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
    }

    /// The bound is reached: from now on all output is dropped; say so once.
    fn start_dropping(&self, w: &mut Writer) {
        w.full = true;
        let text = format!("output beyond {} bytes is dropped", self.max_bytes);
        debug_assert!((HEADER_BYTES + text.len()) as u64 <= DROP_NOTICE_RESERVE_BYTES);
        self.write_frame(w, NOTICE, text.as_bytes());
    }

    /// Writes one frame at `w.len` and counts it; on error counts the payload as dropped.
    fn write_frame(&self, w: &mut Writer, kind: u8, payload: &[u8]) {
        debug_assert!(payload.len() <= PAYLOAD_MAX);
        // The header as `output_frame::encode` writes it, without copying the payload.
        let mut header = [kind; HEADER_BYTES];
        header[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        let written = self
            .file
            .write_all_at(&header, w.len)
            .and_then(|()| self.file.write_all_at(payload, w.len + HEADER_BYTES as u64));
        match written {
            Ok(()) => {
                if w.checkpoints
                    .last()
                    .is_some_and(|&c| w.len >= c + CHECKPOINT_SPACING_BYTES)
                {
                    w.checkpoints.push(w.len);
                }
                w.len += (HEADER_BYTES + payload.len()) as u64;
            }
            Err(error) => {
                if kind != NOTICE {
                    w.dropped += payload.len() as u64;
                }
                if !w.write_error_logged {
                    w.write_error_logged = true;
                    tracing::warn!(path = %self.path.display(), %error, "cannot write job output; it is dropped");
                }
            }
        }
    }

    /// Ok if `offset` is the start of a frame, walking the headers from the frame start
    /// `checkpoint` (at most one checkpoint spacing plus one frame before `offset`).
    fn check_boundary(&self, checkpoint: u64, offset: u64) -> io::Result<()> {
        if checkpoint == offset {
            return Ok(());
        }
        let span = offset - checkpoint;
        let mut buf = vec![0u8; span as usize];
        self.file.read_exact_at(&mut buf, checkpoint)?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let Some(payload_len) = buf
                .get(pos..pos + HEADER_BYTES)
                .and_then(header_payload_len)
            else {
                break;
            };
            pos += HEADER_BYTES + payload_len;
        }
        if pos == buf.len() {
            Ok(())
        } else {
            Err(invalid_input(format!(
                "output offset {offset} is not at a frame boundary"
            )))
        }
    }
}

/// The payload length in a frame header, if the header is one this log writes.
fn header_payload_len(header: &[u8]) -> Option<usize> {
    let kind = *header.first()?;
    let len_bytes: [u8; 4] = header.get(1..HEADER_BYTES)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    (matches!(kind, STDOUT | STDERR | NOTICE) && len <= PAYLOAD_MAX).then_some(len)
}

/// Bytes of the whole frame at the start of `buf`, if there is one and it is valid.
fn whole_frame_len(buf: &[u8]) -> Option<usize> {
    let payload_len = header_payload_len(buf)?;
    (buf.len() >= HEADER_BYTES + payload_len).then_some(HEADER_BYTES + payload_len)
}

fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn invalid_data(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The frames in `bytes` as `(kind, payload)`; panics on a torn or bad frame (tests only).
#[cfg(test)]
pub(crate) fn decode_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let Ok(Some((kind, payload, used))) = noodle_api::output_frame::decode(bytes) else {
            panic!("torn or bad frame in {} bytes", bytes.len());
        };
        frames.push((kind, payload.to_vec()));
        bytes = &bytes[used..];
    }
    frames
}

/// All frames of a log, read in pieces of about `max` bytes the way a follower does.
#[cfg(test)]
pub(crate) fn read_all(log: &OutputLog, max: usize) -> Vec<(u8, Vec<u8>)> {
    let mut offset = 0;
    let mut bytes = Vec::new();
    loop {
        let (chunk, next) = log.read(offset, max).expect("read at a returned offset");
        if chunk.is_empty() {
            assert_eq!(next, log.len());
            break;
        }
        assert_eq!(next, offset + chunk.len() as u64);
        bytes.extend_from_slice(&chunk);
        offset = next;
    }
    decode_frames(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use noodle_api::output_frame;
    use std::time::Instant;

    fn notices(frames: &[(u8, Vec<u8>)]) -> Vec<String> {
        frames
            .iter()
            .filter(|(kind, _)| *kind == NOTICE)
            .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
            .collect()
    }

    #[test]
    fn frames_round_trip_and_reads_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = OutputLog::create(&dir.path().join("out"), 1 << 20).expect("create");
        log.append(STDOUT, b"hello\n");
        log.append(STDERR, b"oops\n");
        log.notice("a notice");
        log.append(STDOUT, b"");
        assert_eq!(log.len(), 3 * 5 + 6 + 5 + 8);

        // Small reads still return one whole frame each, and the offsets chain.
        let (first, next) = log.read(0, 1).expect("read");
        assert_eq!(decode_frames(&first), vec![(STDOUT, b"hello\n".to_vec())]);
        assert_eq!(next, 11);
        let (second, next) = log.read(next, 0).expect("read");
        assert_eq!(decode_frames(&second), vec![(STDERR, b"oops\n".to_vec())]);
        let (rest, end) = log.read(next, 1 << 20).expect("read");
        assert_eq!(decode_frames(&rest), vec![(NOTICE, b"a notice".to_vec())]);
        assert_eq!(end, log.len());
        assert_eq!(log.read(end, 100).expect("read at end"), (Vec::new(), end));

        // Offsets inside a frame or past the end are refused.
        for bogus in [1, 4, 5, 12, end + 1] {
            assert!(log.read(bogus, 100).is_err(), "offset {bogus} accepted");
        }
    }

    #[test]
    fn bogus_offsets_are_found_far_from_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = OutputLog::create(&dir.path().join("out"), 64 << 20).expect("create");
        // Frames whose payload looks like frame headers, over many checkpoints.
        let payload: Vec<u8> = [STDOUT, 0, 0, 0, 0].repeat(1000);
        for _ in 0..200 {
            log.append(STDOUT, &payload);
        }
        let frame = (HEADER_BYTES + payload.len()) as u64;
        assert!(log.read(150 * frame, 10).is_ok());
        for inside in [1, 5, 10, 3000] {
            assert!(log.read(150 * frame + inside, 10).is_err());
        }
        assert_eq!(read_all(&log, 100_000).len(), 200);
    }

    #[test]
    fn output_past_the_bound_is_dropped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        let log = OutputLog::create(&path, 1000).expect("create");
        let mut written = 0u64;
        for i in 0..10u8 {
            log.append(STDOUT, &[b'a' + i; 300]);
            written += 300;
            assert!(log.len() <= 1000, "log of {} bytes", log.len());
        }
        log.notice("too late");
        log.close();
        assert!(log.is_closed());
        assert!(log.len() <= 1000 + FINAL_NOTICE_MAX_BYTES);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), log.len());

        let frames = read_all(&log, 64);
        let kept: u64 = frames
            .iter()
            .filter(|(kind, _)| *kind == STDOUT)
            .map(|(_, p)| p.len() as u64)
            .sum();
        assert_eq!(kept + log.dropped(), written);
        assert!(kept > 800, "only {kept} bytes kept");
        assert_eq!(
            notices(&frames),
            vec![
                "output beyond 1000 bytes is dropped".to_string(),
                format!("{} bytes of output dropped", log.dropped()),
            ]
        );
        // Appends after close change nothing.
        let len = log.len();
        log.append(STDOUT, b"more");
        assert_eq!(log.len(), len);
    }

    #[test]
    fn large_appends_are_split_into_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = OutputLog::create(&dir.path().join("out"), 8 << 20).expect("create");
        let big = vec![7u8; PAYLOAD_MAX * 2 + 10];
        log.append(STDERR, &big);
        let frames = read_all(&log, 0);
        let sizes: Vec<usize> = frames.iter().map(|(_, p)| p.len()).collect();
        assert_eq!(sizes, vec![PAYLOAD_MAX, PAYLOAD_MAX, 10]);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn existing_log_reopens_closed_without_its_torn_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out");
        {
            let log = OutputLog::create(&path, 1 << 20).expect("create");
            log.append(STDOUT, b"one\n");
            log.append(STDERR, b"two\n");
            log.close();
        }
        let whole = std::fs::metadata(&path).expect("stat").len();
        let reopened = OutputLog::open_existing(&path).expect("open");
        assert!(reopened.is_closed());
        assert_eq!(reopened.len(), whole);
        assert_eq!(
            read_all(&reopened, 1000),
            vec![(STDOUT, b"one\n".to_vec()), (STDERR, b"two\n".to_vec())]
        );
        reopened.append(STDOUT, b"ignored");
        assert_eq!(reopened.len(), whole);

        // A frame cut short by a crash is left out.
        let mut bytes = std::fs::read(&path).expect("read");
        output_frame::encode(STDOUT, b"torn", &mut bytes);
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).expect("write");
        let torn = OutputLog::open_existing(&path).expect("open");
        assert_eq!(torn.len(), whole);
    }

    #[tokio::test]
    async fn followers_wake_on_append_and_close() {
        // Far longer than any machine needs to wake a task: waking well before it means the
        // append (or the close) woke the follower, however slow the machine.
        const WAKE_TIMEOUT: Duration = Duration::from_secs(120);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = OutputLog::create(&dir.path().join("out"), 1 << 20).expect("create");

        // Nothing there: waits out the timeout.
        let start = Instant::now();
        log.wait_past(0, Duration::from_millis(100)).await;
        assert!(start.elapsed() >= Duration::from_millis(100));

        let follower = tokio::spawn({
            let log = log.clone();
            async move {
                let start = Instant::now();
                log.wait_past(0, WAKE_TIMEOUT).await;
                (start.elapsed(), log.read(0, 1000).expect("read"))
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append(STDOUT, b"live\n");
        let (waited, (bytes, next)) = follower.await.expect("follower");
        assert!(waited < WAKE_TIMEOUT / 2, "woke after {waited:?}");
        assert_eq!(decode_frames(&bytes), vec![(STDOUT, b"live\n".to_vec())]);

        // Waiting past the end wakes on close.
        let follower = tokio::spawn({
            let log = log.clone();
            async move {
                let start = Instant::now();
                log.wait_past(next, WAKE_TIMEOUT).await;
                start.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.close();
        let waited = follower.await.expect("follower");
        assert!(waited < WAKE_TIMEOUT / 2, "woke after {waited:?}");
        assert!(log.is_closed());
        assert_eq!(log.read(next, 1000).expect("read"), (Vec::new(), next));
    }
}
