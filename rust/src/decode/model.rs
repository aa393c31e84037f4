//! A GPT's forward pass for decoding on the CPU: a few new tokens per row, with a key/value
//! cache, weights in bfloat16.
//!
//! The same network as `lmrs.model.GPT`, built from its engine spec (`lmrs.engine_spec`,
//! read by `py/decode.rs`): pre-norm blocks (LayerNorm or RMSNorm, with or without a
//! scale), causal attention with grouped key/value heads (optionally RMS-normalised
//! queries and keys), a feed-forward of tanh-GELU, ReLU² or SwiGLU, learned or rotary
//! positions, a final norm and a language-model head (optionally soft-capped logits).
//! Written for the decoding workload, where eager PyTorch spends more time dispatching
//! ~150 small operations per token than computing them: here a whole step is one call, the
//! matrix products are [`bf16::matmul`] (the only part with a kernel per CPU), and
//! everything between them (norms, attention over the cache, activations, residual adds)
//! is a short loop shared by every kernel.
//!
//! Numerics: weights, matrix-product inputs and the key/value cache in bfloat16 (the
//! cache is read whole at every step: at batch 16 it is as many bytes as the weights);
//! sums and everything else (residual stream, softmax) in float32.

use rayon::prelude::*;

use crate::decode::kernels::bf16;
use crate::decode::kernels::cpu::{self, Isa};
use crate::{Error, Result};

/// The shape of the network.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub embed_dim: usize,
    pub num_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_seq_len: usize,
}

impl Dims {
    fn q_width(&self) -> usize {
        self.num_heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn check(&self) -> Result<()> {
        let positive = [
            self.embed_dim,
            self.num_heads,
            self.kv_heads,
            self.head_dim,
            self.vocab_size,
            self.max_seq_len,
        ];
        if positive.contains(&0) {
            return Err(Error::Invalid(format!(
                "decode: every dimension must be > 0, got {self:?}"
            )));
        }
        if !self.num_heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Invalid(format!(
                "decode: num_heads ({}) is not a multiple of kv_heads ({})",
                self.num_heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

fn check_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "decode: {name} has {got} values, expected {want}"
        )))
    }
}

/// `y = x · Wᵀ + b` with W (rows × cols) stored in bfloat16.
pub struct Linear {
    weight: bf16::PackedMatrix,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// `weight` is row-major (rows, cols) in f32, rounded here to bfloat16.
    pub fn new(
        name: &str,
        weight: &[f32],
        rows: usize,
        cols: usize,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        check_len(&format!("{name}.weight"), weight.len(), rows * cols)?;
        if let Some(bias) = &bias {
            check_len(&format!("{name}.bias"), bias.len(), rows)?;
        }
        let weight = bf16::PackedMatrix::pack(weight, rows, cols);
        Ok(Linear { weight, bias })
    }

    pub fn rows(&self) -> usize {
        self.weight.rows()
    }

    pub fn cols(&self) -> usize {
        self.weight.cols()
    }

    /// `out` (m × rows) = x (m × cols, bfloat16) · Wᵀ + b.
    fn forward(&self, isa: Isa, x: &[u16], m: usize, out: &mut Vec<f32>) {
        out.resize(m * self.rows(), 0.0);
        bf16::matmul(isa, x, m, &self.weight, self.bias.as_deref(), out);
    }
}

/// How a [`Norm`] normalises a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps)`
    Layer,
    /// `x / sqrt(mean(x²) + eps)`
    Rms,
}

/// A LayerNorm or RMSNorm over rows of `width`, with an optional scale and bias.
pub struct Norm {
    kind: NormKind,
    width: usize,
    eps: f32,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl Norm {
    pub fn new(
        name: &str,
        kind: NormKind,
        width: usize,
        eps: f32,
        weight: Option<Vec<f32>>,
        bias: Option<Vec<f32>>,
    ) -> Result<Self> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::Invalid(format!(
                "decode: {name} epsilon must be finite and > 0, got {eps}"
            )));
        }
        if let Some(weight) = &weight {
            check_len(&format!("{name}.weight"), weight.len(), width)?;
        }
        if let Some(bias) = &bias {
            check_len(&format!("{name}.bias"), bias.len(), width)?;
        }
        Ok(Norm {
            kind,
            width,
            eps,
            weight,
            bias,
        })
    }

    /// `1 / sqrt(variance + eps)` (LayerNorm, after subtracting `mean`) or
    /// `1 / sqrt(mean square + eps)` (RMSNorm, `mean` is 0) of one row.
    #[inline]
    fn statistics(kind: NormKind, row: &[f32], eps: f32) -> (f32, f32) {
        let width = row.len() as f32;
        let mean = match kind {
            NormKind::Layer => row.iter().sum::<f32>() / width,
            NormKind::Rms => 0.0,
        };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width;
        (mean, 1.0 / (var + eps).sqrt())
    }

    /// Each row of `x` normalised, rounded to bfloat16: the input of the next matrix product.
    fn forward_bf16(&self, x: &[f32], out: &mut Vec<u16>) {
        let width = self.width;
        out.clear();
        out.resize(x.len(), 0);
        map_rows(x, width, out, width, |row, out| {
            let (mean, inv_std) = Self::statistics(self.kind, row, self.eps);
            for (i, (&v, out)) in row.iter().zip(out.iter_mut()).enumerate() {
                let scale = self.weight.as_ref().map_or(1.0, |w| w[i]);
                let bias = self.bias.as_ref().map_or(0.0, |b| b[i]);
                *out = bf16::to_bf16((v - mean) * inv_std * scale + bias);
            }
        });
    }
}

/// Parameter-free RMSNorm of every `width` values of `x`, in place (QK-norm: each head of
/// the queries and keys).
fn rms_norm_in_place(x: &mut [f32], width: usize, eps: f32) {
    for head in x.chunks_exact_mut(width) {
        let (_, inv) = Norm::statistics(NormKind::Rms, head, eps);
        head.iter_mut().for_each(|v| *v *= inv);
    }
}

/// The feed-forward's non-linearity between `up` and `down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// GELU, tanh approximation
    GeluTanh,
    /// relu(x)²
    Relu2,
    /// silu(gate) · up: the `up` matrix holds the gate's rows first, then the up rows, so
    /// both come out of one matrix product
    SwiGlu,
}

impl Activation {
    /// The hidden width (the input width of `down`) for an `up` matrix of `rows` rows.
    fn hidden(self, rows: usize) -> usize {
        match self {
            Activation::SwiGlu => rows / 2,
            _ => rows,
        }
    }

