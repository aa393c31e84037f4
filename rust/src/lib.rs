//! lmrs core: a byte-level BPE engine, its token files, and a CPU decoding step.
//!
//! Layers, each importing only from itself, lower layers and the crate root:
//! - [`bpe`]: files → [`bpe::corpus`] scan → word counts → [`bpe::train`] merges →
//!   [`bpe::vocab::Vocab`] → [`bpe::encode`] token ids;
//! - [`tokens`]: token ids → token files ([`tokens::token_file`]), their index and streams;
//! - [`decode`]: a GPT decoding step ([`decode::model`]), sampling, and the CPU kernels;
//! - at the root, what every layer shares: [`error`], [`atomic`] writes, [`fault`] points.
//!
//! Nothing outside `py/` depends on PyO3; the Python glue lives in `py/` behind the
//! `python` feature so that `cargo test` runs without a Python interpreter.

pub mod atomic;
pub mod bpe;
pub mod decode;
pub mod error;
pub mod fault;
pub mod tokens;

#[cfg(feature = "python")]
mod py;

pub use error::{catch_panic, Error, Result};
