//! One error type for the crate; `py/errors.rs` maps it to Python exceptions by variant.

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

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
    /// The caller asked the work to stop (Ctrl-C, or a progress callback said so).
    Interrupted,
    /// A bug in lmrs: a panic caught before it could cross into Python (see [`catch_panic`]).
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Format { path, message } => write!(f, "{path}: {message}"),
            Error::Invalid(message) | Error::Internal(message) => write!(f, "{message}"),
            Error::Interrupted => write!(f, "interrupted"),
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

/// Runs `work`; a panic in it becomes [`Error::Internal`] naming `what` and carrying the
/// panic's message, so that the Python bindings (and worker threads) report a bug as an
/// error instead of unwinding into the interpreter.
///
/// `AssertUnwindSafe`: after a panic the caller only reports the error; state that `work`
/// was changing may be incomplete (a half-merged count table), never memory-unsafe, and
/// the message says it is an internal error, so nobody relies on that state.
pub fn catch_panic<T>(what: &str, work: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        Error::Internal(format!(
            "lmrs internal error in {what}: {}",
            panic_message(payload.as_ref())
        ))
    })
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_naming_the_function() {
        let err = catch_panic("Tokenizer.decode", || -> u32 {
            let v: Vec<u32> = Vec::new();
            v[3]
        })
        .unwrap_err();
        assert!(matches!(err, Error::Internal(_)));
        let message = err.to_string();
        assert!(
            message.starts_with("lmrs internal error in Tokenizer.decode: index out of bounds"),
            "{message}"
        );
        let err = catch_panic("f", || panic!("{} things", 3)).unwrap_err();
        assert_eq!(err.to_string(), "lmrs internal error in f: 3 things");
        assert_eq!(catch_panic("f", || 7).unwrap(), 7);
    }
}