    /// `out` (rows × hidden, bfloat16) from `up`'s output (rows × up rows).
    fn forward_bf16(self, up: &[f32], up_rows: usize, out: &mut Vec<u16>) {
        match self {
            Activation::GeluTanh => to_bf16_rows(up, up_rows, out, gelu_tanh),
            Activation::Relu2 => to_bf16_rows(up, up_rows, out, |v| {
                let r = v.max(0.0);
                r * r
            }),
            Activation::SwiGlu => {
                let hidden = up_rows / 2;
                out.clear();
                out.resize(up.len() / 2, 0);
                map_rows(up, up_rows, out, hidden, |row, out| {
                    let (gate, up) = row.split_at(hidden);
                    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                        *o = bf16::to_bf16(silu(g) * u);
                    }
                });
            }
        }
    }
}

pub struct Layer {
    pub attn_norm: Norm,
    pub qkv: Linear,
    pub out_proj: Linear,
    pub mlp_norm: Norm,
    /// (hidden, embed), or (2 · hidden, embed) for SwiGLU: gate rows, then up rows
    pub up: Linear,
    pub down: Linear,
}

/// What the blocks share beyond the shapes.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub activation: Activation,
    /// RMS-normalise each query and key head (no scale) with this epsilon, before rotary
    /// positions
    pub qk_norm_eps: Option<f32>,
    /// logits = cap · tanh(logits / cap)
    pub logit_softcap: Option<f32>,
}

pub enum Positions {
    /// (max_seq_len, embed_dim) added to the token embeddings
    Learned(Vec<f32>),
    /// cos and sin tables (max_seq_len, head_dim), rotate-half layout, applied to q and k
    Rotary { cos: Vec<f32>, sin: Vec<f32> },
}

pub struct DecodeModel {
    dims: Dims,
    options: Options,
    layers: Vec<Layer>,
    final_norm: Norm,
    head: Linear,
    token_embedding: Vec<f32>,
    positions: Positions,
    /// the kernels of the matrix products and of attention
    isa: Isa,
}

/// Keys and values of every layer for `batch` rows of up to `max_len` positions.
pub struct KvCache {
    batch: usize,
    max_len: usize,
    len: usize,
    /// per layer: (batch, kv_heads, head_dim, max_len), transposed so that the scores of
    /// one query against every position are 16-wide multiply-adds along a row
    keys: Vec<Vec<u16>>,
    /// per layer: (batch, kv_heads, max_len, head_dim)
    values: Vec<Vec<u16>>,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn reset(&mut self) {
        self.len = 0;
    }
}

