//! PyO3 glue for [`crate::decode`]: `DecodeModel` (the weights, built once from a state
//! dict of float32 numpy arrays), `DecodeSession` (a key/value cache plus `step`) and
//! `sample_next` ([`crate::sample`]).

use std::collections::HashMap;
use std::sync::Arc;

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::decode::{self, Dims, KvCache, Layer, LayerNorm, Linear, Positions};
use crate::py::{guard, to_py_err};

/// The named float32 arrays of a state dict, copied out of Python.
struct Tensors(HashMap<String, Vec<f32>>);

impl Tensors {
    fn take(&mut self, name: &str) -> PyResult<Vec<f32>> {
        self.0
            .remove(name)
            .ok_or_else(|| PyValueError::new_err(format!("decode: the state dict has no '{name}'")))
    }

    fn norm(&mut self, prefix: &str, width: usize) -> PyResult<LayerNorm> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        let bias = self.0.remove(&format!("{prefix}.bias"));
        LayerNorm::new(prefix, weight, bias, width).map_err(to_py_err)
    }

    fn linear(&mut self, prefix: &str, cols: usize) -> PyResult<Linear> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        let bias = self.0.remove(&format!("{prefix}.bias"));
        let rows = weight.len() / cols.max(1);
        Linear::new(prefix, &weight, rows, cols, bias).map_err(to_py_err)
    }
}

/// A GPT's weights in bfloat16 for decoding on the CPU (see `lmrs.decode`).
#[pyclass(frozen, module = "lmrs._lmrs", name = "DecodeModel")]
pub struct PyDecodeModel(Arc<decode::DecodeModel>);

#[pymethods]
impl PyDecodeModel {
    /// `dims` = (embed_dim, num_heads, kv_heads, head_dim, vocab_size, max_seq_len, num_layers);
    /// `tensors` maps `GPT.state_dict()` names (plus `rope_cos`/`rope_sin` for rotary
    /// positions) to C-contiguous float32 arrays.
    #[new]
    fn new(
        py: Python<'_>,
        dims: (usize, usize, usize, usize, usize, usize, usize),
        tensors: HashMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult<Self> {
        guard("DecodeModel", || Self::build(py, dims, tensors))
    }

    /// An empty key/value cache for `batch` rows of up to `max_len` positions.
    fn session(&self, batch: usize, max_len: usize) -> PyResult<DecodeSession> {
        guard("DecodeModel.session", || {
            let cache = self.0.new_cache(batch, max_len).map_err(to_py_err)?;
            Ok(DecodeSession {
                model: Arc::clone(&self.0),
                cache,
            })
        })
    }
}

impl PyDecodeModel {
    fn build(
        py: Python<'_>,
        dims: (usize, usize, usize, usize, usize, usize, usize),
        tensors: HashMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult<Self> {
        let (embed_dim, num_heads, kv_heads, head_dim, vocab_size, max_seq_len, num_layers) = dims;
        let dims = Dims {
            embed_dim,
            num_heads,
            kv_heads,
            head_dim,
            vocab_size,
            max_seq_len,
        };
        let mut copied = HashMap::with_capacity(tensors.len());
        for (name, array) in &tensors {
            let values = array.as_slice().map_err(|_| {
                PyValueError::new_err(format!("decode: '{name}' is not a contiguous array"))
            })?;
            copied.insert(name.clone(), values.to_vec());
        }
        drop(tensors);
        py.detach(move || -> PyResult<Self> {
            let mut tensors = Tensors(copied);
            let d = embed_dim;
            let mut layers = Vec::with_capacity(num_layers);
            for i in 0..num_layers {
                let p = format!("blocks.{i}");
                let up = tensors.linear(&format!("{p}.ffn.up"), d)?;
                let ff = up.rows();
                layers.push(Layer {
                    ln_attn: tensors.norm(&format!("{p}.ln_attn"), d)?,
                    qkv: tensors.linear(&format!("{p}.attn.qkv"), d)?,
                    out_proj: tensors
                        .linear(&format!("{p}.attn.out_proj"), num_heads * head_dim)?,
                    ln_ffn: tensors.norm(&format!("{p}.ln_ffn"), d)?,
                    up,
                    down: tensors.linear(&format!("{p}.ffn.down"), ff)?,
                });
            }
            let positions = match tensors.0.remove("position_embedding.weight") {
                Some(table) => Positions::Learned(table),
                None => Positions::Rotary {
                    cos: tensors.take("rope_cos")?,
                    sin: tensors.take("rope_sin")?,
                },
            };
            let model = decode::DecodeModel::new(
                dims,
                layers,
                tensors.norm("ln_final", d)?,
                tensors.linear("lm_head", d)?,
                tensors.take("token_embedding.weight")?,
                positions,
            )
            .map_err(to_py_err)?;
            Ok(PyDecodeModel(Arc::new(model)))
        })
    }
}

/// A key/value cache bound to a `DecodeModel`; `step(tokens)` feeds (batch, seq) int64 ids
/// and returns the float32 logits (batch, vocab) of the last position of every row.
#[pyclass(module = "lmrs._lmrs")]
pub struct DecodeSession {
    model: Arc<decode::DecodeModel>,
    cache: KvCache,
}

#[pymethods]
impl DecodeSession {
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        tokens: PyReadonlyArray2<'py, i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guard("DecodeSession.step", || {
            let seq = tokens.shape()[1];
            let ids = tokens
                .as_slice()
                .map_err(|_| PyValueError::new_err("decode: tokens must be a contiguous array"))?
                .to_vec();
            let (model, cache) = (&self.model, &mut self.cache);
            let logits = py
                .detach(|| model.step(cache, &ids, seq))
                .map_err(to_py_err)?;
            let rows = logits.len() / model.dims().vocab_size;
            let flat = PyArray1::from_vec(py, logits);
            Ok(flat.reshape([rows, model.dims().vocab_size])?.into_any())
        })
    }

    fn reset(&mut self) {
        self.cache.reset();
    }

    fn __len__(&self) -> usize {
        self.cache.len()
    }
}

