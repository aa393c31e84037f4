//! PyO3 glue for [`crate::tokens`]: `lmrs._lmrs.TokenStream` ([`crate::tokens::token_stream`]),
//! fed batches of texts by `lmrs.records` (the GIL is released while a batch is encoded and
//! written), and the token-file functions `build_manifest`, `part_range` and
//! `head_tail_sha256`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedStr;

use crate::bpe::encode::Encoder;
use crate::py::arrow::{arrow_buffers_of, CapsulePairs};
use crate::py::errors::{guard, to_py_err};
use crate::py::tokenizer::CoreTokenizer;
use crate::tokens::arrow_texts::arrow_texts_of;
use crate::tokens::token_file::{self, TokenFileOptions};
use crate::tokens::token_stream::TokenStream;

#[pyclass(module = "lmrs._lmrs", name = "TokenStream")]
pub(crate) struct PyTokenStream {
    encoder: Arc<Encoder>,
    stream: TokenStream,
}

#[pymethods]
impl PyTokenStream {
    /// A token file at `out` (a shard directory with `shard_tokens`; part `part_index`'s
    /// shards in the shared directory `out` with `num_parts > 1`), written by
    /// `write(texts)` calls and committed by `finish()`.
    #[new]
    #[pyo3(signature = (tokenizer, out, shard_tokens=None, num_parts=1, part_index=0))]
    fn new(
        tokenizer: PyRef<'_, CoreTokenizer>,
        out: PathBuf,
        shard_tokens: Option<u64>,
        num_parts: usize,
        part_index: usize,
    ) -> PyResult<Self> {
        guard("TokenStream", || {
            let encoder = Arc::clone(&tokenizer.encoder);
            let options = TokenFileOptions {
                shard_tokens,
                num_parts,
                part_index,
            };
            let stream = TokenStream::create(&encoder, &out, &options).map_err(to_py_err)?;
            Ok(Self { encoder, stream })
        })
    }

    /// Appends the texts (one document each, each followed by `eot_id`); returns the
    /// UTF-8 bytes written.
    fn write(&mut self, py: Python<'_>, texts: Vec<PyBackedStr>) -> PyResult<u64> {
        guard("TokenStream.write", || {
            let (encoder, stream) = (&self.encoder, &mut self.stream);
            py.detach(|| stream.write(encoder, &texts))
                .map_err(to_py_err)
        })
    }

    /// Appends the rows of Arrow string/binary arrays without nulls, in order, encoded
    /// as one batch: each array given as the (schema, array) capsules of its
    /// `__arrow_c_array__()` (read in place, see `crate::py::arrow`). Returns (UTF-8 bytes
    /// written, indices of the rows skipped as invalid UTF-8, counted across the arrays).
    fn write_arrow(
        &mut self,
        py: Python<'_>,
        arrays: CapsulePairs<'_>,
    ) -> PyResult<(u64, Vec<usize>)> {
        guard("TokenStream.write_arrow", || {
            let buffers = arrow_buffers_of(&arrays)?;
            let (encoder, stream) = (&self.encoder, &mut self.stream);
            py.detach(|| {
                let rows = arrow_texts_of(&buffers)?;
                Ok((stream.write(encoder, &rows.texts)?, rows.invalid))
            })
            .map_err(to_py_err)
        })
    }

    /// Commits the file(s); returns the sidecar or manifest JSON.
    fn finish(&mut self, py: Python<'_>) -> PyResult<String> {
        guard("TokenStream.finish", || {
            let stream = &mut self.stream;
            let written = py.detach(|| stream.finish()).map_err(to_py_err)?;
            Ok(written.to_json())
        })
    }

    /// Removes what was written (nothing appears at `out`).
    fn abandon(&mut self) {
        self.stream.abandon();
    }
}

/// Rewrites `DIR/manifest.json` from the shards present; returns it as JSON.
#[pyfunction]
pub(crate) fn build_manifest(py: Python<'_>, dir: PathBuf) -> PyResult<String> {
    guard("Tokenizer.build_manifest", || {
        let manifest = py
            .detach(|| token_file::build_manifest(&dir))
            .map_err(to_py_err)?;
        Ok(token_file::Written::Shards(manifest).to_json())
    })
}

/// The documents of part `part_index` of `num_parts` as (start, end): contiguous, about
/// the same bytes each (the split `encode_files` uses; `lmrs.records` uses it for record
/// batches and rows).
#[pyfunction]
pub(crate) fn part_range(
    sizes: Vec<u64>,
    num_parts: usize,
    part_index: usize,
) -> PyResult<(usize, usize)> {
    guard("part_range", || {
        token_file::check_part(num_parts, part_index).map_err(to_py_err)?;
        let range = token_file::part_range(&sizes, num_parts, part_index);
        Ok((range.start, range.end))
    })
}

/// (size in bytes, checksum) of a token file as its sidecar records them: the one
/// definition of `head_tail_sha256`, shared with `lmrs.data`.
#[pyfunction]
pub(crate) fn head_tail_sha256(py: Python<'_>, path: PathBuf) -> PyResult<(u64, String)> {
    guard("head_tail_sha256", || {
        py.detach(|| token_file::head_tail_sha256(&path))
            .map_err(to_py_err)
    })
}