impl DecodeModel {
    /// The model, run with the kernels [`cpu::selected`] picks (an error where `LMRS_CPU`
    /// asks for one this CPU lacks).
    pub fn new(
        dims: Dims,
        options: Options,
        layers: Vec<Layer>,
        final_norm: Norm,
        head: Linear,
        token_embedding: Vec<f32>,
        positions: Positions,
    ) -> Result<Self> {
        let isa = cpu::selected()?;
        dims.check()?;
        if let Some(eps) = options.qk_norm_eps {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(Error::Invalid(format!(
                    "decode: QK-norm epsilon must be finite and > 0, got {eps}"
                )));
            }
        }
        if let Some(cap) = options.logit_softcap {
            if !(cap.is_finite() && cap > 0.0) {
                return Err(Error::Invalid(format!(
                    "decode: logit soft-cap must be finite and > 0, got {cap}"
                )));
            }
        }
        let d = dims.embed_dim;
        check_len(
            "token_embedding",
            token_embedding.len(),
            dims.vocab_size * d,
        )?;
        match &positions {
            Positions::Learned(table) => {
                check_len("position_embedding", table.len(), dims.max_seq_len * d)?
            }
            Positions::Rotary { cos, sin } => {
                if !dims.head_dim.is_multiple_of(2) {
                    return Err(Error::Invalid(format!(
                        "decode: rotary positions need an even head_dim, got {}",
                        dims.head_dim
                    )));
                }
                check_len("rope_cos", cos.len(), dims.max_seq_len * dims.head_dim)?;
                check_len("rope_sin", sin.len(), dims.max_seq_len * dims.head_dim)?;
            }
        }
        let shape = |name: String, linear: &Linear, rows: usize, cols: usize| {
            if (linear.rows(), linear.cols()) == (rows, cols) {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "decode: {name} is {}x{}, expected {rows}x{cols}",
                    linear.rows(),
                    linear.cols()
                )))
            }
        };
        for (i, layer) in layers.iter().enumerate() {
            let qkv_rows = dims.q_width() + 2 * dims.kv_width();
            shape(format!("layer {i} qkv"), &layer.qkv, qkv_rows, d)?;
            shape(
                format!("layer {i} out_proj"),
                &layer.out_proj,
                d,
                dims.q_width(),
            )?;
            let up_rows = layer.up.rows();
            let ff = options.activation.hidden(up_rows);
            if options.activation == Activation::SwiGlu && !up_rows.is_multiple_of(2) {
                return Err(Error::Invalid(format!(
                    "decode: layer {i} SwiGLU gate+up has an odd number of rows ({up_rows})"
                )));
            }
            shape(format!("layer {i} up"), &layer.up, up_rows, d)?;
            shape(format!("layer {i} down"), &layer.down, d, ff)?;
            for (name, norm) in [
                ("attn_norm", &layer.attn_norm),
                ("mlp_norm", &layer.mlp_norm),
            ] {
                check_len(&format!("layer {i} {name}"), norm.width, d)?;
            }
        }
        check_len("final_norm", final_norm.width, d)?;
        shape("head".into(), &head, dims.vocab_size, d)?;
        Ok(DecodeModel {
            dims,
            options,
            layers,
            final_norm,
            head,
            token_embedding,
            positions,
            isa,
        })
    }

    /// The same model run with the kernels of `isa` (tests compare them in one process).
    pub fn with_kernel(mut self, isa: Isa) -> Self {
        self.isa = isa;
        self
    }

    pub fn kernel(&self) -> Isa {
        self.isa
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// An empty cache for `batch` rows of up to `max_len` positions (≤ max_seq_len).
    pub fn new_cache(&self, batch: usize, max_len: usize) -> Result<KvCache> {
        if batch == 0 || max_len == 0 || max_len > self.dims.max_seq_len {
            return Err(Error::Invalid(format!(
                "decode: cache needs batch >= 1 and max_len in [1, {}], got batch {batch}, \
                 max_len {max_len}",
                self.dims.max_seq_len
            )));
        }
        let size = batch * self.dims.kv_width() * max_len;
        Ok(KvCache {
            batch,
            max_len,
            len: 0,
            keys: self.layers.iter().map(|_| vec![0; size]).collect(),
            values: self.layers.iter().map(|_| vec![0; size]).collect(),
        })
    }

    /// Feeds the next `seq` tokens of every row (`tokens` is (batch, seq), row-major),
    /// stores their keys and values, and returns the logits (batch, vocab) of the last one.
    pub fn step(&self, cache: &mut KvCache, tokens: &[i64], seq: usize) -> Result<Vec<f32>> {
        // Run the whole step on a pool thread: the ~30 parallel loops inside are then split
        // by work stealing, instead of each one waking the pool from outside and putting
        // the caller to sleep until it is done (measured: a third of a batch-1 step).
        rayon::scope(|_| self.step_on_pool(cache, tokens, seq))
    }

    fn step_on_pool(&self, cache: &mut KvCache, tokens: &[i64], seq: usize) -> Result<Vec<f32>> {
        let dims = self.dims;
        let (batch, d) = (cache.batch, dims.embed_dim);
        if seq == 0 || tokens.len() != batch * seq {
            return Err(Error::Invalid(format!(
                "decode: expected {batch} rows of at least one token, got {} tokens for seq {seq}",
                tokens.len()
            )));
        }
        let start = cache.len;
        if start + seq > cache.max_len {
            return Err(Error::Invalid(format!(
                "decode: sequence of {} tokens is longer than the cache ({})",
                start + seq,
                cache.max_len
            )));
        }
        let rows = batch * seq;
        let mut x = Vec::with_capacity(rows * d);
        for (r, &token) in tokens.iter().enumerate() {
            let id = usize::try_from(token)
                .ok()
                .filter(|&id| id < dims.vocab_size)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "decode: token {token} is outside the vocabulary [0, {})",
                        dims.vocab_size
                    ))
                })?;
            let embedding = &self.token_embedding[id * d..(id + 1) * d];
            match &self.positions {
                Positions::Learned(table) => {
                    let pos = start + r % seq;
                    let position = &table[pos * d..(pos + 1) * d];
                    x.extend(embedding.iter().zip(position).map(|(a, b)| a + b));
                }
                Positions::Rotary { .. } => x.extend_from_slice(embedding),
            }
        }

        let mut normed: Vec<u16> = Vec::with_capacity(rows * d);
        let mut buffer = Vec::new(); // matrix-product outputs
        let mut attended = Vec::new();
        let mut attended_bf16 = Vec::new();
        let mut hidden = Vec::new();
        let isa = self.isa;
        for (index, layer) in self.layers.iter().enumerate() {
            layer.attn_norm.forward_bf16(&x, &mut normed);
            layer.qkv.forward(isa, &normed, rows, &mut buffer);
            self.normalise_queries_keys(&mut buffer);
            self.rotate(&mut buffer, batch, seq, start);
            self.store_keys_values(cache, index, &buffer, batch, seq, start);
            self.attend(cache, index, &buffer, batch, seq, start, &mut attended);
            to_bf16_rows(&attended, dims.q_width(), &mut attended_bf16, |v| v);
            layer
                .out_proj
                .forward(isa, &attended_bf16, rows, &mut buffer);
            add_into(&mut x, &buffer);

            layer.mlp_norm.forward_bf16(&x, &mut normed);
            layer.up.forward(isa, &normed, rows, &mut buffer);
            let activation = self.options.activation;
            activation.forward_bf16(&buffer, layer.up.rows(), &mut hidden);
            layer.down.forward(isa, &hidden, rows, &mut buffer);
            add_into(&mut x, &buffer);
        }
        cache.len = start + seq;

        let last: Vec<f32> = x
            .chunks_exact(seq * d)
            .flat_map(|row| row[(seq - 1) * d..].iter().copied())
            .collect();
        self.final_norm.forward_bf16(&last, &mut normed);
        let mut logits = Vec::new();
        self.head.forward(isa, &normed, batch, &mut logits);
        if let Some(cap) = self.options.logit_softcap {
            let inv = 1.0 / cap;
            logits
                .iter_mut()
                .for_each(|v| *v = cap * tanh_rational(*v * inv));
        }
        Ok(logits)
    }

    /// QK-norm, in place on `qkv` (rows × qkv width): every query and key head divided by
    /// its root mean square; the values are left alone.
    fn normalise_queries_keys(&self, qkv: &mut [f32]) {
        let Some(eps) = self.options.qk_norm_eps else {
            return;
        };
        let dims = self.dims;
        let width = dims.q_width() + 2 * dims.kv_width();
        let normed = dims.q_width() + dims.kv_width(); // queries, then keys
        for row in qkv.chunks_exact_mut(width) {
            rms_norm_in_place(&mut row[..normed], dims.head_dim, eps);
        }
    }

    /// Rotary positions applied in place to the queries and keys of `qkv` (rows × qkv width).
    fn rotate(&self, qkv: &mut [f32], batch: usize, seq: usize, start: usize) {
        let Positions::Rotary { cos, sin } = &self.positions else {
            return;
        };
        let dims = self.dims;
        let (hd, half) = (dims.head_dim, dims.head_dim / 2);
        let width = dims.q_width() + 2 * dims.kv_width();
        let rotated_heads = dims.num_heads + dims.kv_heads; // queries, then keys
        for (r, row) in qkv.chunks_exact_mut(width).enumerate().take(batch * seq) {
            let pos = start + r % seq;
            let (cos, sin) = (
                &cos[pos * hd..(pos + 1) * hd],
                &sin[pos * hd..(pos + 1) * hd],
            );
            for head in row[..rotated_heads * hd].chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    // x·cos + rotate_half(x)·sin, rotate_half(x) = (-x2, x1)
                    head[i] = a * cos[i] - b * sin[i];
                    head[i + half] = b * cos[i + half] + a * sin[i + half];
                }
            }
        }
    }

    fn store_keys_values(
        &self,
        cache: &mut KvCache,
        layer: usize,
        qkv: &[f32],
        batch: usize,
        seq: usize,
        start: usize,
    ) {
        let dims = self.dims;
        let (hd, q_width, kv_width) = (dims.head_dim, dims.q_width(), dims.kv_width());
        let width = q_width + 2 * kv_width;
        let (max_len, kv_heads) = (cache.max_len, dims.kv_heads);
        // one (row, key/value head) of the cache at a time: disjoint, so in parallel
        let store = |task: usize, (keys, values): (&mut [u16], &mut [u16])| {
            let (b, h) = (task / kv_heads, task % kv_heads);
            for t in 0..seq {
                let (row, pos) = (&qkv[(b * seq + t) * width..][..width], start + t);
                let key = &row[q_width + h * hd..][..hd];
                for (d, &k) in key.iter().enumerate() {
                    keys[d * max_len + pos] = bf16::to_bf16(k);
                }
                let value = &row[q_width + kv_width + h * hd..][..hd];
                let cached = &mut values[pos * hd..(pos + 1) * hd];
                cached
                    .iter_mut()
                    .zip(value)
                    .for_each(|(c, &v)| *c = bf16::to_bf16(v));
            }
        };
        let head_size = max_len * hd;
        let (keys, values) = (&mut cache.keys[layer], &mut cache.values[layer]);
        if batch * seq >= PARALLEL_ROWS {
            keys.par_chunks_mut(head_size)
                .zip(values.par_chunks_mut(head_size))
                .enumerate()
                .for_each(|(task, pair)| store(task, pair));
        } else {
            keys.chunks_mut(head_size)
                .zip(values.chunks_mut(head_size))
                .enumerate()
                .for_each(|(task, pair)| store(task, pair));
        }
    }

    /// Causal attention of the new queries over the cache; `out` is (rows, num_heads · head_dim).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        cache: &KvCache,
        layer: usize,
        qkv: &[f32],
        batch: usize,
        seq: usize,
        start: usize,
        out: &mut Vec<f32>,
    ) {
        let dims = self.dims;
        let (hd, heads) = (dims.head_dim, dims.num_heads);
        let width = dims.q_width() + 2 * dims.kv_width();
        let group = heads / dims.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (keys, values, max_len) = (&cache.keys[layer], &cache.values[layer], cache.max_len);
        let isa = self.isa;
        // one task per (row, head): its outputs for the seq new positions, (seq, head_dim)
        let per_head: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|task| {
                let (b, h) = (task / heads, task % heads);
                let base = (b * dims.kv_heads + h / group) * max_len * hd;
                let mut result = vec![0f32; seq * hd];
                let mut scores = Vec::with_capacity(start + seq);
                let keys = &keys[base..base + max_len * hd];
                let values = &values[base..base + max_len * hd];
                for t in 0..seq {
                    let q = &qkv[(b * seq + t) * width + h * hd..][..hd];
                    let visible = start + t + 1; // causal: itself and everything before
                    let y = &mut result[t * hd..(t + 1) * hd];
                    let head = HeadCache {
                        keys,
                        values: &values[..visible * hd],
                        max_len,
                        visible,
                    };
                    attend_one(isa, q, &head, scale, &mut scores, y);
                }
                result
            })
            .collect();
        out.clear();
        out.resize(batch * seq * heads * hd, 0.0);
        for (task, result) in per_head.iter().enumerate() {
            let (b, h) = (task / heads, task % heads);
            for t in 0..seq {
                let at = (b * seq + t) * heads * hd + h * hd;
                out[at..at + hd].copy_from_slice(&result[t * hd..(t + 1) * hd]);
            }
        }
    }
}

