//! How a vision encoder's output becomes a frame's tokens before the MLP:
//! VideoLLM-online's layout (the pooling head's vector, then the patch grid
//! average-pooled to a small grid, row-major) or SmolVLM's pixel shuffle
//! (each `factor x factor` block of patches concatenated into one token).
//! Plain functions on row-major `f32` slices.

use serde::{Deserialize, Serialize};

use crate::error::{ProjectorError, Result};

/// The token layout of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VisionTokens {
    /// The pooled vector first, then the patch grid average-pooled to
    /// `grid x grid` (`adaptive_avg_pool2d`), row-major: `1 + grid^2` tokens
    /// of the encoder's width (VideoLLM-online: grid 3, 10 tokens).
    PooledGrid { grid: usize },
    /// The patch grid average-pooled to `grid x grid`, without a pooled token.
    Grid { grid: usize },
    /// Idefics3 / SmolVLM pixel shuffle: `(h / factor) * (w / factor)` tokens
    /// of width `dim * factor^2`.
    PixelShuffle { factor: usize },
}

impl VisionTokens {
    /// Tokens per frame for a `grid` of patches.
    pub fn count(&self, grid: (usize, usize)) -> usize {
        match *self {
            VisionTokens::PooledGrid { grid: g } => 1 + g * g,
            VisionTokens::Grid { grid: g } => g * g,
            VisionTokens::PixelShuffle { factor } => {
                (grid.0 / factor.max(1)) * (grid.1 / factor.max(1))
            }
        }
    }

    /// Width of each token for an encoder of width `dim`.
    pub fn width(&self, dim: usize) -> usize {
        match *self {
            VisionTokens::PixelShuffle { factor } => dim * factor * factor,
            _ => dim,
        }
    }

    /// Whether the layout reads the encoder's pooled output.
    pub fn needs_pooled(&self) -> bool {
        matches!(self, VisionTokens::PooledGrid { .. })
    }

    /// Checks the layout against an encoder's patch grid.
    pub fn check(&self, grid: (usize, usize), has_pooled: bool) -> Result<()> {
        let bad = |why: String| Err(ProjectorError::InvalidConfig(why));
        match *self {
            VisionTokens::PooledGrid { grid: g } | VisionTokens::Grid { grid: g } => {
                if g == 0 || g > grid.0 || g > grid.1 {
                    return bad(format!(
                        "vision tokens pool a {}x{} patch grid to {g}x{g}: the pooled grid must be 1..=the patch grid",
                        grid.0, grid.1
                    ));
                }
                if self.needs_pooled() && !has_pooled {
                    return bad(
                        "vision tokens `pooled_grid` need the encoder's `pooled` output, and it has none".into(),
                    );
                }
            }
            VisionTokens::PixelShuffle { factor } => {
                if factor == 0 || !grid.0.is_multiple_of(factor) || !grid.1.is_multiple_of(factor) {
                    return bad(format!(
                        "pixel shuffle factor {factor} must divide the {}x{} patch grid",
                        grid.0, grid.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// The frame's tokens, `count * width` values row-major.
    pub fn tokens(
        &self,
        pooled: Option<&[f32]>,
        patches: &[f32],
        grid: (usize, usize),
        dim: usize,
    ) -> Result<Vec<f32>> {
        self.check(grid, pooled.is_some())?;
        if patches.len() != grid.0 * grid.1 * dim {
            return Err(ProjectorError::InvalidInput(format!(
                "{} patch values for a {}x{} grid of width {dim}",
                patches.len(),
                grid.0,
                grid.1
            )));
        }
        Ok(match *self {
            VisionTokens::PooledGrid { grid: g } => {
                let pooled = pooled.unwrap_or_default();
                if pooled.len() != dim {
                    return Err(ProjectorError::InvalidInput(format!(
                        "pooled vector of {} values; expected {dim}",
                        pooled.len()
                    )));
                }
                let mut out = pooled.to_vec();
                out.extend(adaptive_avg_pool(patches, grid, dim, (g, g)));
                out
            }
            VisionTokens::Grid { grid: g } => adaptive_avg_pool(patches, grid, dim, (g, g)),
            VisionTokens::PixelShuffle { factor } => pixel_shuffle(patches, grid, dim, factor),
        })
    }
}

/// PyTorch's `adaptive_avg_pool2d` over a row-major `grid` of `dim`-wide
/// vectors: output cell `(i, j)` averages rows `floor(i*h/oh)..ceil((i+1)*h/oh)`
/// and the same for columns.
pub fn adaptive_avg_pool(
    patches: &[f32],
    grid: (usize, usize),
    dim: usize,
    out: (usize, usize),
) -> Vec<f32> {
    let (h, w) = grid;
    let mut result = Vec::with_capacity(out.0 * out.1 * dim);
    for i in 0..out.0 {
        let (y0, y1) = (i * h / out.0, ((i + 1) * h).div_ceil(out.0));
        for j in 0..out.1 {
            let (x0, x1) = (j * w / out.1, ((j + 1) * w).div_ceil(out.1));
            let mut acc = vec![0f64; dim];
            for y in y0..y1 {
                for x in x0..x1 {
                    let v = &patches[(y * w + x) * dim..(y * w + x + 1) * dim];
                    for (a, &p) in acc.iter_mut().zip(v) {
                        *a += f64::from(p);
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as f64;
            result.extend(acc.iter().map(|a| (a / n) as f32));
        }
    }
    result
}

/// Idefics3's pixel shuffle: output token `(r, c)` of the `(h/f) x (w/f)`
/// grid holds, at `((i * f + j) * dim ..)`, the patch `(r*f + i, c*f + j)`
/// (what its view / permute / reshape sequence computes).
pub fn pixel_shuffle(patches: &[f32], grid: (usize, usize), dim: usize, factor: usize) -> Vec<f32> {
    let (h, w) = grid;
    let f = factor;
    let mut out = Vec::with_capacity(patches.len());
    for r in 0..h / f {
        for c in 0..w / f {
            for i in 0..f {
                for j in 0..f {
                    let p = (r * f + i) * w + c * f + j;
                    out.extend_from_slice(&patches[p * dim..(p + 1) * dim]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_a_9x9_grid_to_3x3_averages_exact_blocks() {
        let patches: Vec<f32> = (0..81).map(|i| i as f32).collect();
        let out = adaptive_avg_pool(&patches, (9, 9), 1, (3, 3));
        // Block (0, 0): rows 0..3, cols 0..3: mean of 0,1,2,9,10,11,18,19,20.
        assert_eq!(out[0], 10.0);
        assert_eq!(out[4], 40.0);
        assert_eq!(out[8], 70.0);
    }

    #[test]
    fn pooled_grid_puts_the_pooled_vector_first() {
        let t = VisionTokens::PooledGrid { grid: 1 };
        let out = t
            .tokens(Some(&[7.0, 8.0]), &[1.0, 2.0, 3.0, 4.0], (1, 2), 2)
            .unwrap();
        assert_eq!(out, vec![7.0, 8.0, 2.0, 3.0]);
        assert!(t.tokens(None, &[1.0, 2.0, 3.0, 4.0], (1, 2), 2).is_err());
    }

    #[test]
    fn pixel_shuffle_refuses_a_grid_it_does_not_divide() {
        let t = VisionTokens::PixelShuffle { factor: 4 };
        let e = t.check((6, 6), false).unwrap_err().to_string();
        assert!(e.contains("factor 4"), "{e}");
        assert_eq!(t.count((8, 8)), 4);
        assert_eq!(t.width(3), 48);
    }
}
