//! lmrs core: a byte-level BPE engine.
//!
//! Data flows one way: files → [`corpus`] scan → word counts → [`train`] merges →
//! [`vocab::Vocab`] → [`encode`] token ids → [`token_file`]. Nothing in this crate root
//! or the pure-Rust modules depends on PyO3; the Python glue lives in `py.rs` behind the
//! `python` feature so that `cargo test` runs without a Python interpreter.

pub mod arrow_texts;
pub mod atomic;
pub mod bf16;
pub mod corpus;
pub mod cpu;
pub mod decode;
pub mod encode;
pub mod error;
pub mod fault;
pub mod flat_map;
pub mod pretokenize;
pub mod sample;
pub mod token_file;
pub mod token_index;
pub mod token_stream;
pub mod train;
pub mod vocab;

#[cfg(feature = "python")]
mod py;
#[cfg(feature = "python")]
mod py_arrow;
#[cfg(feature = "python")]
mod py_decode;
#[cfg(feature = "python")]
mod py_token_stream;

pub use error::{catch_panic, Error, Result};