/// One head's cache as attention reads it: the first `visible` positions.
struct HeadCache<'a> {
    /// (head_dim, max_len)
    keys: &'a [u16],
    /// (visible, head_dim)
    values: &'a [u16],
    max_len: usize,
    visible: usize,
}

/// One query over the cached positions: `y = softmax(scale · q · Kᵀ) · V`. The two loops
/// over the cache have an AVX-512 version (sums kept in registers, 16 positions or 16
/// head dimensions at a time), an AVX2 one (8 at a time) and a portable one; `isa` picks.
fn attend_one(
    isa: Isa,
    q: &[f32],
    head: &HeadCache,
    scale: f32,
    scores: &mut Vec<f32>,
    y: &mut [f32],
) {
    scores.clear();
    scores.resize(head.visible, 0.0);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16(proof) => attention_avx512::scores(proof, q, head, scale, scores),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(proof) => attention_avx2::scores(proof, q, head, scale, scores),
        _ => portable_scores(q, head, scale, scores),
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0.0;
    for score in scores.iter_mut() {
        *score = exp_poly(*score - max);
        total += *score;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16(proof) => attention_avx512::weighted_values(proof, scores, head.values, y),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(proof) => attention_avx2::weighted_values(proof, scores, head.values, y),
        _ => portable_weighted_values(scores, head.values, y),
    }
    let inv_total = 1.0 / total;
    y.iter_mut().for_each(|v| *v *= inv_total);
}

/// `scores[s] = scale · q · K[s]`, reading the transposed keys row by row.
fn portable_scores(q: &[f32], head: &HeadCache, scale: f32, scores: &mut [f32]) {
    let (visible, max_len) = (head.visible, head.max_len);
    for (d, &qd) in q.iter().enumerate() {
        let row = &head.keys[d * max_len..d * max_len + visible];
        scores
            .iter_mut()
            .zip(row)
            .for_each(|(s, &k)| *s += qd * bf16::from_bf16(k));
    }
    scores.iter_mut().for_each(|s| *s *= scale);
}

/// `y = Σ_s weights[s] · V[s]` (not yet divided by the weights' total).
fn portable_weighted_values(weights: &[f32], values: &[u16], y: &mut [f32]) {
    y.fill(0.0);
    for (&weight, value) in weights.iter().zip(values.chunks_exact(y.len())) {
        y.iter_mut()
            .zip(value)
            .for_each(|(acc, &v)| *acc += weight * bf16::from_bf16(v));
    }
}

#[cfg(target_arch = "x86_64")]
mod attention_avx512 {
    use super::HeadCache;
    use crate::decode::kernels::cpu::Avx512Bf16;
    use std::arch::x86_64::*;

    /// `scores[s] = scale · q · K[s]` for the visible positions.
    pub fn scores(_proof: Avx512Bf16, q: &[f32], head: &HeadCache, scale: f32, scores: &mut [f32]) {
        assert!(head.visible <= head.max_len && scores.len() == head.visible);
        assert!(
            head.keys.len() >= q.len() * head.max_len,
            "keys are not head_dim × max_len"
        );
        // SAFETY: the token exists only where the CPU reported avx512f, avx512bw, avx512vl
        // and avx512bf16 (kernels::cpu); masked loads read positions below `visible` of each
        // of the q.len() key rows and masked stores write below `visible`, bounded above
        unsafe { scores_unchecked(q, head, scale, scores) }
    }

