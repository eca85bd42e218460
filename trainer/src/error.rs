//! Trainer errors.

use paramdb_client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("parameter server: {0}")]
    Client(#[from] ClientError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("model {model:?} in the parameter server does not match: {reason}")]
    Mismatch { model: String, reason: String },
}

impl TrainError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TrainError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
