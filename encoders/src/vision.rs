//! The vision front end and encoder: a video frame resized so its longest
//! side is the encoder's input size (bicubic, computed as Pillow computes
//! it), centred on a black square, scaled to [0, 1] and normalised per
//! channel; then an ONNX vision encoder with the avlm contract: input
//! `pixel_values` `[batch, 3, size, size]`, outputs `patches`
//! `[batch, grid_h * grid_w, dim]` (row-major) and, optionally, `pooled`
//! `[batch, dim]` (a pooling head's output, such as SigLIP's `pooler_output`
//! or a CNN's global average).
//!
//! The front end is Pillow's separable resampling (a horizontal pass into an
//! 8-bit image, then a vertical one), so features computed in training with
//! `PIL.Image.resize(..., BICUBIC)` match what the server computes: every
//! pixel within one 8-bit level (Pillow uses fixed-point weights).

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::media::Frame;
use crate::{runtime, EncoderError};

/// How a frame becomes the encoder's input.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionPreprocess {
    /// Side of the square input, in pixels.
    pub size: u32,
    /// Per-channel (RGB) mean and standard deviation of `x / 255`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// An 8-bit RGB image resized for the encoder, before padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Resized {
    pub width: u32,
    pub height: u32,
    /// Packed RGB, `width * 3` bytes a row.
    pub data: Vec<u8>,
}

