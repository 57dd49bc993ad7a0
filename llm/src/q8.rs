//! 8-bit weights (blocks of 32 with an f32 scale, the values of ggml's
//! Q8_0) multiplied by activations quantized the same way, for decode steps.
//!
//! Why our own kernel: a decode step over many rows (beams of many
//! sessions) is compute-bound in candle's Q8_0 kernel, which converts the
//! f16 block scales and reloads each weight block once per row. Here a
//! weight block is loaded and its sign split once for up to four rows, scales
//! are f32, and output columns are spread over threads. Numbers equal a
//! Q8_0 x Q8_0 product up to f32 summation order.

use rayon::prelude::*;

const BLOCK: usize = 32;

/// A `[n, k]` weight matrix (PyTorch layout: one row per output feature).
pub struct Q8Matrix {
    n: usize,
    k: usize,
    q: Vec<i8>,
    /// Per row, `k / 32` block scales.
    d: Vec<f32>,
}

/// Rows quantized to 8 bits in blocks of 32, as Q8_0 stores them: scale
/// `max|x| / 127` rounded to f16, values rounded with the unrounded scale.
fn quantize_rows(x: &[f32], k: usize, q: &mut Vec<i8>, d: &mut Vec<f32>) {
    q.clear();
    d.clear();
    for block in x.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        d.push(half::f16::from_f32(scale).to_f32());
        q.extend(block.iter().map(|v| (v * inv).round() as i8));
    }
    debug_assert_eq!(q.len(), x.len() / k * k);
}

impl Q8Matrix {
    /// Quantizes a dense `[n, k]` f32 matrix (`k` a multiple of 32).
    pub fn from_dense(w: &[f32], n: usize, k: usize) -> Option<Self> {
        if !k.is_multiple_of(BLOCK) || w.len() != n * k {
            return None;
        }
        let (mut q, mut d) = (Vec::new(), Vec::new());
        quantize_rows(w, k, &mut q, &mut d);
        Some(Q8Matrix { n, k, q, d })
    }

    pub fn out_features(&self) -> usize {
        self.n
    }

    /// `x` `[m, k]` times this matrix transposed: `[m, n]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let kb = k / BLOCK;
        let (mut aq, mut ad) = (Vec::with_capacity(m * k), Vec::with_capacity(m * kb));
        quantize_rows(x, k, &mut aq, &mut ad);
        // Output transposed ([n, m]) so that threads own whole columns.
        let mut t = vec![0.0f32; n * m];
        let cols = (n / (4 * rayon::current_num_threads().max(1))).clamp(16, 256);
        t.par_chunks_mut(cols * m)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * cols;
                for (c, col_out) in out.chunks_mut(m).enumerate() {
                    let j = first + c;
                    let w = &self.q[j * k..(j + 1) * k];
                    let wd = &self.d[j * kb..(j + 1) * kb];
                    let mut r = 0;
                    while r < m {
                        let take = (m - r).min(4);
                        let row = |i: usize| {
                            let i = r + i;
                            (&aq[i * k..(i + 1) * k], &ad[i * kb..(i + 1) * kb])
                        };
                        let dst = &mut col_out[r..r + take];
                        match take {
                            1 => dst.copy_from_slice(&dot(w, wd, [row(0)])),
                            2 => dst.copy_from_slice(&dot(w, wd, [row(0), row(1)])),
                            3 => dst.copy_from_slice(&dot(w, wd, [row(0), row(1), row(2)])),
                            _ => dst.copy_from_slice(&dot(w, wd, [row(0), row(1), row(2), row(3)])),
                        }
                        r += take;
                    }
                }
            });
        let mut y = vec![0.0f32; m * n];
        for (j, col) in t.chunks_exact(m).enumerate() {
            for (i, v) in col.iter().enumerate() {
                y[i * n + j] = *v;
            }
        }
        y
    }
}

type Row<'a> = (&'a [i8], &'a [f32]);

/// Dot products of one weight row with `R` activation rows.
fn dot<const R: usize>(w: &[i8], wd: &[f32], rows: [Row<'_>; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features are present; slices hold `wd.len()` blocks.
        return unsafe { avx2::dot(w, wd, rows) };
    }
    let mut out = [0.0f32; R];
    for (o, (a, ad)) in out.iter_mut().zip(rows) {
        for (b, (wb, ab)) in w.chunks_exact(BLOCK).zip(a.chunks_exact(BLOCK)).enumerate() {
            let s: i32 = wb
                .iter()
                .zip(ab)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
            *o += s as f32 * (wd[b] * ad[b]);
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Row, BLOCK};

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot<const R: usize>(w: &[i8], wd: &[f32], rows: [Row<'_>; R]) -> [f32; R] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for (b, &wscale) in wd.iter().enumerate() {
            let wv = _mm256_loadu_si256(w.as_ptr().add(b * BLOCK) as *const __m256i);
            // |w| as unsigned bytes, and each activation takes w's sign, so
            // maddubs multiplies unsigned by signed as it must.
            let wabs = _mm256_sign_epi8(wv, wv);
            for (r, (a, ad)) in rows.iter().enumerate() {
                let av = _mm256_loadu_si256(a.as_ptr().add(b * BLOCK) as *const __m256i);
                let signed = _mm256_sign_epi8(av, wv);
                let pairs = _mm256_maddubs_epi16(wabs, signed);
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[r] = _mm256_fmadd_ps(sums, _mm256_set1_ps(wscale * ad[b]), acc[r]);
            }
        }
        let mut out = [0.0f32; R];
        for (o, v) in out.iter_mut().zip(acc) {
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(_mm256_castps256_ps128(v), hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *o = _mm_cvtss_f32(s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_dequantized_product_and_any_row_count() {
        let (n, k) = (37, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
            .collect();
        let m8 = Q8Matrix::from_dense(&w, n, k).unwrap();
        for m in [1, 3, 4, 6, 9] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729) % 97) as f32 / 40.0 - 1.2)
                .collect();
            let y = m8.matmul(&x, m);
            // The same product from the quantized values in f64.
            let (mut aq, mut ad) = (Vec::new(), Vec::new());
            quantize_rows(&x, k, &mut aq, &mut ad);
            for i in 0..m {
                for j in 0..n {
                    let mut want = 0.0f64;
                    for b in 0..k / BLOCK {
                        let s: i64 = (0..BLOCK)
                            .map(|t| {
                                i64::from(m8.q[j * k + b * BLOCK + t])
                                    * i64::from(aq[i * k + b * BLOCK + t])
                            })
                            .sum();
                        want += s as f64
                            * f64::from(m8.d[j * k / BLOCK + b])
                            * f64::from(ad[i * k / BLOCK + b]);
                    }
                    let got = f64::from(y[i * n + j]);
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "m={m} ({i},{j}): {got} vs {want}"
                    );
                    // And close to the float product: 8-bit rounding of both
                    // sides, relative to the size of the vectors.
                    let exact: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                    let norm: f32 = (0..k).map(|t| (x[i * k + t] * w[j * k + t]).abs()).sum();
                    assert!(
                        (y[i * n + j] - exact).abs() <= 0.01 * norm,
                        "{} vs {exact}",
                        y[i * n + j]
                    );
                }
            }
        }
        assert!(Q8Matrix::from_dense(&w[..n * 40], n, 40).is_none());
    }
}
