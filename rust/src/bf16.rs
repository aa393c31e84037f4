//! bfloat16 matrix products for decoding: `out = x · Wᵀ` with x and W in bfloat16 and
//! float32 accumulation.
//!
//! Decoding multiplies a few rows (one per sequence in the batch) by every weight matrix,
//! so a step is bound by reading the weights, not by arithmetic: bfloat16 halves the bytes.
//! Values are stored as `u16`, the upper half of an `f32`.
//!
//! Two kernels compute the same sums: one with AVX512-BF16's `vdpbf16ps` (32 products per
//! instruction), chosen at run time where the CPU has it, and a portable one that widens to
//! f32. Each output element is one dot product computed by one thread in a fixed order, so
//! results do not depend on the thread count or on how many rows are in the batch.

use rayon::prelude::*;

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

/// Which kernel [`matmul`] runs on this CPU: "avx512bf16" or "portable".
pub fn kernel_name() -> &'static str {
    if has_avx512bf16() {
        "avx512bf16"
    } else {
        "portable"
    }
}

fn has_avx512bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output columns in one packed block: one 512-bit register of f32 sums.
const BLOCK: usize = 16;
/// Output columns per parallel task (and the padding of a packed matrix): enough work to
/// pay for a rayon task, few enough that two cores share even a 256-column product.
const COLUMNS_PER_TASK: usize = 4 * BLOCK;
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
/// (bfloat16, row-major (m, k)); `out` is (m, n).
pub fn matmul(x: &[u16], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, out: &mut [f32]) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), m * k, "x is not m × k");
    assert_eq!(out.len(), m * n, "out is not m × n");
    assert!(bias.is_none_or(|b| b.len() == n), "bias is not n long");
    let fast = has_avx512bf16();
    let tasks = n.div_ceil(COLUMNS_PER_TASK);
    let columns = |task: usize| task * COLUMNS_PER_TASK..((task + 1) * COLUMNS_PER_TASK).min(n);
    // each task computes all m rows of its columns, (m, COLUMNS_PER_TASK), padding included
    let blocks: Vec<Vec<f32>> = (0..tasks)
        .into_par_iter()
        .map(|task| {
            let mut block = vec![0f32; m * COLUMNS_PER_TASK];
            for i0 in (0..m).step_by(TILE_ROWS) {
                let rows = TILE_ROWS.min(m - i0);
                let xs = &x[i0 * k..(i0 + rows) * k];
                let sums = &mut block[i0 * COLUMNS_PER_TASK..(i0 + rows) * COLUMNS_PER_TASK];
                task_tile(fast, xs, rows, w, task, sums);
            }
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

/// `sums[c · COLUMNS_PER_TASK + j] = xs_c · W[task columns][j]` for up to four input rows.
fn task_tile(fast: bool, xs: &[u16], rows: usize, w: &PackedMatrix, task: usize, sums: &mut [f32]) {
    let first_block = task * COLUMNS_PER_TASK / BLOCK;
    let blocks: [&[u16]; COLUMNS_PER_TASK / BLOCK] =
        std::array::from_fn(|b| w.block(first_block + b));
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is true only when the CPU reports avx512f, avx512bw and avx512bf16
        unsafe {
            match rows {
                1 => avx512::tile::<1>(xs, w.k, &blocks, sums),
                2 => avx512::tile::<2>(xs, w.k, &blocks, sums),
                3 => avx512::tile::<3>(xs, w.k, &blocks, sums),
                _ => avx512::tile::<4>(xs, w.k, &blocks, sums),
            }
        }
        return;
    }
    let _ = fast;
    portable_tile(xs, rows, w.k, &blocks, sums);
}

/// The same sums without SIMD instructions: each pair of products is added in f32.
fn portable_tile(xs: &[u16], rows: usize, k: usize, blocks: &[&[u16]], sums: &mut [f32]) {
    for c in 0..rows {
        let x = &xs[c * k..(c + 1) * k];
        for (b, packed) in blocks.iter().enumerate() {
            let mut acc = [0f32; BLOCK];
            for (pair, weights) in packed.chunks_exact(2 * BLOCK).enumerate() {
                let x0 = from_bf16(x[2 * pair]);
                let x1 = x.get(2 * pair + 1).map_or(0.0, |&v| from_bf16(v));
                for (lane, sum) in acc.iter_mut().enumerate() {
                    *sum +=
                        x0 * from_bf16(weights[2 * lane]) + x1 * from_bf16(weights[2 * lane + 1]);
                }
            }
            sums[c * COLUMNS_PER_TASK + b * BLOCK..][..BLOCK].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, COLUMNS_PER_TASK};
    use std::arch::x86_64::*;

    /// R input rows × four blocks of 16 columns: per pair of k, four weight loads and R
    /// broadcasts feed 4·R `vdpbf16ps` (32 multiply-adds each) into 4·R registers of sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn tile<const R: usize>(
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

    /// The product computed plainly, in f64.
    fn reference(x: &[u16], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|t| from_bf16(x[i * k + t]) as f64 * w[j * k + t] as f64)
                    .sum();
            }
        }
        out
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

    #[test]
    fn matmul_matches_reference_for_odd_shapes() {
        // k not a multiple of 32 exercises the masked tail; n not a multiple of 4 or 32
        for &(m, n, k) in &[
            (1, 37, 70),
            (3, 65, 256),
            (16, 130, 33),
            (2, 1, 1),
            (5, 300, 96),
        ] {
            let x = random_bf16(m * k, 1 + m as u64);
            let w = random_f32(n * k, 7 + n as u64);
            let mut out = vec![0f32; m * n];
            matmul(&x, m, &PackedMatrix::pack(&w, n, k), None, &mut out);
            let expected = reference(&x, m, &w, n, k);
            for (got, want) in out.iter().zip(&expected) {
                assert!(
                    (*got as f64 - want).abs() < 1e-4 * k as f64,
                    "{got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let (n, k) = (97, 160);
        let x = random_bf16(6 * k, 3);
        let w = random_f32(n * k, 4);
        let mut batch = vec![0f32; 6 * n];
        let packed = PackedMatrix::pack(&w, n, k);
        matmul(&x, 6, &packed, None, &mut batch);
        for i in 0..6 {
            let mut alone = vec![0f32; n];
            matmul(&x[i * k..(i + 1) * k], 1, &packed, None, &mut alone);
            assert_eq!(alone, batch[i * n..(i + 1) * n].to_vec(), "row {i}");
        }
    }

    #[test]
    fn portable_and_simd_kernels_agree_with_a_scalar_reference() {
        // the reference unpacks nothing and shares no code with the kernels: plain f32 loops
        // over the row-major inputs with the weights rounded to bf16 as packing does, so a
        // wrong kernel fails on every CPU, whichever kernel `matmul` would pick here
        let (n, k, max_rows) = (70, 201, TILE_ROWS);
        let x = random_bf16(max_rows * k, 11);
        let w = random_f32(n * k, 12);
        let packed = PackedMatrix::pack(&w, n, k);
        let tasks = n.div_ceil(COLUMNS_PER_TASK);
        let reference_tile = |rows: usize, task: usize| -> Vec<f32> {
            let mut sums = vec![0f32; rows * COLUMNS_PER_TASK];
            for c in 0..rows {
                for lane in 0..COLUMNS_PER_TASK {
                    let j = task * COLUMNS_PER_TASK + lane;
                    if j >= n {
                        continue; // padding columns hold zero weights
                    }
                    let mut sum = 0f32;
                    for t in 0..k {
                        sum += from_bf16(x[c * k + t]) * from_bf16(to_bf16(w[j * k + t]));
                    }
                    sums[c * COLUMNS_PER_TASK + lane] = sum;
                }
            }
            sums
        };
        let close = |got: &[f32], want: &[f32], kernel: &str, rows: usize, task: usize| {
            for (index, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() < 1e-3,
                    "{kernel} rows {rows} task {task} sum {index}: {a} vs {b}"
                );
            }
        };
        // every tile height (the SIMD kernel has one instance per height) and both tasks,
        // the second one mostly padding
        for rows in 1..=max_rows {
            for task in 0..tasks {
                let want = reference_tile(rows, task);
                let first_block = task * COLUMNS_PER_TASK / BLOCK;
                let blocks: Vec<&[u16]> = (0..COLUMNS_PER_TASK / BLOCK)
                    .map(|b| packed.block(first_block + b))
                    .collect();
                let mut portable = vec![0f32; rows * COLUMNS_PER_TASK];
                portable_tile(&x[..rows * k], rows, k, &blocks, &mut portable);
                close(&portable, &want, "portable", rows, task);
                if has_avx512bf16() {
                    let mut simd = vec![0f32; rows * COLUMNS_PER_TASK];
                    task_tile(true, &x[..rows * k], rows, &packed, task, &mut simd);
                    close(&simd, &want, "avx512bf16", rows, task);
                }
            }
        }
    }

    #[test]
    fn bias_is_added_per_output_column() {
        let (m, n, k) = (3, 10, 64);
        let x = random_bf16(m * k, 5);
        let w = PackedMatrix::pack(&random_f32(n * k, 6), n, k);
        let bias: Vec<f32> = (0..n).map(|j| j as f32).collect();
        let (mut plain, mut biased) = (vec![0f32; m * n], vec![0f32; m * n]);
        matmul(&x, m, &w, None, &mut plain);
        matmul(&x, m, &w, Some(&bias), &mut biased);
        for (index, (a, b)) in plain.iter().zip(&biased).enumerate() {
            assert_eq!(a + (index % n) as f32, *b);
        }
    }
}
