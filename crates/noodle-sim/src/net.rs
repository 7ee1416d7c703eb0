//! Request/response over turmoil's simulated TCP: the control plane's [`Transport`] and the
//! clients' calls to the nodes.
//!
//! One connection per call, so turmoil's per-message latency reorders calls against each
//! other, a partition refuses new connections and stalls open ones, and a crash resets them.
//! Frames: a request is `u32 length, u8 method length, method, body`; an answer is
//! `u32 length, u8 status (0 ok, 1 error), bytes`. Both are bounded.
//!
//! Every connection lives in a task of the host's `LocalSet`, never in a task spawned on the
//! runtime (openraft's): when turmoil crashes a host it drops the runtime's tasks in an order
//! that depends on tokio's process-wide task ids, and a connection dropped there would send its
//! FIN, and draw its latency from turmoil's generator, in an order that differs from one run of
//! a seed to the next. `LocalSet` tasks are dropped in the order they were spawned.

use noodle_control::{Member, Transport, TransportError, TransportFuture};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use turmoil::net::TcpStream;

/// The port every node listens on.
pub(crate) const PORT: u16 = 7000;

/// Larger than any Raft message of the simulation (snapshot chunks are at most 1 MiB).
const FRAME_BYTES_MAX: usize = 4 << 20;
const METHOD_BYTES_MAX: usize = 64;

/// Calls a node may have waiting for a connection task; more are refused as unreachable.
const CALLS_QUEUED_MAX: usize = 1024;

struct Call {
    addr: String,
    method: &'static str,
    body: Vec<u8>,
    timeout: Duration,
    reply: oneshot::Sender<Result<Vec<u8>, TransportError>>,
}

/// The control plane's transport: Raft messages between the simulated nodes. Each call is made
/// by a `LocalSet` task of the host (see the module comment).
///
/// A Raft message (`raft.*`) that cannot connect fails only once its time is up, as a SYN to a
/// partitioned host does, so openraft, which wraps every RPC in a timeout of that length, sees
/// a timeout. openraft reacts to [`TransportError::Unreachable`] with a backoff whose
/// `tokio::select!` (replication/mod.rs) picks between two ready branches with tokio's
/// per-runtime generator, which nothing seeds (outside `--cfg tokio_unstable`): that one path
/// made runs of a seed differ. The control plane's own calls (`control.*`) still see
/// `Unreachable` at once, which tells `Control::propose` that a retry is safe.
pub(crate) struct SimTransport {
    calls: mpsc::Sender<Call>,
}

impl SimTransport {
    /// Starts the host's calling task. Must run in the host's software (its `LocalSet`).
    pub(crate) fn start() -> SimTransport {
        let (calls, mut queue) = mpsc::channel::<Call>(CALLS_QUEUED_MAX);
        tokio::task::spawn_local(async move {
            while let Some(c) = queue.recv().await {
                tokio::task::spawn_local(async move {
                    let deadline = Instant::now() + c.timeout;
                    let result = call(&c.addr, c.method, &c.body, c.timeout).await;
                    if matches!(result, Err(TransportError::Unreachable(_)))
                        && c.method.starts_with("raft.")
                    {
                        // Past the deadline, so that openraft's own timeout around the call
                        // fires first: see `SimTransport`.
                        tokio::time::sleep_until(deadline + Duration::from_millis(1)).await;
                    }
                    let _ = c.reply.send(result);
                });
            }
        });
        SimTransport { calls }
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        to: &Member,
        method: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> TransportFuture {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            addr: to.addr.clone(),
            method,
            body,
            timeout,
            reply,
        };
        let queued = self.calls.try_send(call);
        Box::pin(async move {
            queued.map_err(|e| TransportError::Unreachable(format!("cannot send: {e}")))?;
            answer
                .await
                .map_err(|_| TransportError::Failed("the node stopped during the call".into()))?
        })
    }
}

/// Sends one request to `addr` and waits at most `timeout` for the answer.
///
/// A connection that cannot be made is [`TransportError::Unreachable`]: the request never left.
/// Anything after that (a timeout, a reset, a malformed answer) is [`TransportError::Failed`]:
/// the peer may have acted on it.
pub(crate) async fn call(
    addr: &str,
    method: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, TransportError> {
    let deadline = Instant::now() + timeout;
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TransportError::Unreachable(format!("{addr}: {e}"))),
        Err(_) => {
            return Err(TransportError::Unreachable(format!(
                "{addr}: connecting timed out"
            )));
        }
    };
    let exchange = async {
        write_request(&mut stream, method, body).await?;
        read_answer(&mut stream).await
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(Ok(Ok(answer))) => Ok(answer),
        Ok(Ok(Err(remote))) => Err(TransportError::Failed(format!("{addr} {method}: {remote}"))),
        Ok(Err(e)) => Err(TransportError::Failed(format!("{addr} {method}: {e}"))),
        Err(_) => Err(TransportError::Failed(format!(
            "{addr} {method}: no answer within {timeout:?}"
        ))),
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await? as usize;
    if len > FRAME_BYTES_MAX {
        return Err(invalid(format!(
            "a {len}-byte frame is over the {FRAME_BYTES_MAX}-byte limit"
        )));
    }
    let mut frame = vec![0; len];
    stream.read_exact(&mut frame).await?;
    Ok(frame)
}

async fn write_frame(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > FRAME_BYTES_MAX {
        return Err(invalid(format!(
            "a {len}-byte frame is over the {FRAME_BYTES_MAX}-byte limit"
        )));
    }
    let mut frame = Vec::with_capacity(4 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        frame.extend_from_slice(p);
    }
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn write_request(stream: &mut TcpStream, method: &str, body: &[u8]) -> io::Result<()> {
    if method.len() > METHOD_BYTES_MAX {
        return Err(invalid(format!("method name {method:?} is too long")));
    }
    write_frame(stream, &[&[method.len() as u8], method.as_bytes(), body]).await
}

/// Reads one request: (method, body).
pub(crate) async fn read_request(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let frame = read_frame(stream).await?;
    let (&method_len, rest) = frame
        .split_first()
        .ok_or_else(|| invalid("empty request frame".into()))?;
    let method_len = method_len as usize;
    if method_len > METHOD_BYTES_MAX || method_len > rest.len() {
        return Err(invalid(format!(
            "method length {method_len} is out of bounds"
        )));
    }
    let (method, body) = rest.split_at(method_len);
    let method = std::str::from_utf8(method).map_err(|e| invalid(format!("method name: {e}")))?;
    Ok((method.to_string(), body.to_vec()))
}

/// Writes the answer to a request: its bytes, or an error message.
pub(crate) async fn write_answer(
    stream: &mut TcpStream,
    answer: Result<&[u8], &str>,
) -> io::Result<()> {
    match answer {
        Ok(bytes) => write_frame(stream, &[&[0], bytes]).await,
        Err(message) => write_frame(stream, &[&[1], message.as_bytes()]).await,
    }
}

/// Reads an answer; the inner error is one the peer sent back.
async fn read_answer(stream: &mut TcpStream) -> io::Result<Result<Vec<u8>, String>> {
    let frame = read_frame(stream).await?;
    match frame.split_first() {
        Some((0, bytes)) => Ok(Ok(bytes.to_vec())),
        Some((1, message)) => Ok(Err(String::from_utf8_lossy(message).into_owned())),
        _ => Err(invalid("answer frame without a valid status byte".into())),
    }
}
