//! Length-prefixed messages on a raw stream ([`crate::Link::open_stream`]): what subsystems
//! move bulk data with (job output, chunks) instead of many request frames. Each message is a
//! 4-byte big-endian length and that many bytes; the reader refuses a length over its bound
//! before it reads the body.

use quinn::{RecvStream, SendStream};

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the peer announced a message of {len} bytes, more than {max}")]
    TooLong { len: usize, max: usize },
    #[error("the stream ended inside a message")]
    Truncated,
    #[error("stream: {0}")]
    Stream(String),
}

/// Writes one message.
pub async fn send_message(send: &mut SendStream, bytes: &[u8]) -> Result<(), MessageError> {
    let len = u32::try_from(bytes.len()).map_err(|_| MessageError::TooLong {
        len: bytes.len(),
        max: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| MessageError::Stream(e.to_string()))?;
    send.write_all(bytes)
        .await
        .map_err(|e| MessageError::Stream(e.to_string()))
}

/// Reads one message of at most `max` bytes; `None` when the peer finished the stream between
/// messages.
pub async fn recv_message(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, MessageError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(MessageError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(MessageError::Stream(e.to_string()));
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(MessageError::TooLong { len, max });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => MessageError::Truncated,
        quinn::ReadExactError::ReadError(e) => MessageError::Stream(e.to_string()),
    })?;
    Ok(Some(body))
}
