//! The client's error: a gRPC status (from a server, or mapped the same way from an embedded
//! shard's store error), a routing problem, or a transport that could not connect.

use tonic::Code;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("shard {shard}: {code:?}: {message}")]
    Status {
        shard: usize,
        code: Code,
        message: String,
    },
    #[error("key {key} belongs to no shard of the cluster map")]
    NoShard { key: u64 },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("connecting to shard {shard} at {address}: {message}")]
    Connect {
        shard: usize,
        address: String,
        message: String,
    },
    #[error("shard {shard} ({address}): gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        shard: usize,
        address: String,
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    pub fn status(shard: usize, s: tonic::Status) -> ClientError {
        // A transport failure says only "transport error"; its causes (refused connection,
        // an untrusted certificate, …) are in the source chain.
        let mut message = s.message().to_string();
        let mut source = std::error::Error::source(&s);
        while let Some(e) = source {
            let text = e.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = e.source();
        }
        ClientError::Status {
            shard,
            code: s.code(),
            message,
        }
    }

    /// The thing to be created exists already (a table another worker created first).
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }

    /// The gRPC code, if this error carries one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Whether the call may have failed in transit (or the shard is restarting): retrying with
    /// the same sequence number is safe and may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Aborted
            ),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}
