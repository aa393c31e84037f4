//! PyO3 glue only: argument conversion, GIL release, errors → exceptions. The extension
//! module `lmrs._lmrs` is assembled here from the bindings of each layer.
//!
//! Every binding's body (all but the getters of stored fields) runs inside
//! [`errors::guard`], so that a panic (a bug) reaches Python as a RuntimeError naming the
//! binding, never as PyO3's `PanicException`. Errors map to exceptions by variant in
//! [`errors::to_py_err`], never by their message.
//!
//! Imports run one way: [`errors`] ← [`arrow`] ← [`tokenizer`] ← [`tokens`]; [`decode`]
//! uses [`errors`] only; this module registers them all.

mod arrow;
mod decode;
mod errors;
mod tokenizer;
mod tokens;

use pyo3::prelude::*;

use crate::bpe::pretokenize::{
    CL100K_PATTERN, GPT2_PATTERN, GPT4_PATTERN, HF_BYTE_LEVEL_PATTERN, O200K_PATTERN,
};
use errors::TokenizerError;
use tokenizer::{collect_files, CoreTokenizer, WordCounter};
use tokens::{build_manifest, head_tail_sha256, part_range};

/// The names of the Rust fault points (`rust/src/fault.rs`), in the order a write
/// reaches them: the fault-injection tests crash at each in turn.
#[pyfunction]
fn fault_points() -> Vec<&'static str> {
    crate::fault::POINTS.to_vec()
}

#[pymodule]
fn _lmrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GPT4_PATTERN", GPT4_PATTERN)?;
    m.add("CL100K_PATTERN", CL100K_PATTERN)?;
    m.add("GPT2_PATTERN", GPT2_PATTERN)?;
    m.add("O200K_PATTERN", O200K_PATTERN)?;
    m.add("HF_BYTE_LEVEL_PATTERN", HF_BYTE_LEVEL_PATTERN)?;
    m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
    m.add_class::<CoreTokenizer>()?;
    m.add_class::<WordCounter>()?;
    m.add_class::<tokens::PyTokenStream>()?;
    m.add_function(wrap_pyfunction!(collect_files, m)?)?;
    m.add_function(wrap_pyfunction!(build_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(part_range, m)?)?;
    m.add_function(wrap_pyfunction!(fault_points, m)?)?;
    m.add_function(wrap_pyfunction!(head_tail_sha256, m)?)?;
    m.add("FAULT_EXIT_CODE", crate::fault::EXIT_CODE)?;
    m.add_class::<decode::PyDecodeModel>()?;
    m.add_class::<decode::DecodeSession>()?;
    m.add_function(wrap_pyfunction!(decode::decode_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(decode::sample_next, m)?)?;
    Ok(())
}