    /// `y = Σ_s weights[s] · V[s]`.
    pub fn weighted_values(_proof: Avx512Bf16, weights: &[f32], values: &[u16], y: &mut [f32]) {
        assert!(
            values.len() >= weights.len() * y.len(),
            "values are not visible × head_dim"
        );
        // SAFETY: as above; loads read head_dim values of each of the weights.len() rows
        unsafe { weighted_values_unchecked(weights, values, y) }
    }

    /// Sixteen bfloat16 values (the lanes of `m`) widened to float32: a bfloat16 is the
    /// upper half of a float32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn load_bf16(m: __mmask16, ptr: *const u16) -> __m512 {
        let halves = _mm256_maskz_loadu_epi16(m, ptr as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
    }

    fn mask(left: usize) -> __mmask16 {
        if left >= 16 {
            u16::MAX
        } else {
            (1u16 << left) - 1
        }
    }

    /// Sixteen positions at a time: their sums stay in one register while it runs down
    /// the head_dim rows of the transposed keys.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn scores_unchecked(q: &[f32], head: &HeadCache, scale: f32, scores: &mut [f32]) {
        let (visible, max_len) = (head.visible, head.max_len);
        for start in (0..visible).step_by(16) {
            let m = mask(visible - start);
            let mut acc = _mm512_setzero_ps();
            for (d, &qd) in q.iter().enumerate() {
                let keys = load_bf16(m, head.keys.as_ptr().add(d * max_len + start));
                acc = _mm512_fmadd_ps(_mm512_set1_ps(qd), keys, acc);
            }
            let out = scores.as_mut_ptr().add(start);
            _mm512_mask_storeu_ps(out, m, _mm512_mul_ps(acc, _mm512_set1_ps(scale)));
        }
    }

    /// Sixteen head dimensions at a time, summed over every position in a register.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn weighted_values_unchecked(weights: &[f32], values: &[u16], y: &mut [f32]) {
        let hd = y.len();
        for start in (0..hd).step_by(16) {
            let m = mask(hd - start);
            let mut acc = _mm512_setzero_ps();
            for (s, &weight) in weights.iter().enumerate() {
                let value = load_bf16(m, values.as_ptr().add(s * hd + start));
                acc = _mm512_fmadd_ps(_mm512_set1_ps(weight), value, acc);
            }
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(start), m, acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod attention_avx2 {
    use super::HeadCache;
    use crate::decode::kernels::bf16::from_bf16;
    use crate::decode::kernels::cpu::Avx2Fma;
    use std::arch::x86_64::*;

    /// `scores[s] = scale · q · K[s]` for the visible positions.
    pub fn scores(_proof: Avx2Fma, q: &[f32], head: &HeadCache, scale: f32, scores: &mut [f32]) {
        assert!(head.visible <= head.max_len && scores.len() == head.visible);
        assert!(
            head.keys.len() >= q.len() * head.max_len,
            "keys are not head_dim × max_len"
        );
        // SAFETY: the token exists only where the CPU reported avx2 and fma (kernels::cpu);
        // the vector loads read groups of 8 positions only where they end inside the key
        // row (start + 8·groups ≤ max_len), of q.len() rows, bounded above; stores go
        // through a local array
        unsafe { scores_unchecked(q, head, scale, scores) }
    }

    /// `y = Σ_s weights[s] · V[s]`.
    pub fn weighted_values(_proof: Avx2Fma, weights: &[f32], values: &[u16], y: &mut [f32]) {
        assert!(
            values.len() >= weights.len() * y.len(),
            "values are not visible × head_dim"
        );
        // SAFETY: as above; the vector loads and stores cover whole groups of 8 head
        // dimensions (start + 8·groups ≤ head_dim) of the weights.len() rows, bounded above
        unsafe { weighted_values_unchecked(weights, values, y) }
    }

    /// Eight bfloat16 values widened to float32: a bfloat16 is the upper half of a float32.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16(ptr: *const u16) -> __m256 {
        let halves = _mm_loadu_si128(ptr as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
    }

    /// Eight positions per register, their sums built down the head_dim rows of the
    /// transposed keys, four registers at a time while 32 positions fit in the key row
    /// (independent chains of multiply-adds), then one (lanes past `visible` are computed
    /// from whatever the cache holds there and dropped); the last positions of a full
    /// cache one by one, with the same fused multiply-adds in the same order: every score
    /// is the same whichever path computed it.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores_unchecked(q: &[f32], head: &HeadCache, scale: f32, scores: &mut [f32]) {
        let (visible, max_len) = (head.visible, head.max_len);
        let mut start = 0;
        while start < visible && start + 8 <= max_len {
            start += if start + 32 <= max_len && visible - start > 24 {
                score_groups::<4>(q, head, scale, start, scores)
            } else {
                score_groups::<1>(q, head, scale, start, scores)
            };
        }
        for (s, score) in scores.iter_mut().enumerate().skip(start) {
            let mut acc = 0f32;
            for (d, &qd) in q.iter().enumerate() {
                acc = qd.mul_add(from_bf16(head.keys[d * max_len + s]), acc);
            }
            *score = acc * scale;
        }
    }

    /// The scores of the G·8 positions from `start` (those below `visible` kept), G
    /// registers of sums (independent chains of multiply-adds); returns G·8.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_groups<const G: usize>(
        q: &[f32],
        head: &HeadCache,
        scale: f32,
        start: usize,
        scores: &mut [f32],
    ) -> usize {
        let (keys, max_len) = (head.keys.as_ptr(), head.max_len);
        let mut acc = [_mm256_setzero_ps(); G];
        for (d, &qd) in q.iter().enumerate() {
            let qd = _mm256_set1_ps(qd);
            let row = keys.add(d * max_len + start);
            for (g, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(qd, load_bf16(row.add(8 * g)), *acc);
            }
        }
        let mut lanes = [[0f32; 8]; G];
        for (lanes, acc) in lanes.iter_mut().zip(&acc) {
            let scaled = _mm256_mul_ps(*acc, _mm256_set1_ps(scale));
            _mm256_storeu_ps(lanes.as_mut_ptr(), scaled);
        }
        let count = (head.visible - start).min(8 * G);
        scores[start..start + count].copy_from_slice(&lanes.as_flattened()[..count]);
        8 * G
    }

    /// Eight head dimensions per register, summed over every position, up to four
    /// registers in one pass over the positions; the last head_dim % 8 one by one, with
    /// the same fused multiply-adds in the same order.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_values_unchecked(weights: &[f32], values: &[u16], y: &mut [f32]) {
        let hd = y.len();
        let full = hd / 8 * 8;
        let mut start = 0;
        while start < full {
            start += match (full - start) / 8 {
                1 => weighted_groups::<1>(weights, values, start, y),
                2 => weighted_groups::<2>(weights, values, start, y),
                3 => weighted_groups::<3>(weights, values, start, y),
                _ => weighted_groups::<4>(weights, values, start, y),
            };
        }
        for (d, out) in y.iter_mut().enumerate().skip(full) {
            let mut acc = 0f32;
            for (s, &weight) in weights.iter().enumerate() {
                acc = weight.mul_add(from_bf16(values[s * hd + d]), acc);
            }
            *out = acc;
        }
    }

    /// `y[start..start + 8·G] = Σ_s weights[s] · V[s][start..start + 8·G]`, G registers of
    /// sums in one pass over the positions; returns 8·G.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weighted_groups<const G: usize>(
        weights: &[f32],
        values: &[u16],
        start: usize,
        y: &mut [f32],
    ) -> usize {
        let hd = y.len();
        let mut acc = [_mm256_setzero_ps(); G];
        for (s, &weight) in weights.iter().enumerate() {
            let weight = _mm256_set1_ps(weight);
            let row = values.as_ptr().add(s * hd + start);
            for (g, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(weight, load_bf16(row.add(8 * g)), *acc);
            }
        }
        for (g, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(y.as_mut_ptr().add(start + 8 * g), *acc);
        }
        8 * G
    }
}