/// The kernels a `DecodeModel` runs here: "avx512bf16", "avx2" or "portable" (the best
/// this CPU has, or the lower one the environment variable `LMRS_CPU` names, read once per
/// process). ValueError where `LMRS_CPU` is not a kernel name or names one this CPU lacks.
#[pyfunction]
pub fn decode_kernel() -> PyResult<&'static str> {
    guard("decode_kernel", || {
        crate::cpu::selected()
            .map(|isa| isa.name())
            .map_err(to_py_err)
    })
}

/// The next token of every row of `logits` (rows, vocab) float32: greedy at temperature 0,
/// else drawn with `uniforms[i]` after top-k (0 = off) and top-p (1 = off); see
/// `lmrs.generate._pick_next`.
#[pyfunction]
pub fn sample_next<'py>(
    py: Python<'py>,
    logits: PyReadonlyArray2<'py, f32>,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    uniforms: PyReadonlyArray1<'py, f32>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    guard("sample_next", || {
        pick_next(py, logits, temperature, top_k, top_p, uniforms)
    })
}

fn pick_next<'py>(
    py: Python<'py>,
    logits: PyReadonlyArray2<'py, f32>,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    uniforms: PyReadonlyArray1<'py, f32>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let vocab = logits.shape()[1];
    let rule = crate::sample::SamplingRule {
        temperature,
        top_k,
        top_p,
    };
    let logits = logits
        .as_slice()
        .map_err(|_| PyValueError::new_err("sampling: logits must be a contiguous array"))?;
    let uniforms = uniforms
        .as_slice()
        .map_err(|_| PyValueError::new_err("sampling: uniforms must be a contiguous array"))?;
    let tokens = crate::sample::pick(logits, vocab, &rule, uniforms).map_err(to_py_err)?;
    Ok(tokens.into_pyarray(py))
}
