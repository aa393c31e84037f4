//! Arrow arrays from Python through the Arrow PyCapsule interface: `lmrs.arrow_rows`
//! passes `array.__arrow_c_array__()`, a pair of capsules holding the C Data Interface
//! structs, and Rust reads the array's buffers where pyarrow keeps them (no copy).

use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::py::errors::to_py_err;
use crate::tokens::arrow_texts::{c_array_bytes, ArrowBuffers, FfiArrowArray, FfiArrowSchema};

/// The arrays a Python batch holds: (schema, array) capsule pairs.
pub(crate) type CapsulePairs<'py> = Vec<(Bound<'py, PyCapsule>, Bound<'py, PyCapsule>)>;

/// The `(values, offsets, wide)` of each array of `pairs`, as
/// [`crate::tokens::arrow_texts::arrow_texts_of`] takes them.
pub(crate) fn arrow_buffers_of<'a>(pairs: &'a CapsulePairs<'_>) -> PyResult<Vec<ArrowBuffers<'a>>> {
    pairs
        .iter()
        .map(|(schema, array)| arrow_buffers(schema, array))
        .collect()
}

/// The `(values, offsets, wide)` of the string or binary array the capsules export,
/// borrowed for as long as the capsules are.
pub(crate) fn arrow_buffers<'a>(
    schema: &'a Bound<'_, PyCapsule>,
    array: &'a Bound<'_, PyCapsule>,
) -> PyResult<ArrowBuffers<'a>> {
    let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?;
    let array_ptr = array.pointer_checked(Some(c"arrow_array"))?;
    // SAFETY: capsules named "arrow_schema" / "arrow_array" hold live C Data Interface
    // structs (the PyCapsule interface's contract), released only by the capsules'
    // destructors: they stay alive while the caller holds the capsules, which the
    // returned lifetime ties them to; the exporter never changes them.
    unsafe {
        c_array_bytes(
            schema_ptr.cast::<FfiArrowSchema>().as_ref(),
            array_ptr.cast::<FfiArrowArray>().as_ref(),
        )
    }
    .map_err(to_py_err)
}
