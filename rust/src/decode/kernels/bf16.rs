//! bfloat16 matrix products for decoding: `out = x · Wᵀ` with x and W in bfloat16 and
//! float32 accumulation.
//!
//! Decoding multiplies a few rows (one per sequence in the batch) by every weight matrix,
//! so a step is bound by reading the weights, not by arithmetic: bfloat16 halves the bytes.
//! Values are stored as `u16`, the upper half of an `f32`.
//!
//! Three kernels compute the same sums from the same packed weights, chosen at run time
//! ([`super::cpu`]): AVX512-BF16's `vdpbf16ps` (32 products per instruction); AVX2 + FMA,
//! which widens each loaded pair of bfloat16 weights to two float32 vectors (a shift and a
//! mask: a bfloat16 is the upper half of a float32) and adds them with fused multiply-adds;
//! and a portable one in plain Rust. Each output element is one dot product computed by one
//! thread in a fixed order, so results do not depend on the thread count or on how many
//! rows are in the batch (for one kernel: the kernels round differently from each other,
//! `vdpbf16ps` and FMA in their own ways, the portable one after every product).

use rayon::prelude::*;

use crate::decode::kernels::cpu::Isa;

/// f32 → bf16, rounding to nearest even (what `torch.Tensor.to(torch.bfloat16)` does).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40; // stay a (quiet) NaN after truncation
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

#[inline]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

pub fn to_bf16_into(src: &[f32], dst: &mut Vec<u16>) {
    dst.clear();
    dst.extend(src.iter().map(|&v| to_bf16(v)));
}

/// Output columns in one packed block: one 512-bit register of f32 sums.
const BLOCK: usize = 16;
/// Output columns per parallel task (and the padding of a packed matrix): enough work to
/// pay for a rayon task, few enough that two cores share even a 256-column product.
const COLUMNS_PER_TASK: usize = 4 * BLOCK;
/// Blocks of one task.
const BLOCKS_PER_TASK: usize = COLUMNS_PER_TASK / BLOCK;
/// Input rows computed together, each broadcast pair of inputs feeding four blocks.
const TILE_ROWS: usize = 4;

/// A weight matrix W (n, k) in bfloat16, packed for `x · Wᵀ`: blocks of 16 output columns,
/// and inside a block the k values in pairs, `data[((block · k/2 + p) · 16 + j) · 2 + e]
/// = W[block · 16 + j][2p + e]`. One 512-bit load then holds a pair of weights for 16
/// outputs, and `vdpbf16ps` with a broadcast pair of inputs adds to 16 sums at once: no
/// horizontal additions, so a sum is built the same way whatever the batch size.
pub struct PackedMatrix {
    n: usize,
    k: usize,
    data: Vec<u16>,
}

impl PackedMatrix {
    /// Packs a row-major (n, k) float32 matrix, rounding to bfloat16.
    pub fn pack(weight: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(weight.len(), n * k, "weight is not n × k");
        let padded_n = n.div_ceil(COLUMNS_PER_TASK) * COLUMNS_PER_TASK;
        let pairs = k.div_ceil(2);
        let mut data = vec![0u16; padded_n * pairs * 2];
        for (j, row) in weight.chunks_exact(k.max(1)).enumerate().take(n) {
            let (block, lane) = (j / BLOCK, j % BLOCK);
            for (t, &value) in row.iter().enumerate() {
                let (pair, half) = (t / 2, t % 2);
                data[((block * pairs + pair) * BLOCK + lane) * 2 + half] = to_bf16(value);
            }
        }
        PackedMatrix { n, k, data }
    }

    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn cols(&self) -> usize {
        self.k
    }

    /// The packed pairs of one block of 16 columns: (k/2, 16, 2).
    fn block(&self, block: usize) -> &[u16] {
        let size = self.k.div_ceil(2) * BLOCK * 2;
        &self.data[block * size..(block + 1) * size]
    }
}

