//! PyO3 glue for [`crate::decode::model`]: `DecodeModel` (the weights, built once from an engine
//! spec, `lmrs.engine_spec.EngineSpec`), `DecodeSession` (a key/value cache plus `step`)
//! and `sample_next` ([`crate::decode::sample`]).
//!
//! The spec is read by field name, and its tensors by the engine-neutral names the spec
//! defines (`embed.tokens`, `layers.{i}.attn.qkv.weight`, ...); the names of the Python
//! model's parameters appear only in `lmrs.engine_spec`.

use std::collections::HashMap;
use std::sync::Arc;

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::decode::kernels::cpu::{Isa, Kernel};
use crate::decode::model::{
    Activation, DecodeModel, Dims, KvCache, Layer, Linear, Norm, NormKind, Options, Positions,
};
use crate::py::errors::{guard, to_py_err};

/// The fields of `lmrs.engine_spec.EngineSpec` this engine reads (by attribute name).
#[derive(FromPyObject)]
struct Spec<'py> {
    embed_dim: usize,
    num_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab_size: usize,
    max_seq_len: usize,
    num_layers: usize,
    position: String,
    norm: String,
    norm_eps: f32,
    norm_scale: bool,
    qk_norm: bool,
    qk_norm_eps: f32,
    mlp: String,
    bias: bool,
    tied_head: bool,
    logit_softcap: Option<f32>,
    tensors: HashMap<String, PyReadonlyArrayDyn<'py, f32>>,
}

/// The spec without its Python references, so the build can run without the GIL.
struct Plain {
    dims: Dims,
    num_layers: usize,
    rotary: bool,
    norm: NormKind,
    norm_eps: f32,
    norm_scale: bool,
    options: Options,
    bias: bool,
    tied_head: bool,
}

fn invalid(message: String) -> PyErr {
    PyValueError::new_err(format!("decode: {message}"))
}

impl Plain {
    fn new(spec: &Spec<'_>) -> PyResult<Self> {
        let rotary = match spec.position.as_str() {
            "learned" => false,
            "rope" => true,
            other => return Err(invalid(format!("unknown position kind {other:?}"))),
        };
        let norm = match spec.norm.as_str() {
            "layernorm" => NormKind::Layer,
            "rmsnorm" => NormKind::Rms,
            other => return Err(invalid(format!("unknown norm {other:?}"))),
        };
        let activation = match spec.mlp.as_str() {
            "gelu" => Activation::GeluTanh,
            "relu2" => Activation::Relu2,
            "swiglu" => Activation::SwiGlu,
            other => return Err(invalid(format!("unknown mlp {other:?}"))),
        };
        Ok(Plain {
            dims: Dims {
                embed_dim: spec.embed_dim,
                num_heads: spec.num_heads,
                kv_heads: spec.kv_heads,
                head_dim: spec.head_dim,
                vocab_size: spec.vocab_size,
                max_seq_len: spec.max_seq_len,
            },
            num_layers: spec.num_layers,
            rotary,
            norm,
            norm_eps: spec.norm_eps,
            norm_scale: spec.norm_scale,
            options: Options {
                activation,
                qk_norm_eps: spec.qk_norm.then_some(spec.qk_norm_eps),
                logit_softcap: spec.logit_softcap,
            },
            bias: spec.bias,
            tied_head: spec.tied_head,
        })
    }
}

/// The spec's named float32 tensors, copied out of Python; each is taken once, and any
/// left over at the end is an error (a tensor the engine would silently ignore).
struct Tensors(HashMap<String, Vec<f32>>);

impl Tensors {
    fn take(&mut self, name: &str) -> PyResult<Vec<f32>> {
        self.0
            .remove(name)
            .ok_or_else(|| invalid(format!("the engine spec has no tensor '{name}'")))
    }

    fn take_if(&mut self, present: bool, name: &str) -> PyResult<Option<Vec<f32>>> {
        present.then(|| self.take(name)).transpose()
    }

    fn norm(&mut self, plain: &Plain, prefix: &str) -> PyResult<Norm> {
        let weight = self.take_if(plain.norm_scale, &format!("{prefix}.weight"))?;
        // RMSNorm has no bias; LayerNorm's follows the linear layers'
        let has_bias = plain.bias && plain.norm == NormKind::Layer;
        let bias = self.take_if(has_bias, &format!("{prefix}.bias"))?;
        let width = plain.dims.embed_dim;
        Norm::new(prefix, plain.norm, width, plain.norm_eps, weight, bias).map_err(to_py_err)
    }

    fn linear(&mut self, plain: &Plain, prefix: &str, cols: usize) -> PyResult<Linear> {
        let weight = self.take(&format!("{prefix}.weight"))?;
        let bias = self.take_if(plain.bias, &format!("{prefix}.bias"))?;
        let rows = weight.len() / cols.max(1);
        Linear::new(prefix, &weight, rows, cols, bias).map_err(to_py_err)
    }

    /// SwiGLU's gate and up matrices stacked (gate rows first): one matrix product.
    fn gate_up(&mut self, plain: &Plain, prefix: &str, cols: usize) -> PyResult<Linear> {
        let mut weight = self.take(&format!("{prefix}.gate.weight"))?;
        weight.extend(self.take(&format!("{prefix}.up.weight"))?);
        let bias = match self.take_if(plain.bias, &format!("{prefix}.gate.bias"))? {
            Some(mut gate) => {
                gate.extend(self.take(&format!("{prefix}.up.bias"))?);
                Some(gate)
            }
            None => None,
        };
        let rows = weight.len() / cols.max(1);
        Linear::new(&format!("{prefix}.gate+up"), &weight, rows, cols, bias).map_err(to_py_err)
    }

