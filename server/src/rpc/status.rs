//! The one place where a store error becomes a gRPC status.

use tonic::{Code, Status};

use crate::error::StoreError;

/// The gRPC code for a store error. Bad input is the caller's to fix (`INVALID_ARGUMENT`,
/// `NOT_FOUND`, …); a poisoned or failing store is `UNAVAILABLE` (retry after a restart);
/// damaged data is `DATA_LOSS`.
pub fn code_of(e: &StoreError) -> Code {
    match e {
        StoreError::UnknownTable { .. } => Code::NotFound,
        StoreError::TableExists { .. } => Code::AlreadyExists,
        StoreError::InvalidTableSpec { .. }
        | StoreError::DimensionMismatch { .. }
        | StoreError::NonFinite { .. }
        | StoreError::EmptyRequest { .. }
        | StoreError::DuplicateKey { .. }
        | StoreError::KeyRangeOverflow { .. }
        | StoreError::InvalidSequence { .. } => Code::InvalidArgument,
        StoreError::SequenceTooOld { .. } => Code::FailedPrecondition,
        StoreError::RequestTooLarge { .. } => Code::ResourceExhausted,
        StoreError::ReadOnly { .. } => Code::PermissionDenied,
        StoreError::NotAStore { .. } | StoreError::UnsupportedFormat { .. } => {
            Code::FailedPrecondition
        }
        StoreError::Poisoned { .. } | StoreError::Io { .. } => Code::Unavailable,
        StoreError::ChecksumMismatch { .. }
        | StoreError::CorruptLog { .. }
        | StoreError::LogGap { .. }
        | StoreError::CorruptRow { .. }
        | StoreError::CorruptMeta { .. } => Code::DataLoss,
        _ => Code::Internal,
    }
}

pub fn to_status(e: StoreError) -> Status {
    let code = code_of(&e);
    if !e.is_bad_input() {
        tracing::error!(error = %e, "store error");
    }
    Status::new(code, e.to_string())
}
