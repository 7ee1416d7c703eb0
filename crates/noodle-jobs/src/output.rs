//! `jobs.output`: one attempt's output, streamed from the node that runs (or ran) it.
//!
//! The asking node opens a raw stream, sends an [`OutputRequest`] and reads [`OutputPiece`]s:
//! whole output frames from the requested offset on, each piece at most [`PIECE_BYTES_MAX`]
//! of frames. When following, the running node sends new output as the job writes it, until
//! the attempt's log closes; otherwise it stops at the end of what is written. The asking node
//! reads its own attempts through the same producer, without the stream.

use crate::process::OutputLog;
use noodle_link::{Link, MessageError, RecvStream, SendStream, recv_message, send_message};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The raw-stream method.
pub(crate) const METHOD: &str = "jobs.output";
/// Most bytes of output frames in one piece.
pub(crate) const PIECE_BYTES_MAX: usize = 1 << 20;
/// Bytes of one encoded piece or request at most (frames plus a few fields).
const MESSAGE_BYTES_MAX: usize = PIECE_BYTES_MAX + 64;
/// How long the producer waits for new output before it looks whether the reader went away.
const WAIT: Duration = Duration::from_secs(1);
/// Pieces buffered between a producer and the relay.
pub(crate) const PIECES_QUEUED: usize = 4;

/// What the asking node wants: attempt `epoch` of job `id`, from byte `offset` of its log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct OutputRequest {
    pub(crate) id: u64,
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
    /// Keep sending new output until the attempt's log closes.
    pub(crate) follow: bool,
}

/// Some output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutputPiece {
    /// Whole frames (see `noodle_api::output_frame`).
    pub(crate) frames: Vec<u8>,
    /// The offset after these frames.
    pub(crate) next: u64,
    /// The attempt has ended and everything up to `next` is all there is.
    pub(crate) closed: bool,
    /// This node has no output for the attempt (never ran it here, or it was pruned).
    pub(crate) unknown: bool,
}

/// Produces the pieces of `req` from `log` into `sink` until the log is read to its end (and,
/// when following, closed), or `sink` refuses one (the reader went away).
pub(crate) async fn produce(
    log: Option<Arc<OutputLog>>,
    req: OutputRequest,
    sink: mpsc::Sender<Result<OutputPiece, String>>,
) {
    let Some(log) = log else {
        let unknown = OutputPiece {
            next: req.offset,
            unknown: true,
            ..OutputPiece::default()
        };
        let _ = sink.send(Ok(unknown)).await;
        return;
    };
    let mut offset = req.offset;
    loop {
        if req.follow && log.len() <= offset && !log.is_closed() {
            tokio::select! {
                () = log.wait_past(offset, WAIT) => {}
                () = sink.closed() => return,
            }
            if log.len() <= offset && !log.is_closed() {
                continue;
            }
        }
        let closed = log.is_closed();
        let (frames, next) = match log.read(offset, PIECE_BYTES_MAX) {
            Ok(r) => r,
            Err(e) => {
                let _ = sink
                    .send(Err(format!("output of job {}: {e}", req.id)))
                    .await;
                return;
            }
        };
        let done = closed && next >= log.len();
        let at_end = next >= log.len();
        let piece = OutputPiece {
            frames,
            next,
            closed: done,
            unknown: false,
        };
        if sink.send(Ok(piece)).await.is_err() || done || (!req.follow && at_end) {
            return;
        }
        offset = next;
    }
}

/// Serves one `jobs.output` stream from another node.
pub(crate) async fn serve(
    log_of: impl FnOnce(u64, u64) -> Option<Arc<OutputLog>>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let req = match recv_message(&mut recv, MESSAGE_BYTES_MAX).await {
        Ok(Some(body)) => postcard::from_bytes::<OutputRequest>(&body).ok(),
        _ => None,
    };
    let Some(req) = req else {
        metrics::counter!("noodle_jobs_bad_output_requests_total").increment(1);
        let _ = send.reset(0u32.into());
        return;
    };
    let (tx, mut rx) = mpsc::channel(PIECES_QUEUED);
    let producer = produce(log_of(req.id, req.epoch), req, tx);
    let writer = async {
        while let Some(piece) = rx.recv().await {
            let Ok(piece) = piece else { break };
            let Ok(bytes) = postcard::to_allocvec(&piece) else {
                break;
            };
            if send_message(&mut send, &bytes).await.is_err() {
                break;
            }
        }
        drop(rx);
    };
    tokio::join!(producer, writer);
    let _ = send.finish();
}

/// Reads one attempt's pieces from node `addr` into `sink`, until the stream ends or `sink`
/// refuses one.
pub(crate) async fn fetch(
    link: &Link,
    addr: SocketAddr,
    req: OutputRequest,
    sink: mpsc::Sender<Result<OutputPiece, String>>,
) {
    let result: Result<(), String> = async {
        let (mut send, mut recv) = link
            .open_stream(addr, METHOD)
            .await
            .map_err(|e| e.to_string())?;
        let body = postcard::to_allocvec(&req).map_err(|e| e.to_string())?;
        send_message(&mut send, &body)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        loop {
            let body = match recv_message(&mut recv, MESSAGE_BYTES_MAX).await {
                Ok(Some(body)) => body,
                Ok(None) => return Ok(()),
                Err(MessageError::Stream(e)) => return Err(format!("output stream broke: {e}")),
                Err(e) => return Err(e.to_string()),
            };
            let piece: OutputPiece = postcard::from_bytes(&body)
                .map_err(|_| format!("{addr} sent unreadable output"))?;
            if sink.send(Ok(piece)).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = result {
        let _ = sink.send(Err(e)).await;
    }
}