    fn finish(self) -> PyResult<()> {
        let mut left: Vec<&String> = self.0.keys().collect();
        left.sort();
        match left.first() {
            None => Ok(()),
            Some(name) => Err(invalid(format!(
                "the engine spec has tensor '{name}', which this engine does not use"
            ))),
        }
    }
}

/// A GPT's weights in bfloat16 for decoding on the CPU (see `lmrs.decode`).
#[pyclass(frozen, module = "lmrs._lmrs", name = "DecodeModel")]
pub struct PyDecodeModel(Arc<DecodeModel>);

#[pymethods]
impl PyDecodeModel {
    /// `spec` is an `lmrs.engine_spec.EngineSpec` (any object with its fields); its tensors
    /// are C-contiguous float32 arrays. `kernel` ("portable", "avx2", "avx512bf16") runs
    /// this model with that kernel instead of `decode_kernel()`'s (a ValueError where the
    /// CPU lacks it): tests compare the kernels in one process.
    #[new]
    #[pyo3(signature = (spec, kernel=None))]
    fn new(py: Python<'_>, spec: Spec<'_>, kernel: Option<&str>) -> PyResult<Self> {
        guard("DecodeModel", || Self::build(py, spec, kernel))
    }

    /// The kernel this model runs: "avx512bf16", "avx2" or "portable".
    #[getter]
    fn kernel(&self) -> &'static str {
        self.0.kernel().name()
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

fn isa_named(name: &str) -> PyResult<Isa> {
    let kernel = Kernel::from_name(name).ok_or_else(|| {
        invalid(format!(
            "{name:?} is not a CPU kernel (portable, avx2, avx512bf16)"
        ))
    })?;
    Isa::get(kernel).ok_or_else(|| invalid(format!("this CPU lacks the {name} kernel")))
}

impl PyDecodeModel {
    fn build(py: Python<'_>, spec: Spec<'_>, kernel: Option<&str>) -> PyResult<Self> {
        let isa = kernel.map(isa_named).transpose()?;
        let plain = Plain::new(&spec)?;
        let mut copied = HashMap::with_capacity(spec.tensors.len());
        for (name, array) in &spec.tensors {
            let values = array
                .as_slice()
                .map_err(|_| invalid(format!("'{name}' is not a contiguous array")))?;
            copied.insert(name.clone(), values.to_vec());
        }
        drop(spec);
        py.detach(move || -> PyResult<Self> {
            let mut tensors = Tensors(copied);
            let p = &plain;
            let (d, q_width) = (p.dims.embed_dim, p.dims.num_heads * p.dims.head_dim);
            let mut layers = Vec::with_capacity(p.num_layers);
            for i in 0..p.num_layers {
                let l = format!("layers.{i}");
                let up = match p.options.activation {
                    Activation::SwiGlu => tensors.gate_up(p, &format!("{l}.mlp"), d)?,
                    _ => tensors.linear(p, &format!("{l}.mlp.up"), d)?,
                };
                let hidden = match p.options.activation {
                    Activation::SwiGlu => up.rows() / 2,
                    _ => up.rows(),
                };
                layers.push(Layer {
                    attn_norm: tensors.norm(p, &format!("{l}.attn_norm"))?,
                    qkv: tensors.linear(p, &format!("{l}.attn.qkv"), d)?,
                    out_proj: tensors.linear(p, &format!("{l}.attn.out"), q_width)?,
                    mlp_norm: tensors.norm(p, &format!("{l}.mlp_norm"))?,
                    up,
                    down: tensors.linear(p, &format!("{l}.mlp.down"), hidden)?,
                });
            }
            let positions = if p.rotary {
                Positions::Rotary {
                    cos: tensors.take("rope.cos")?,
                    sin: tensors.take("rope.sin")?,
                }
            } else {
                Positions::Learned(tensors.take("embed.positions")?)
            };
            let final_norm = tensors.norm(p, "final_norm")?;
            let token_embedding = tensors.take("embed.tokens")?;
            let head = if p.tied_head {
                let vocab = token_embedding.len() / d.max(1);
                Linear::new("embed.tokens", &token_embedding, vocab, d, None)
            } else {
                let weight = tensors.take("head.weight")?;
                Linear::new("head", &weight, weight.len() / d.max(1), d, None)
            }
            .map_err(to_py_err)?;
            tensors.finish()?;
            let model = DecodeModel::new(
                p.dims,
                p.options,
                layers,
                final_norm,
                head,
                token_embedding,
                positions,
            )
            .map_err(to_py_err)?;
            let model = match isa {
                Some(isa) => model.with_kernel(isa),
                None => model,
            };
            Ok(PyDecodeModel(Arc::new(model)))
        })
    }
}

/// A key/value cache bound to a `DecodeModel`; `step(tokens)` feeds (batch, seq) int64 ids
/// and returns the float32 logits (batch, vocab) of the last position of every row.
#[pyclass(module = "lmrs._lmrs")]
pub struct DecodeSession {
    model: Arc<DecodeModel>,
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
        crate::decode::kernels::cpu::selected()
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
    let rule = crate::decode::sample::SamplingRule {
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
    let tokens = crate::decode::sample::pick(logits, vocab, &rule, uniforms).map_err(to_py_err)?;
    Ok(tokens.into_pyarray(py))
}
