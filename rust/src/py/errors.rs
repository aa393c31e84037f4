//! The one conversion of the crate's errors into Python exceptions, and [`guard`], which
//! every binding's body runs inside.
//!
//! Every binding's body (all but the getters of stored fields) runs inside [`guard`], so
//! that a panic (a bug) reaches Python as a RuntimeError naming the binding, never as
//! PyO3's `PanicException`. Errors map to exceptions by variant in [`to_py_err`], never by
//! their message.

use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::Error;

create_exception!(
    _lmrs,
    TokenizerError,
    PyValueError,
    "A tokenizer or token file is missing, unreadable, malformed or of the wrong version; \
     the message names the file and the problem."
);

pub(crate) fn to_py_err(e: Error) -> PyErr {
    match e {
        Error::Io { .. } | Error::Format { .. } => TokenizerError::new_err(e.to_string()),
        Error::Invalid(message) => PyValueError::new_err(message),
        Error::Interrupted => PyKeyboardInterrupt::new_err(e.to_string()),
        Error::Internal(message) => PyRuntimeError::new_err(message),
    }
}

/// Runs the body of the binding `name`. A panic in it becomes a RuntimeError "lmrs
/// internal error in NAME: MESSAGE": PyO3 would raise `PanicException`, a BaseException
/// that `except Exception` and the CLI's one-line error handling both miss.
pub(crate) fn guard<T>(name: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    crate::catch_panic(name, body).unwrap_or_else(|e| Err(to_py_err(e)))
}
