//! The client's error: a status from a shard (sent by a server, or classified the same way by
//! an embedded shard), a routing problem, or a transport that could not connect. Codes are
//! paramdb's own (`Code`, gRPC's canonical codes), whichever transport answered.

use paramdb_types::Code;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("shard {shard}: {code}: {message}")]
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
    #[error("backup cut: {0}")]
    Cut(String),
    #[error("shard {shard} ({address}): gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        shard: usize,
        address: String,
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// The thing to be created exists already (a table another worker created first).
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }

    /// The code of this error: a shard's status, `InvalidArgument` for a request the client
    /// refused itself, `Unavailable` for a shard it could not reach.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::RetriesExhausted { last, .. } => last.code(),
            ClientError::Invalid(_) | ClientError::NoShard { .. } => Some(Code::InvalidArgument),
            ClientError::Connect { .. } => Some(Code::Unavailable),
            ClientError::Cut(_) => Some(Code::Aborted),
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