/// e^x for x ≤ 0 (softmax arguments) in branch-free arithmetic that vectorises: split
/// x = n·ln 2 + r with |r| ≤ ln 2 / 2, take e^r from its Taylor series to r⁶ (error below
/// 2e-7 relative) and multiply by 2^n built from the exponent bits.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75; // ln 2 split so that n·LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 0.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Rows at which the elementwise work between the matrix products (norms, activations,
/// rounding, cache stores) is split between threads; below it, a fork costs more than it
/// saves. Each row is computed the same way either way.
const PARALLEL_ROWS: usize = 4;

/// `f(input row, output row)` for every row, in parallel from `PARALLEL_ROWS` rows on.
fn map_rows<A: Sync, B: Send>(
    input: &[A],
    input_width: usize,
    output: &mut [B],
    output_width: usize,
    f: impl Fn(&[A], &mut [B]) + Sync + Send,
) {
    let rows = output.len() / output_width.max(1);
    if rows >= PARALLEL_ROWS {
        output
            .par_chunks_mut(output_width)
            .zip(input.par_chunks(input_width))
            .for_each(|(out, row)| f(row, out));
    } else {
        output
            .chunks_mut(output_width)
            .zip(input.chunks(input_width))
            .for_each(|(out, row)| f(row, out));
    }
}

/// `out = bf16(f(x))` elementwise, rows of `width`.
fn to_bf16_rows(x: &[f32], width: usize, out: &mut Vec<u16>, f: impl Fn(f32) -> f32 + Sync + Send) {
    out.clear();
    out.resize(x.len(), 0);
    map_rows(x, width, out, width, |row, out| {
        out.iter_mut()
            .zip(row)
            .for_each(|(o, &v)| *o = bf16::to_bf16(f(v)));
    });
}

fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// x · sigmoid(x), the sigmoid as (1 + tanh(x/2)) / 2: branch-free, so it vectorises.
fn silu(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh_rational(0.5 * x))
}

