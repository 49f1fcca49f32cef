//! Errors of loading checkpoints, tokenizers and traces: which file, and what is wrong with it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's contents are not what its format says: truncated, wrong header, wrong shape.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl WorkloadError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WorkloadError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        WorkloadError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = WorkloadError> = std::result::Result<T, E>;