impl VisionPreprocess {
    /// The size a `width` x `height` frame is resized to: the longest side
    /// becomes `size`, the other keeps the aspect ratio (rounded, at least 1).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        let longest = width.max(height).max(1);
        let scale = |side: u32| -> u32 {
            ((f64::from(side) * f64::from(self.size) / f64::from(longest)).round() as u32).max(1)
        };
        if width >= height {
            (self.size, scale(height))
        } else {
            (scale(width), self.size)
        }
    }

    /// Resizes `frame` (bicubic) so its longest side is `size`.
    pub fn resize(&self, frame: &Frame) -> Resized {
        let (w, h) = self.resized_size(frame.width, frame.height);
        let (sw, sh) = (frame.width as usize, frame.height as usize);
        let mut packed = Vec::with_capacity(sw * sh * 3);
        for y in 0..frame.height {
            packed.extend_from_slice(frame.row(y));
        }
        let horizontal = if w as usize != sw {
            resample_rows(&packed, sw, sh, w as usize)
        } else {
            packed
        };
        let data = if h as usize != sh {
            resample_columns(&horizontal, w as usize, sh, h as usize)
        } else {
            horizontal
        };
        Resized {
            width: w,
            height: h,
            data,
        }
    }

    /// The encoder input for `frame`: `[3, size, size]` channel-major, the
    /// resized picture centred at `((size - w) / 2, (size - h) / 2)` on black.
    pub fn pixels(&self, frame: &Frame) -> Vec<f32> {
        let r = self.resize(frame);
        let s = self.size as usize;
        let (w, h) = (r.width as usize, r.height as usize);
        let (x0, y0) = ((s - w) / 2, (s - h) / 2);
        let mut out = vec![0f32; 3 * s * s];
        for c in 0..3 {
            let black = -self.mean[c] / self.std[c];
            let plane = &mut out[c * s * s..(c + 1) * s * s];
            plane.fill(black);
            for y in 0..h {
                let row = &r.data[y * w * 3..(y + 1) * w * 3];
                let dst = &mut plane[(y0 + y) * s + x0..(y0 + y) * s + x0 + w];
                for (x, d) in dst.iter_mut().enumerate() {
                    *d = (f32::from(row[x * 3 + c]) / 255.0 - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index along an axis of `input` samples resized to
/// `output`: the first input index and the normalised weights (Pillow's
/// `precompute_coeffs`: the kernel widens by the scale when shrinking, so
/// shrinking averages instead of aliasing).
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5) as isize).max(0) as usize;
            let hi = ((center + support + 0.5) as isize).min(input as isize) as usize;
            let mut w: Vec<f64> = (lo..hi)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

/// Rounds like Pillow's fixed-point resampler (half up) and clips to 8 bits.
fn to_u8(v: f64) -> u8 {
    (v + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// Horizontal pass: `height` rows of `width` RGB pixels to `out_w` wide.
fn resample_rows(src: &[u8], width: usize, height: usize, out_w: usize) -> Vec<u8> {
    let coeffs = coefficients(width, out_w);
    let mut out = vec![0u8; out_w * height * 3];
    for y in 0..height {
        let row = &src[y * width * 3..(y + 1) * width * 3];
        for (x, (lo, w)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let v: f64 = w
                    .iter()
                    .enumerate()
                    .map(|(k, wk)| wk * f64::from(row[(lo + k) * 3 + c]))
                    .sum();
                out[(y * out_w + x) * 3 + c] = to_u8(v);
            }
        }
    }
    out
}

/// Vertical pass: `height` rows of `width` RGB pixels to `out_h` rows.
fn resample_columns(src: &[u8], width: usize, height: usize, out_h: usize) -> Vec<u8> {
    let coeffs = coefficients(height, out_h);
    let stride = width * 3;
    let mut out = vec![0u8; stride * out_h];
    let mut acc = vec![0f64; stride];
    for (y, (lo, w)) in coeffs.iter().enumerate() {
        acc.fill(0.0);
        for (k, wk) in w.iter().enumerate() {
            let row = &src[(lo + k) * stride..(lo + k + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += wk * f64::from(p);
            }
        }
        for (o, &a) in out[y * stride..(y + 1) * stride].iter_mut().zip(&acc) {
            *o = to_u8(a);
        }
    }
    out
}

/// What a vision encoder gives for one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionFeatures {
    /// The pooling head's output (`dim` values), when the model has one.
    pub pooled: Option<Vec<f32>>,
    /// `grid.0 * grid.1` patch vectors of `dim` values, row-major.
    pub patches: Vec<f32>,
    pub grid: (usize, usize),
    pub dim: usize,
}

/// An ONNX vision encoder (see the module docs for its contract).
pub struct VisionEncoder {
    path: PathBuf,
    session: Session,
    size: usize,
    dim: usize,
    patches: usize,
    has_pooled: bool,
}

impl std::fmt::Debug for VisionEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionEncoder")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("dim", &self.dim)
            .field("patches", &self.patches)
            .field("has_pooled", &self.has_pooled)
            .finish()
    }
}

impl VisionEncoder {
    /// Loads an encoder on `threads` intra-op threads and checks its contract.
    pub fn load(path: &Path, threads: usize) -> Result<Self, EncoderError> {
        let session = runtime::session(
            path,
            threads,
            "run tools/setup.sh to convert the vision encoder",
        )?;
        let contract = |reason: String| EncoderError::Contract {
            model: path.display().to_string(),
            reason,
        };
        let shape_of = |name: &str, inputs: bool| -> Result<Option<Vec<i64>>, EncoderError> {
            let found = if inputs {
                session
                    .inputs()
                    .iter()
                    .find(|i| i.name() == name)
                    .map(|i| i.dtype().tensor_shape().cloned())
            } else {
                session
                    .outputs()
                    .iter()
                    .find(|o| o.name() == name)
                    .map(|o| o.dtype().tensor_shape().cloned())
            };
            match found {
                None => Ok(None),
                Some(None) => Err(contract(format!("`{name}` is not a tensor"))),
                Some(Some(shape)) => Ok(Some(shape.iter().copied().collect())),
            }
        };
        let input = shape_of("pixel_values", true)?
            .ok_or_else(|| contract("no input named `pixel_values`".into()))?;
        let patches = shape_of("patches", false)?
            .ok_or_else(|| contract("no output named `patches`".into()))?;
        let pooled = shape_of("pooled", false)?;
        let (size, n_patches, dim) = match (&input[..], &patches[..]) {
            ([_, 3, h, w], [_, p, d]) if h == w && *h > 0 && *p > 0 && *d > 0 => {
                (*h as usize, *p as usize, *d as usize)
            }
            _ => {
                return Err(contract(format!(
                    "expected pixel_values [batch, 3, size, size] -> patches [batch, patches, dim], found {input:?} -> {patches:?}"
                )))
            }
        };
        if let Some(p) = &pooled {
            if !matches!(&p[..], [_, d] if *d as usize == dim) {
                return Err(contract(format!(
                    "`pooled` has shape {p:?}; expected [batch, {dim}]"
                )));
            }
        }
        Ok(VisionEncoder {
            path: path.to_path_buf(),
            session,
            size,
            dim,
            patches: n_patches,
            has_pooled: pooled.is_some(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Side of the square input.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Width of every output vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Patch vectors per frame.
    pub fn patches(&self) -> usize {
        self.patches
    }

    /// The patch grid (rows, columns): square when the patch count is a
    /// square, else one row.
    pub fn grid(&self) -> (usize, usize) {
        let side = (self.patches as f64).sqrt().round() as usize;
        if side * side == self.patches {
            (side, side)
        } else {
            (1, self.patches)
        }
    }

    pub fn has_pooled(&self) -> bool {
        self.has_pooled
    }

    /// Runs one preprocessed frame (`[3, size, size]`).
    pub fn encode(&mut self, pixels: &[f32]) -> Result<VisionFeatures, EncoderError> {
        let s = self.size;
        if pixels.len() != 3 * s * s {
            return Err(EncoderError::Contract {
                model: self.path.display().to_string(),
                reason: format!("{} input values; expected 3 x {s} x {s}", pixels.len()),
            });
        }
        let grid = self.grid();
        let model = self.path.display().to_string();
        let infer = |source: ort::Error| EncoderError::Inference {
            model: model.clone(),
            source,
        };
        let input = TensorRef::from_array_view(([1usize, 3, s, s], pixels)).map_err(infer)?;
        let outputs = self
            .session
            .run(ort::inputs!["pixel_values" => input])
            .map_err(infer)?;
        let (shape, data) = outputs["patches"]
            .try_extract_tensor::<f32>()
            .map_err(infer)?;
        if shape.len() != 3 || shape[1] as usize != self.patches || shape[2] as usize != self.dim {
            return Err(EncoderError::Contract {
                model,
                reason: format!(
                    "patches of shape {shape:?}; expected [1, {}, {}]",
                    self.patches, self.dim
                ),
            });
        }
        let patches = data.to_vec();
        let pooled = if self.has_pooled {
            let (shape, data) = outputs["pooled"]
                .try_extract_tensor::<f32>()
                .map_err(infer)?;
            if shape.len() != 2 || shape[1] as usize != self.dim {
                return Err(EncoderError::Contract {
                    model,
                    reason: format!("pooled of shape {shape:?}; expected [1, {}]", self.dim),
                });
            }
            Some(data.to_vec())
        } else {
            None
        };
        Ok(VisionFeatures {
            pooled,
            patches,
            grid,
            dim: self.dim,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(width: u32, height: u32, f: impl Fn(u32, u32, usize) -> u8) -> Frame {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        Frame {
            width,
            height,
            stride: width as usize * 3,
            data,
            pts_s: 0.0,
        }
    }

    #[test]
    fn the_longest_side_becomes_the_input_size() {
        let p = VisionPreprocess {
            size: 260,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        assert_eq!(p.resized_size(1920, 1080), (260, 146));
        assert_eq!(p.resized_size(1080, 1920), (146, 260));
        assert_eq!(p.resized_size(100, 100), (260, 260));
        assert_eq!(p.resized_size(4000, 1), (260, 1));
    }

    #[test]
    fn a_flat_frame_stays_flat_and_the_padding_is_black() {
        let p = VisionPreprocess {
            size: 8,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let px = p.pixels(&frame(16, 8, |_, _, c| [255, 0, 51][c]));
        // 16x8 -> 8x4, rows 2..6 of 8.
        let at = |c: usize, y: usize, x: usize| px[c * 64 + y * 8 + x];
        for x in 0..8 {
            assert_eq!(at(0, 0, x), -1.0);
            assert_eq!(at(0, 3, x), 1.0);
            assert_eq!(at(1, 3, x), -1.0);
            assert!((at(2, 5, x) - (0.2 - 0.5) / 0.5).abs() < 1e-6);
            assert_eq!(at(2, 7, x), -1.0);
        }
    }
}
