//! What a failed file-system call answers: the errno the program sees, and a line for the log.
//!
//! Not found is `ENOENT`; a right the caller lacks (HTTP 401 or 403) is `EACCES`; anything else
//! the node or this machine fails with is `EIO`. Errors are logged where they are answered
//! (`FabricFs::fail`), not where they arise.

use fuser::Errno;
use noodle_api::ClientError;
use noodle_api::fabric::DownloadError;
use noodle_api::upload::UploadError;

/// A failed call: the errno to answer with, and what happened.
#[derive(Debug)]
pub(crate) struct FsError {
    pub(crate) errno: Errno,
    pub(crate) detail: String,
}

impl FsError {
    pub(crate) fn new(errno: Errno, detail: impl Into<String>) -> FsError {
        FsError {
            errno,
            detail: detail.into(),
        }
    }

    pub(crate) fn not_found(path: &str) -> FsError {
        FsError::new(Errno::ENOENT, format!("there is no {path}"))
    }

    pub(crate) fn io(what: &str, e: std::io::Error) -> FsError {
        let errno = match e.raw_os_error() {
            Some(code) => Errno::from_i32(code),
            None => Errno::EIO,
        };
        FsError::new(errno, format!("{what}: {e}"))
    }

    /// Whether the log should hear of it: the expected answers (no such entry, it exists, not
    /// empty) are not problems.
    pub(crate) fn worth_logging(&self) -> bool {
        ![
            Errno::ENOENT,
            Errno::EEXIST,
            Errno::ENOTEMPTY,
            Errno::EXDEV,
            Errno::EISDIR,
            Errno::ENOTDIR,
        ]
        .contains(&self.errno)
    }
}

/// The errno for an answer of the node.
pub(crate) fn errno_of(e: &ClientError) -> Errno {
    match e {
        ClientError::NotFound(_) => Errno::ENOENT,
        ClientError::Unauthenticated(_) => Errno::EACCES,
        ClientError::Api(message) if is_denial(message) => Errno::EACCES,
        _ => Errno::EIO,
    }
}

/// Whether a refusal is the authoriser's (HTTP 403: `denied: ...`).
pub(crate) fn is_denial(message: &str) -> bool {
    message.starts_with("denied")
}

impl From<ClientError> for FsError {
    fn from(e: ClientError) -> FsError {
        FsError::new(errno_of(&e), e.to_string())
    }
}

impl From<DownloadError> for FsError {
    fn from(e: DownloadError) -> FsError {
        let errno = match &e {
            DownloadError::Client(c) => errno_of(c),
            _ => Errno::EIO,
        };
        FsError::new(errno, e.to_string())
    }
}

impl From<UploadError> for FsError {
    fn from(e: UploadError) -> FsError {
        let errno = match &e {
            UploadError::AskMissing(c)
            | UploadError::PutChunk { source: c, .. }
            | UploadError::PutManifest { source: c, .. } => errno_of(c),
            _ => Errno::EIO,
        };
        FsError::new(errno, e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_answers_map_to_errnos() {
        assert_eq!(
            errno_of(&ClientError::NotFound("there is no /x".into())),
            Errno::ENOENT
        );
        assert_eq!(
            errno_of(&ClientError::Api(
                "denied: the token does not allow fabric:read:/x".into()
            )),
            Errno::EACCES
        );
        assert_eq!(
            errno_of(&ClientError::Unauthenticated("bad".into())),
            Errno::EACCES
        );
        assert_eq!(
            errno_of(&ClientError::Api("no node has room for it".into())),
            Errno::EIO
        );
        assert!(!FsError::not_found("/x").worth_logging());
        assert!(FsError::new(Errno::EIO, "x").worth_logging());
    }
}