/// `out[i · n + j] = Σ_t x[i · k + t] · W[j][t] (+ bias[j])` for the `m` rows of `x`
/// (bfloat16, row-major (m, k)); `out` is (m, n). `isa` picks the kernel.
pub fn matmul(
    isa: Isa,
    x: &[u16],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "x is not m × k");
    assert_eq!(out.len(), m * n, "out is not m × n");
    assert!(bias.is_none_or(|b| b.len() == n), "bias is not n long");
    // the AVX2 and portable kernels read the inputs widened to f32 once, for every task
    let inputs = match isa {
        Isa::Avx512Bf16(_) => Inputs::Bf16(x),
        _ => Inputs::F32(Widened::new(x, m, k)),
    };
    let tasks = n.div_ceil(COLUMNS_PER_TASK);
    let columns = |task: usize| task * COLUMNS_PER_TASK..((task + 1) * COLUMNS_PER_TASK).min(n);
    // each task computes all m rows of its columns, (m, COLUMNS_PER_TASK), padding included
    let blocks: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let mut block = vec![0f32; m * COLUMNS_PER_TASK];
            task_sums(isa, &inputs, m, w, task, &mut block);
            block
        })
        .collect();
    for (task, block) in blocks.iter().enumerate() {
        let cols = columns(task);
        for (i, sums) in block.chunks_exact(COLUMNS_PER_TASK).enumerate() {
            let target = &mut out[i * n + cols.start..i * n + cols.end];
            target.copy_from_slice(&sums[..cols.len()]);
            if let Some(bias) = bias {
                target
                    .iter_mut()
                    .zip(&bias[cols.clone()])
                    .for_each(|(y, b)| *y += b);
            }
        }
    }
}

/// The rows of `x` as a kernel reads them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // bfloat16 rows: AVX-512 only
enum Inputs<'a> {
    Bf16(&'a [u16]),
    F32(Widened),
}

/// Rows of bfloat16 inputs widened to f32, each padded to an even length (`stride`) with
/// a zero, so that pair `p` of row `i` is `values[i · stride + 2p ..][..2]`.
struct Widened {
    values: Vec<f32>,
    stride: usize,
}

impl Widened {
    fn new(x: &[u16], m: usize, k: usize) -> Self {
        let stride = k.div_ceil(2) * 2;
        let mut values = vec![0f32; m * stride];
        for (row, widened) in x
            .chunks_exact(k.max(1))
            .zip(values.chunks_exact_mut(stride))
        {
            widened
                .iter_mut()
                .zip(row)
                .for_each(|(v, &b)| *v = from_bf16(b));
        }
        Widened { values, stride }
    }

    fn rows(&self, first: usize, count: usize) -> &[f32] {
        &self.values[first * self.stride..(first + count) * self.stride]
    }
}

/// The sums of one task: all `m` input rows times its `COLUMNS_PER_TASK` columns,
/// `sums[i · COLUMNS_PER_TASK + j]`.
fn task_sums(isa: Isa, inputs: &Inputs, m: usize, w: &PackedMatrix, task: usize, sums: &mut [f32]) {
    assert_eq!(sums.len(), m * COLUMNS_PER_TASK);
    let first_block = task * COLUMNS_PER_TASK / BLOCK;
    let blocks: [&[u16]; BLOCKS_PER_TASK] = std::array::from_fn(|b| w.block(first_block + b));
    match (isa, inputs) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Bf16(token), Inputs::Bf16(x)) => {
            let k = w.k;
            for i0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - i0);
                let xs = &x[i0 * k..(i0 + rows) * k];
                let sums = &mut sums[i0 * COLUMNS_PER_TASK..(i0 + rows) * COLUMNS_PER_TASK];
                match rows {
                    1 => avx512::tile::<1>(token, xs, k, &blocks, sums),
                    2 => avx512::tile::<2>(token, xs, k, &blocks, sums),
                    3 => avx512::tile::<3>(token, xs, k, &blocks, sums),
                    _ => avx512::tile::<4>(token, xs, k, &blocks, sums),
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2Fma(token), Inputs::F32(x)) => avx2::task(token, x, m, &blocks, sums),
        (_, Inputs::F32(x)) => {
            for i0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - i0);
                let sums = &mut sums[i0 * COLUMNS_PER_TASK..(i0 + rows) * COLUMNS_PER_TASK];
                portable_tile(x.rows(i0, rows), rows, x.stride, &blocks, sums);
            }
        }
        (_, Inputs::Bf16(_)) => unreachable!("only the AVX512-BF16 kernel reads bfloat16 rows"),
    }
}