/// GELU, tanh approximation (as `F.gelu(x, approximate="tanh")`).
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh_rational(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// tanh as a ratio of two polynomials (the minimax fit Eigen and XLA use for float32),
/// within a few float32 ulps; unlike libm's `tanhf` it has no branches or calls, so the
/// GELU loop over a whole hidden layer vectorises.
#[allow(clippy::excessive_precision)] // the coefficients as fitted
fn tanh_rational(x: f32) -> f32 {
    // beyond this |x|, tanh(x) rounds to ±1 in float32
    let x = x.clamp(-7.905_311, 7.905_311);
    let x2 = x * x;
    let p = x2 * -2.760_768_5e-16 + 2.000_187_9e-13;
    let p = x2 * p + -8.604_671_5e-11;
    let p = x2 * p + 5.122_297e-8;
    let p = x2 * p + 1.485_722_4e-5;
    let p = x2 * p + 6.372_619_3e-4;
    let p = x * (x2 * p + 4.893_524_6e-3);
    let q = x2 * 1.198_258_4e-6 + 1.185_347e-4;
    let q = x2 * q + 2.268_434_6e-3;
    let q = x2 * q + 4.893_525_2e-3;
    p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn linear(name: &str, rows: usize, cols: usize, seed: u64) -> Linear {
        let bias = Some(values(rows, seed + 1, 0.1));
        Linear::new(name, &values(rows * cols, seed, 0.2), rows, cols, bias).unwrap()
    }

    /// The architecture options of a test model beyond positions and heads.
    #[derive(Clone, Copy)]
    struct Variant {
        norm: NormKind,
        scale: bool,
        options: Options,
    }

    const GPT2: Variant = Variant {
        norm: NormKind::Layer,
        scale: true,
        options: Options {
            activation: Activation::GeluTanh,
            qk_norm_eps: None,
            logit_softcap: None,
        },
    };

    /// RMSNorm without scale, QK-norm, `activation`, soft-capped logits.
    fn modern(activation: Activation) -> Variant {
        Variant {
            norm: NormKind::Rms,
            scale: false,
            options: Options {
                activation,
                qk_norm_eps: Some(1e-6),
                logit_softcap: Some(3.0),
            },
        }
    }

    fn norm(variant: Variant, width: usize, seed: u64) -> Norm {
        let weight = values(width, seed, 0.1).iter().map(|v| 1.0 + v).collect();
        let (weight, bias) = match variant.norm {
            NormKind::Layer => (Some(weight), Some(values(width, seed + 1, 0.1))),
            NormKind::Rms => (variant.scale.then_some(weight), None),
        };
        Norm::new("norm", variant.norm, width, 1e-5, weight, bias).unwrap()
    }

    fn tiny_model(rotary: bool, kv_heads: usize) -> DecodeModel {
        tiny_variant(rotary, kv_heads, GPT2)
    }

    fn tiny_variant(rotary: bool, kv_heads: usize, variant: Variant) -> DecodeModel {
        build_variant(rotary, kv_heads, variant).unwrap()
    }

    fn build_variant(rotary: bool, kv_heads: usize, variant: Variant) -> Result<DecodeModel> {
        let dims = Dims {
            embed_dim: 32,
            num_heads: 4,
            kv_heads,
            head_dim: 8,
            vocab_size: 50,
            max_seq_len: 24,
        };
        let qkv_rows = dims.q_width() + 2 * dims.kv_width();
        let up_rows = match variant.options.activation {
            Activation::SwiGlu => 128,
            _ => 64,
        };
        let layers = (0..2)
            .map(|i| Layer {
                attn_norm: norm(variant, 32, 10 * i),
                qkv: linear("qkv", qkv_rows, 32, 10 * i + 2),
                out_proj: linear("out", 32, 32, 10 * i + 3),
                mlp_norm: norm(variant, 32, 10 * i + 4),
                up: linear("up", up_rows, 32, 10 * i + 5),
                down: linear("down", 32, 64, 10 * i + 6),
            })
            .collect();
        let positions = if rotary {
            let angles: Vec<f32> = (0..24 * 8)
                .map(|i| (i / 8) as f32 * 0.3f32.powi(i % 4))
                .collect();
            Positions::Rotary {
                cos: angles.iter().map(|a| a.cos()).collect(),
                sin: angles.iter().map(|a| a.sin()).collect(),
            }
        } else {
            Positions::Learned(values(24 * 32, 99, 0.5))
        };
        let head = linear("head", 50, 32, 77);
        DecodeModel::new(
            dims,
            variant.options,
            layers,
            norm(variant, 32, 55),
            head,
            values(50 * 32, 98, 1.0),
            positions,
        )
    }

    #[test]
    fn one_token_at_a_time_equals_the_whole_sequence_at_once() {
        for (rotary, kv_heads) in [(false, 4), (true, 2), (false, 1)] {
            let model = tiny_model(rotary, kv_heads);
            let tokens: Vec<i64> = vec![3, 17, 42, 0, 8, 49, 21, 5, 5, 30];
            let mut whole = model.new_cache(1, 20).unwrap();
            let expected = model.step(&mut whole, &tokens, tokens.len()).unwrap();
            let mut chunked = model.new_cache(1, 20).unwrap();
            model.step(&mut chunked, &tokens[..4], 4).unwrap();
            let mut last = Vec::new();
            for &token in &tokens[4..] {
                last = model.step(&mut chunked, &[token], 1).unwrap();
            }
            for (a, b) in last.iter().zip(&expected) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "rotary {rotary} kv {kv_heads}: {a} vs {b}"
                );
            }
            assert_eq!(chunked.len(), tokens.len());
        }
    }

    #[test]
    fn every_architecture_option_runs_the_same_chunked_and_whole() {
        let variants = [
            modern(Activation::Relu2),
            modern(Activation::SwiGlu),
            Variant {
                scale: true,
                ..modern(Activation::GeluTanh)
            },
        ];
        let tokens: Vec<i64> = vec![3, 17, 42, 0, 8, 49, 21, 5];
        for (v, variant) in variants.into_iter().enumerate() {
            for isa in cpu::available() {
                let model = tiny_variant(true, 2, variant).with_kernel(isa);
                let mut whole = model.new_cache(1, 8).unwrap();
                let expected = model.step(&mut whole, &tokens, 8).unwrap();
                let mut chunked = model.new_cache(1, 8).unwrap();
                model.step(&mut chunked, &tokens[..5], 5).unwrap();
                model.step(&mut chunked, &tokens[5..7], 2).unwrap();
                let last = model.step(&mut chunked, &tokens[7..], 1).unwrap();
                for (a, b) in last.iter().zip(&expected) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "variant {v} {}: {a} vs {b}",
                        isa.name()
                    );
                    assert!(
                        a.abs() <= 3.0,
                        "soft-capped logits stay within the cap: {a}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_options_are_errors() {
        let bad = |options: Options| {
            let variant = Variant { options, ..GPT2 };
            build_variant(false, 4, variant).is_err()
        };
        assert!(bad(Options {
            logit_softcap: Some(0.0),
            ..GPT2.options
        }));
        assert!(bad(Options {
            qk_norm_eps: Some(f32::NAN),
            ..GPT2.options
        }));
        assert!(Norm::new("n", NormKind::Rms, 4, -1.0, None, None).is_err());
        assert!(Norm::new("n", NormKind::Rms, 4, 1e-6, Some(vec![1.0; 3]), None).is_err());
    }

    #[test]
    fn rows_of_a_batch_equal_rows_run_alone() {
        for isa in cpu::available() {
            let model = tiny_model(true, 2).with_kernel(isa);
            let prompts: [[i64; 3]; 3] = [[1, 2, 3], [40, 41, 42], [7, 7, 7]];
            let flat: Vec<i64> = prompts.iter().flatten().copied().collect();
            let mut cache = model.new_cache(3, 10).unwrap();
            let batch = model.step(&mut cache, &flat, 3).unwrap();
            for (i, prompt) in prompts.iter().enumerate() {
                let mut alone = model.new_cache(1, 10).unwrap();
                let logits = model.step(&mut alone, prompt, 3).unwrap();
                let row = batch[i * 50..(i + 1) * 50].to_vec();
                assert_eq!(logits, row, "{} row {i}", isa.name());
            }
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let model = tiny_model(false, 4);
        let mut cache = model.new_cache(1, 4).unwrap();
        assert!(model.step(&mut cache, &[50], 1).is_err()); // outside the vocabulary
        assert!(model.step(&mut cache, &[-1], 1).is_err());
        assert!(model.step(&mut cache, &[1, 2], 1).is_err()); // 2 tokens for 1 row × 1
        assert!(model.step(&mut cache, &[1, 2, 3, 4, 5], 5).is_err()); // longer than the cache
        assert!(cache.is_empty());
        assert!(model.new_cache(1, 25).is_err()); // beyond max_seq_len
        let wrong = Linear::new("w", &[0.0; 5], 2, 3, None);
        assert!(wrong.is_err());
    }

    #[test]
    fn rational_tanh_is_within_float_precision() {
        for i in -2000..=2000 {
            let x = i as f32 / 100.0;
            let err = (tanh_rational(x) as f64 - (x as f64).tanh()).abs();
            assert!(err < 1e-6, "tanh({x}) off by {err}");
        }
    }

    #[test]
    fn polynomial_exp_is_within_float_precision() {
        for i in 0..=8700 {
            let x = -(i as f32) / 100.0;
            let want = (x as f64).exp();
            let rel = (exp_poly(x) as f64 - want).abs() / want;
            assert!(rel < 5e-7, "exp({x}) off by {rel}");
        }
        assert_eq!(exp_poly(-1000.0), exp_poly(-87.0)); // clamped, no garbage
    }

    #[test]
    fn attention_kernels_agree_with_a_plain_softmax() {
        // head_dim with and without a tail of 8 and 16; visible positions below, at and past
        // multiples of 8 and 16, up to a full cache (the AVX2 scores' scalar tail)
        let shapes = [
            (24, 40, 37),
            (32, 116, 116),
            (8, 20, 1),
            (5, 17, 9),
            (64, 33, 32),
            (40, 70, 66),
            (16, 64, 50),
        ];
        for (hd, max_len, visible) in shapes {
            let q = values(hd, 1, 1.0);
            let as_bf16 = |v: Vec<f32>| -> Vec<u16> { v.into_iter().map(bf16::to_bf16).collect() };
            let keys = as_bf16(values(hd * max_len, 2, 1.0)); // transposed: (hd, max_len)
            let vals = as_bf16(values(max_len * hd, 3, 1.0));
            let head = HeadCache {
                keys: &keys,
                values: &vals[..visible * hd],
                max_len,
                visible,
            };
            let scale = 0.3;
            let logits: Vec<f64> = (0..visible)
                .map(|s| {
                    let key = |d: usize| bf16::from_bf16(keys[d * max_len + s]) as f64;
                    (0..hd).map(|d| q[d] as f64 * key(d)).sum::<f64>() * scale
                })
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for isa in cpu::available() {
                let mut y = vec![0f32; hd];
                attend_one(isa, &q, &head, scale as f32, &mut Vec::new(), &mut y);
                for (d, got) in y.iter().enumerate() {
                    let want: f64 = (0..visible)
                        .map(|s| weights[s] * bf16::from_bf16(vals[s * hd + d]) as f64)
                        .sum::<f64>()
                        / total;
                    assert!(
                        (*got as f64 - want).abs() < 1e-5,
                        "{} {hd}x{visible}: {got} vs {want}",
                        isa.name()
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_scores_are_the_same_in_vectors_and_one_by_one() {
        // a full cache ends with positions scored one by one (fused multiply-adds in the
        // same order as the vector lanes): the same keys in a longer cache, where every
        // position is in a vector, give the same bits
        let Some(Isa::Avx2Fma(proof)) = cpu::Isa::get(cpu::Kernel::Avx2Fma) else {
            return; // no AVX2 here
        };
        let (hd, visible) = (24, 45);
        let q = values(hd, 5, 1.0);
        let keys_of = |max_len: usize| -> Vec<u16> {
            let mut keys = vec![0u16; hd * max_len];
            for (i, v) in values(hd * visible, 6, 1.0).into_iter().enumerate() {
                keys[(i / visible) * max_len + i % visible] = bf16::to_bf16(v);
            }
            keys
        };
        let mut results = Vec::new();
        for max_len in [visible, 96] {
            let keys = keys_of(max_len);
            let head = HeadCache {
                keys: &keys,
                values: &[],
                max_len,
                visible,
            };
            let mut scores = vec![0f32; visible];
            attention_avx2::scores(proof, &q, &head, 0.7, &mut scores);
            results.push(scores);
        }
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn every_kernel_runs_the_same_model() {
        // whole steps (prompt, chunk, single tokens) with each kernel this CPU has: the
        // kernels round differently, so the logits agree to bfloat16 precision, not bits
        for (rotary, kv_heads) in [(false, 4), (true, 2), (false, 1)] {
            let tokens: Vec<i64> = vec![3, 17, 42, 0, 8, 49, 21, 5, 5, 30, 11, 2];
            let run = |isa: Isa| -> Vec<Vec<f32>> {
                let model = tiny_model(rotary, kv_heads).with_kernel(isa);
                assert_eq!(model.kernel().kernel(), isa.kernel());
                let mut cache = model.new_cache(2, 12).unwrap();
                let mut steps = vec![model.step(&mut cache, &tokens[..8], 4).unwrap()];
                steps.push(model.step(&mut cache, &tokens[8..10], 1).unwrap());
                steps.push(model.step(&mut cache, &tokens[10..], 1).unwrap());
                steps
            };
            let portable = run(Isa::Portable);
            let spread = {
                let all: Vec<f32> = portable.concat();
                let mean = all.iter().sum::<f32>() / all.len() as f32;
                (all.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / all.len() as f32).sqrt()
            };
            for isa in cpu::available() {
                for (got, want) in run(isa).iter().zip(&portable) {
                    for (a, b) in got.iter().zip(want) {
                        assert!(
                            (a - b).abs() < 0.02 * spread,
                            "{} rotary {rotary} kv {kv_heads}: {a} vs {b}",
                            isa.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn silu_and_relu2_match_their_definitions() {
        for i in -800..=800 {
            let x = i as f32 / 50.0;
            let want = x as f64 / (1.0 + (-x as f64).exp());
            assert!((silu(x) as f64 - want).abs() < 1e-5, "silu({x})");
        }
        let mut out = Vec::new();
        Activation::Relu2.forward_bf16(&[-2.0, 0.5, 3.0], 3, &mut out);
        let got: Vec<f32> = out.into_iter().map(bf16::from_bf16).collect();
        assert_eq!(got, vec![0.0, 0.25, 9.0]);
    }

    #[test]
    fn rms_norm_is_x_over_its_root_mean_square() {
        let mut x = vec![3.0, -4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        rms_norm_in_place(&mut x, 4, 1e-12);
        let rms = (25.0f32 / 4.0).sqrt();
        let want = [3.0 / rms, -4.0 / rms, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn gelu_matches_known_values() {
        assert_eq!(gelu_tanh(0.0), 0.0);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((gelu_tanh(-3.0) + 0.003_637_4).abs() < 1e-5);
    }
}
