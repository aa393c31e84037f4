//! One error type for the crate; `py.rs` maps it to Python exceptions.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file failed; the path is part of the message.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A tokenizer/vocab file is malformed, truncated, tampered or of the wrong version.
    Format { path: String, message: String },
    /// Invalid arguments or input (bad pattern, vocab size too small, unknown token id...).
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
            Error::Invalid(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