/// The same sums in plain Rust, `rows` input rows at a time: the pair of weights of 16
/// columns widened once, then each row's two products added to its sums in f32.
fn portable_tile(x: &[f32], rows: usize, stride: usize, blocks: &[&[u16]], sums: &mut [f32]) {
    assert!(rows <= TILE_ROWS && x.len() == rows * stride);
    for (b, packed) in blocks.iter().enumerate() {
        let mut acc = [[0f32; BLOCK]; TILE_ROWS];
        for (pair, weights) in packed.chunks_exact(2 * BLOCK).enumerate() {
            let mut even = [0f32; BLOCK];
            let mut odd = [0f32; BLOCK];
            for lane in 0..BLOCK {
                even[lane] = from_bf16(weights[2 * lane]);
                odd[lane] = from_bf16(weights[2 * lane + 1]);
            }
            for (c, acc) in acc.iter_mut().enumerate().take(rows) {
                let (x0, x1) = (x[c * stride + 2 * pair], x[c * stride + 2 * pair + 1]);
                for lane in 0..BLOCK {
                    acc[lane] += x0 * even[lane] + x1 * odd[lane];
                }
            }
        }
        for (c, acc) in acc.iter().enumerate().take(rows) {
            sums[c * COLUMNS_PER_TASK + b * BLOCK..][..BLOCK].copy_from_slice(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Widened, BLOCK, BLOCKS_PER_TASK, COLUMNS_PER_TASK, TILE_ROWS};
    use crate::decode::kernels::cpu::Avx2Fma;
    use std::arch::x86_64::*;

    /// The sums of one task. Every sum is built the same way, `s = fma(x1, w1, fma(x0,
    /// w0, s))` pair after pair, whatever the tile, so a row's results do not depend on
    /// the batch; the tiles only choose how many weights are loaded per input row: up to
    /// three rows run over all four blocks in one pass (weights read once), four rows and
    /// more block by block, each block (k · 32 bytes) read by every tile of four rows
    /// while it is in the L1 cache.
    pub fn task(token: Avx2Fma, x: &Widened, m: usize, blocks: &[&[u16]; 4], sums: &mut [f32]) {
        match m {
            1 => tile::<1, 4>(token, x.rows(0, 1), x.stride, blocks, 0, sums),
            2 => {
                for b0 in [0, 2] {
                    tile::<2, 2>(token, x.rows(0, 2), x.stride, blocks, b0, sums);
                }
            }
            _ => {
                for b0 in 0..BLOCKS_PER_TASK {
                    for i0 in (0..m).step_by(TILE_ROWS) {
                        let rows = TILE_ROWS.min(m - i0);
                        let xs = x.rows(i0, rows);
                        let sums = &mut sums[i0 * COLUMNS_PER_TASK..];
                        match rows {
                            1 => tile::<1, 1>(token, xs, x.stride, blocks, b0, sums),
                            2 => tile::<2, 1>(token, xs, x.stride, blocks, b0, sums),
                            3 => tile::<3, 1>(token, xs, x.stride, blocks, b0, sums),
                            _ => tile::<4, 1>(token, xs, x.stride, blocks, b0, sums),
                        }
                    }
                }
            }
        }
    }

    /// `sums[c · COLUMNS_PER_TASK + b · 16 + j]` for R input rows `c` and the G blocks
    /// `b0 ≤ b < b0 + G` of a task.
    pub fn tile<const R: usize, const G: usize>(
        _proof: Avx2Fma,
        xs: &[f32],
        stride: usize,
        blocks: &[&[u16]; BLOCKS_PER_TASK],
        b0: usize,
        sums: &mut [f32],
    ) {
        let pairs = stride / 2;
        assert!(
            stride.is_multiple_of(2) && xs.len() == R * stride,
            "rows are not R × stride"
        );
        assert!(b0 + G <= BLOCKS_PER_TASK, "blocks past the task");
        assert!(
            blocks.iter().all(|b| b.len() == pairs * 2 * BLOCK),
            "a block is not stride × 16"
        );
        assert!(
            sums.len() >= (R - 1) * COLUMNS_PER_TASK + (b0 + G) * BLOCK,
            "sums too short"
        );
        // SAFETY: the token exists only where the CPU reported avx2 and fma (kernels::cpu);
        // the asserts above bound every load (2·pairs values per row, pairs·32 per block)
        // and every store (16 columns of G blocks for R rows)
        unsafe { tile_unchecked::<R, G>(xs, stride, blocks, b0, sums) }
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // constant bounds: unrolled, sums in registers
    unsafe fn tile_unchecked<const R: usize, const G: usize>(
        xs: &[f32],
        stride: usize,
        blocks: &[&[u16]; BLOCKS_PER_TASK],
        b0: usize,
        sums: &mut [f32],
    ) {
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        // per row, per block: the sums of columns 0..8 and 8..16
        let mut acc = [[[_mm256_setzero_ps(); 2]; G]; R];
        let weights: [*const u16; G] = std::array::from_fn(|g| blocks[b0 + g].as_ptr());
        let x = xs.as_ptr();
        for pair in 0..stride / 2 {
            let x0: [__m256; R] =
                std::array::from_fn(|c| _mm256_broadcast_ss(&*x.add(c * stride + 2 * pair)));
            let x1: [__m256; R] =
                std::array::from_fn(|c| _mm256_broadcast_ss(&*x.add(c * stride + 2 * pair + 1)));
            for g in 0..G {
                // 16 columns × the pair (w0, w1): as 32-bit lanes, w0 the lower half
                let at = weights[g].add(pair * 2 * BLOCK) as *const __m256i;
                for half in 0..2 {
                    let packed = _mm256_loadu_si256(at.add(half));
                    let w0 = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(packed));
                    let w1 = _mm256_castsi256_ps(_mm256_and_si256(packed, high));
                    for c in 0..R {
                        let s = _mm256_fmadd_ps(x0[c], w0, acc[c][g][half]);
                        acc[c][g][half] = _mm256_fmadd_ps(x1[c], w1, s);
                    }
                }
            }
        }
        for (c, acc_c) in acc.iter().enumerate() {
            for (g, acc_g) in acc_c.iter().enumerate() {
                let at = sums
                    .as_mut_ptr()
                    .add(c * COLUMNS_PER_TASK + (b0 + g) * BLOCK);
                _mm256_storeu_ps(at, acc_g[0]);
                _mm256_storeu_ps(at.add(8), acc_g[1]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, BLOCKS_PER_TASK, COLUMNS_PER_TASK};
    use crate::decode::kernels::cpu::Avx512Bf16;
    use std::arch::x86_64::*;

    /// `sums[c · COLUMNS_PER_TASK + j]` for the R rows of `xs` (bfloat16, R × k) and the
    /// 64 columns of a task.
    pub fn tile<const R: usize>(
        _proof: Avx512Bf16,
        xs: &[u16],
        k: usize,
        blocks: &[&[u16]; BLOCKS_PER_TASK],
        sums: &mut [f32],
    ) {
        assert!(xs.len() == R * k, "rows are not R × k");
        assert!(
            blocks.iter().all(|b| b.len() == k.div_ceil(2) * 2 * BLOCK),
            "a block is not k × 16"
        );
        assert!(sums.len() >= R * COLUMNS_PER_TASK, "sums too short");
        // SAFETY: the token exists only where the CPU reported avx512f, avx512bw, avx512vl
        // and avx512bf16 (kernels::cpu); the asserts above bound every load (k values per
        // row, read as pairs below k, pairs·32 per block) and store (64 sums per row)
        unsafe { tile_unchecked::<R>(xs, k, blocks, sums) }
    }

    /// R input rows × four blocks of 16 columns: per pair of k, four weight loads and R
    /// broadcasts feed 4·R `vdpbf16ps` (32 multiply-adds each) into 4·R registers of sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_unchecked<const R: usize>(
        xs: &[u16],
        k: usize,
        blocks: &[&[u16]; COLUMNS_PER_TASK / BLOCK],
        sums: &mut [f32],
    ) {
        const B: usize = COLUMNS_PER_TASK / BLOCK;
        debug_assert!(xs.len() == R * k && sums.len() >= R * COLUMNS_PER_TASK);
        let mut acc = [[_mm512_setzero_ps(); B]; R];
        let full_pairs = k / 2;
        for pair in 0..k.div_ceil(2) {
            let w: [__m512bh; B] = std::array::from_fn(|b| {
                let ptr = blocks[b].as_ptr().add(pair * 2 * BLOCK);
                std::mem::transmute(_mm512_loadu_si512(ptr as *const _))
            });
            for (c, acc_c) in acc.iter_mut().enumerate() {
                let at = c * k + 2 * pair;
                let bits = if pair < full_pairs {
                    (xs.as_ptr().add(at) as *const u32).read_unaligned()
                } else {
                    xs[at] as u32 // odd k: the last pair is (x, 0)
                };
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(bits as i32));
                for b in 0..B {
                    acc_c[b] = _mm512_dpbf16_ps(acc_c[b], x, w[b]);
                }
            }
        }
        for (c, acc_c) in acc.iter().enumerate() {
            for (b, &v) in acc_c.iter().enumerate() {
                _mm512_storeu_ps(sums.as_mut_ptr().add(c * COLUMNS_PER_TASK + b * BLOCK), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_bf16(count: usize, seed: u64) -> Vec<u16> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..count)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                to_bf16(unit * 2.0 - 1.0)
            })
            .collect()
    }

    fn random_f32(count: usize, seed: u64) -> Vec<f32> {
        random_bf16(count, seed)
            .into_iter()
            .map(from_bf16)
            .collect()
    }

    #[test]
    fn rounding_matches_round_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between two bf16 values: rounds to the even one (1.0)
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // just above halfway rounds up
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// `x · Wᵀ` for row-major x (m × k, bfloat16) and W (n × k, f32 rounded to bfloat16
    /// as packing does), in plain f32 loops that share no code with the kernels, and for
    /// each sum the bound on the rounding error of any order of summation:
    /// k · ε · Σ|x_t · w_t| (the products themselves are exact in f32).
    fn reference(x: &[u16], m: usize, w: &[f32], n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
        let mut sums = vec![0f32; m * n];
        let mut bounds = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0f32, 0f32);
                for t in 0..k {
                    let product = from_bf16(x[i * k + t]) * from_bf16(to_bf16(w[j * k + t]));
                    sum += product;
                    magnitude += product.abs();
                }
                sums[i * n + j] = sum;
                bounds[i * n + j] = k as f32 * f32::EPSILON * magnitude + 1e-30;
            }
        }
        (sums, bounds)
    }

    /// Shapes with every AVX2 tile (1, 2, 3+ rows, tails of 1–3 rows), every AVX-512 tile
    /// height, k odd (the last pair padded), k = 1, and n leaving a task mostly padding.
    const SHAPES: [(usize, usize, usize); 10] = [
        (1, 37, 70),
        (2, 65, 256),
        (3, 64, 33),
        (4, 130, 1),
        (5, 300, 96),
        (6, 1, 201),
        (7, 129, 64),
        (9, 70, 17),
        (16, 256, 255),
        (17, 5, 2),
    ];

    #[test]
    fn every_kernel_matches_a_scalar_reference() {
        let kernels = crate::decode::kernels::cpu::available();
        assert!(!kernels.is_empty());
        for &(m, n, k) in &SHAPES {
            let x = random_bf16(m * k, 1 + m as u64);
            let w = random_f32(n * k, 7 + n as u64);
            let packed = PackedMatrix::pack(&w, n, k);
            let (want, bounds) = reference(&x, m, &w, n, k);
            for &isa in &kernels {
                let mut out = vec![f32::NAN; m * n];
                matmul(isa, &x, m, &packed, None, &mut out);
                for (index, ((got, want), bound)) in out.iter().zip(&want).zip(&bounds).enumerate()
                {
                    assert!(
                        (got - want).abs() <= *bound,
                        "{} ({m}, {n}, {k}) sum {index}: {got} vs {want} (bound {bound})",
                        isa.name()
                    );
                }
            }
        }
    }

    #[test]
    fn padding_columns_sum_to_zero() {
        // the packed matrix is padded to whole tasks with zero weights: every kernel
        // computes those sums too, and they must not pick up anything
        let (m, n, k) = (5, 70, 33);
        let x = random_bf16(m * k, 21);
        let packed = PackedMatrix::pack(&random_f32(n * k, 22), n, k);
        for isa in crate::decode::kernels::cpu::available() {
            let inputs = match isa {
                Isa::Avx512Bf16(_) => Inputs::Bf16(&x),
                _ => Inputs::F32(Widened::new(&x, m, k)),
            };
            let mut sums = vec![f32::NAN; m * COLUMNS_PER_TASK];
            task_sums(isa, &inputs, m, &packed, 1, &mut sums);
            for row in sums.chunks_exact(COLUMNS_PER_TASK) {
                assert!(row[..n - COLUMNS_PER_TASK].iter().all(|v| v.is_finite()));
                assert!(row[n - COLUMNS_PER_TASK..].iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (97, 160);
        let x = random_bf16(9 * k, 3);
        let w = random_f32(n * k, 4);
        let packed = PackedMatrix::pack(&w, n, k);
        for isa in crate::decode::kernels::cpu::available() {
            let mut batch = vec![0f32; 9 * n];
            matmul(isa, &x, 9, &packed, None, &mut batch);
            for i in 0..9 {
                let mut alone = vec![0f32; n];
                matmul(isa, &x[i * k..(i + 1) * k], 1, &packed, None, &mut alone);
                assert_eq!(
                    alone,
                    batch[i * n..(i + 1) * n].to_vec(),
                    "{} row {i}",
                    isa.name()
                );
                // and in a batch of two (a tile of its own in the AVX2 kernel)
                let j = (i + 1) % 9;
                let pair: Vec<u16> = [&x[i * k..(i + 1) * k], &x[j * k..(j + 1) * k]].concat();
                let mut two = vec![0f32; 2 * n];
                matmul(isa, &pair, 2, &packed, None, &mut two);
                assert_eq!(alone, two[..n].to_vec(), "{} row {i} in two", isa.name());
            }
        }
    }

    #[test]
    fn bias_is_added_per_output_column() {
        let (m, n, k) = (3, 10, 64);
        let x = random_bf16(m * k, 5);
        let w = PackedMatrix::pack(&random_f32(n * k, 6), n, k);
        let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
        for isa in crate::decode::kernels::cpu::available() {
            let (mut plain, mut biased) = (vec![0f32; m * n], vec![0f32; m * n]);
            matmul(isa, &x, m, &w, None, &mut plain);
            matmul(isa, &x, m, &w, Some(&bias), &mut biased);
            for (index, (a, b)) in plain.iter().zip(&biased).enumerate() {
                assert_eq!(a + (index % n) as f32, *b);
            }
        }
    }
}
