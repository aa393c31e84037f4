//! PyO3 glue only: argument conversion, GIL release, errors → exceptions.

use pyo3::prelude::*;

#[pymodule]
fn _lmrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("GPT4_PATTERN", crate::pretokenize::GPT4_PATTERN)?;
    Ok(())
}
