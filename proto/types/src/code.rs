//! What kind of failure an error is, in the canonical status codes gRPC uses, so that the
//! engine can say it without knowing gRPC, the gRPC layer maps it one to one, and a client
//! reports the same code whichever transport the answer came over.

use std::fmt;

/// A failure's class. The numbers are gRPC's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    /// The request is wrong: fix it (wrong dimension, NaN, a bad table definition).
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    /// The table does not exist.
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    /// Over a size or concurrency limit.
    ResourceExhausted = 8,
    /// Not possible in this state: a key outside the shard's range, a sequence number too old.
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    /// Try again later: the shard is replaying its log, restarting, or poisoned until a restart.
    Unavailable = 14,
    /// Stored data is damaged.
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The code for gRPC's number (unknown numbers are `Unknown`).
    pub fn from_i32(n: i32) -> Code {
        use Code::*;
        [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ]
        .into_iter()
        .find(|c| *c as i32 == n)
        .unwrap_or(Unknown)
    }

    /// gRPC's name for it (`INVALID_ARGUMENT`).
    pub fn name(self) -> &'static str {
        use Code::*;
        match self {
            Ok => "OK",
            Cancelled => "CANCELLED",
            Unknown => "UNKNOWN",
            InvalidArgument => "INVALID_ARGUMENT",
            DeadlineExceeded => "DEADLINE_EXCEEDED",
            NotFound => "NOT_FOUND",
            AlreadyExists => "ALREADY_EXISTS",
            PermissionDenied => "PERMISSION_DENIED",
            ResourceExhausted => "RESOURCE_EXHAUSTED",
            FailedPrecondition => "FAILED_PRECONDITION",
            Aborted => "ABORTED",
            OutOfRange => "OUT_OF_RANGE",
            Unimplemented => "UNIMPLEMENTED",
            Internal => "INTERNAL",
            Unavailable => "UNAVAILABLE",
            DataLoss => "DATA_LOSS",
            Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn numbers_round_trip() {
        for n in 0..=16 {
            assert_eq!(Code::from_i32(n) as i32, n);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::InvalidArgument.to_string(), "INVALID_ARGUMENT");
    }
}
