//! [`BenchError`]: everything a benchmark run can fail with.
//!
//! A benchmark that fails stops the whole run: the rows are measured together, and a row
//! missing its limit row (or measured on a half-working setup) would mislead.

/// Why `noodle bench` could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// This machine's files, sockets, threads or runtimes failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Certificates for the benchmark links could not be made.
    #[error(transparent)]
    Cert(#[from] noodle_security::CertError),
    /// A benchmark link failed.
    #[error(transparent)]
    Link(#[from] noodle_link::LinkError),
    /// Writing the bulk stream failed.
    #[error(transparent)]
    StreamWrite(#[from] quinn::WriteError),
    /// Finishing the bulk stream failed.
    #[error(transparent)]
    StreamClosed(#[from] quinn::ClosedStream),
    /// Reading the bulk stream's answer failed.
    #[error(transparent)]
    StreamRead(#[from] quinn::ReadToEndError),
    /// The benchmark control plane failed.
    #[error(transparent)]
    Control(#[from] noodle_control::ControlError),
    /// The benchmark control plane's database failed.
    #[error(transparent)]
    Db(#[from] noodle_control::DbError),
    /// The benchmark token could not be specified or minted.
    #[error(transparent)]
    Spec(#[from] noodle_caps::SpecError),
    /// The benchmark token could not be minted.
    #[error(transparent)]
    Token(#[from] noodle_caps::TokenError),
    /// The authoriser refused the benchmark token.
    #[error("the bench token was refused")]
    Refused(#[source] noodle_caps::Denied),
    /// A benchmark node's API failed.
    #[error(transparent)]
    Api(#[from] noodle_api::ClientError),
    /// A blocking benchmark task failed.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// A benchmark thread panicked.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// A measurement did not come out as it must (lost bytes, a failed job, a setup that did
    /// not converge in time).
    #[error("{0}")]
    Failed(String),
}

impl BenchError {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}
