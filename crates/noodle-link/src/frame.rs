//! Framing of requests and responses on one bidirectional QUIC stream.
//!
//! A request stream carries `[u16 BE header length][postcard RequestHeader][body]` and is then
//! finished; the response stream carries `[status byte][payload]`: status 0 means the payload is
//! the body, status 1 means it is a postcard [`RemoteError`]. QUIC delimits the stream, so bodies
//! need no length of their own; their size is bounded by the reader.

use serde::{Deserialize, Serialize};

/// Version of the request header; bumped when the header changes shape.
pub const FRAME_VERSION: u8 = 1;
const HEADER_BYTES_MAX: usize = 1024;
const METHOD_CHARS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is truncated")]
    Truncated,
    #[error("frame header is too large ({0} bytes)")]
    HeaderTooLarge(usize),
    #[error("frame header is unreadable")]
    BadHeader,
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("method name is invalid")]
    BadMethod,
    #[error("unknown response status {0}")]
    BadStatus(u8),
}

/// What precedes a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub version: u8,
    pub method: String,
    /// How long the caller waits; the callee may give up after this.
    pub deadline_ms: u32,
}

/// An error the remote side returned on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RemoteError {
    pub code: u16,
    pub message: String,
}

impl RemoteError {
    pub const BAD_REQUEST: u16 = 400;
    pub const FORBIDDEN: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const INTERNAL: u16 = 500;
    pub const UNAVAILABLE: u16 = 503;

    pub fn new(code: u16, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code,
            message: message.into(),
        }
    }
}

pub fn encode_request(method: &str, deadline_ms: u32, body: &[u8]) -> Vec<u8> {
    let header = RequestHeader {
        version: FRAME_VERSION,
        method: method.to_string(),
        deadline_ms,
    };
    let header = postcard::to_stdvec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(2 + header.len() + body.len());
    // The header is a short method name and two small integers: far below u16::MAX.
    out.extend_from_slice(&(header.len() as u16).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

/// Splits a request stream into its header and body.
pub fn decode_request(bytes: &[u8]) -> Result<(RequestHeader, &[u8]), FrameError> {
    let len_bytes: [u8; 2] = bytes
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = header_len(len_bytes)?;
    let header = decode_header(bytes.get(2..2 + len).ok_or(FrameError::Truncated)?)?;
    Ok((header, &bytes[2 + len..]))
}

/// The header length announced by the first two bytes of a request stream.
pub fn header_len(len_bytes: [u8; 2]) -> Result<usize, FrameError> {
    let len = u16::from_be_bytes(len_bytes) as usize;
    if len > HEADER_BYTES_MAX {
        return Err(FrameError::HeaderTooLarge(len));
    }
    Ok(len)
}

/// Decodes and checks a request header (the bytes after the length).
pub fn decode_header(header_bytes: &[u8]) -> Result<RequestHeader, FrameError> {
    let header: RequestHeader =
        postcard::from_bytes(header_bytes).map_err(|_| FrameError::BadHeader)?;
    if header.version != FRAME_VERSION {
        return Err(FrameError::Version(header.version));
    }
    let method_ok = !header.method.is_empty()
        && header.method.len() <= METHOD_CHARS_MAX
        && header
            .method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if !method_ok {
        return Err(FrameError::BadMethod);
    }
    Ok(header)
}

pub fn encode_response(result: &Result<Vec<u8>, RemoteError>) -> Vec<u8> {
    match result {
        Ok(body) => {
            let mut out = Vec::with_capacity(1 + body.len());
            out.push(0);
            out.extend_from_slice(body);
            out
        }
        Err(e) => {
            let mut out = vec![1];
            out.extend_from_slice(&postcard::to_stdvec(e).unwrap_or_default());
            out
        }
    }
}

/// Decodes a response stream: the outer `Result` is about the frame, the inner one is what the
/// remote side answered.
pub fn decode_response(bytes: &[u8]) -> Result<Result<&[u8], RemoteError>, FrameError> {
    match bytes.first() {
        None => Err(FrameError::Truncated),
        Some(0) => Ok(Ok(&bytes[1..])),
        Some(1) => {
            let e: RemoteError =
                postcard::from_bytes(&bytes[1..]).map_err(|_| FrameError::BadHeader)?;
            Ok(Err(e))
        }
        Some(&s) => Err(FrameError::BadStatus(s)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() {
        let bytes = encode_request("gossip.sync", 500, b"hello");
        let (h, body) = decode_request(&bytes).unwrap();
        assert_eq!(h.method, "gossip.sync");
        assert_eq!(h.deadline_ms, 500);
        assert_eq!(body, b"hello");
    }

    #[test]
    fn response_round_trip() {
        let ok = encode_response(&Ok(b"x".to_vec()));
        assert_eq!(decode_response(&ok).unwrap(), Ok(&b"x"[..]));
        let err = RemoteError::new(403, "no");
        let bytes = encode_response(&Err(err.clone()));
        assert_eq!(decode_response(&bytes).unwrap(), Err(err));
    }

    #[test]
    fn malformed_requests_are_named() {
        let mut bad_method = encode_request("ok", 1, b"");
        let cases: Vec<(Vec<u8>, FrameError)> = vec![
            (vec![], FrameError::Truncated),
            (vec![0], FrameError::Truncated),
            (vec![0xff, 0xff], FrameError::HeaderTooLarge(0xffff)),
            (vec![0, 5, 1, 2], FrameError::Truncated),
            (vec![0, 1, 0xff], FrameError::BadHeader),
            (encode_request("a b", 1, b""), FrameError::BadMethod),
            (
                {
                    // Version byte is the first byte of the header.
                    bad_method[2] = 9;
                    bad_method
                },
                FrameError::Version(9),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_request(&bytes).map(|_| ()), Err(want), "{bytes:?}");
        }
        assert_eq!(decode_response(&[7]), Err(FrameError::BadStatus(7)));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
