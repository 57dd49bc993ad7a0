//! The lip encoder: AV-HuBERT's video path (as Llama-AVSR runs it) as an
//! ONNX model built by tools/avsr/avhubert_onnx.py. Mouth crops in, one
//! feature vector per video frame (25 Hz) out.
//!
//! Contract: input `video` `[batch, 1, frames, 88, 88]` (grayscale crops
//! already scaled to [0, 1] and normalised with mean 0.421 and std 0.165),
//! output `features` `[batch, frames, dim]`. `frames` is free (at least 1);
//! the encoder sees the whole clip at once (its positional convolution and
//! attention span every frame), so a clip is encoded in one call.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::{runtime, EncoderError};

/// Side of the square mouth crop the encoder takes.
pub const CROP_SIZE: usize = 88;

/// Encoder output: `frames` rows of `dim` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct LipFeatures {
    pub frames: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl LipFeatures {
    /// The features of frame `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// An ONNX lip encoder (see the module docs for its contract).
pub struct LipEncoder {
    path: PathBuf,
    session: Session,
    dim: usize,
}

impl std::fmt::Debug for LipEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LipEncoder")
            .field("path", &self.path)
            .field("dim", &self.dim)
            .finish()
    }
}

impl LipEncoder {
    /// Loads an encoder on `threads` intra-op threads and checks its contract.
    pub fn load(path: &Path, threads: usize) -> Result<Self, EncoderError> {
        let session = runtime::session(path, threads, "build it with tools/avsr/avhubert_onnx.py")?;
        let contract = |reason: String| EncoderError::Contract {
            model: path.display().to_string(),
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == "video")
            .ok_or_else(|| contract("no input named `video`".into()))?
            .dtype()
            .tensor_shape()
            .cloned()
            .ok_or_else(|| contract("`video` is not a tensor".into()))?;
        let output = session
            .outputs()
            .iter()
            .find(|o| o.name() == "features")
            .ok_or_else(|| contract("no output named `features`".into()))?
            .dtype()
            .tensor_shape()
            .cloned()
            .ok_or_else(|| contract("`features` is not a tensor".into()))?;
        let side = CROP_SIZE as i64;
        let dim = match (&input[..], &output[..]) {
            ([_, 1, _, h, w], [_, _, d]) if *h == side && *w == side && *d > 0 => *d as usize,
            _ => {
                return Err(contract(format!(
                    "expected video [batch, 1, frames, {side}, {side}] -> features [batch, frames, dim], found {:?} -> {:?}",
                    &input[..],
                    &output[..]
                )))
            }
        };
        Ok(LipEncoder {
            path: path.to_path_buf(),
            session,
            dim,
        })
    }

    /// Width of each output feature vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes one clip: `crops` is `[frames, 88, 88]` row-major, already
    /// normalised (see the module docs).
    pub fn encode(&mut self, crops: &[f32], frames: usize) -> Result<LipFeatures, EncoderError> {
        let model = self.path.display().to_string();
        let per_frame = CROP_SIZE * CROP_SIZE;
        if frames == 0 || crops.len() != frames * per_frame {
            return Err(EncoderError::Contract {
                model,
                reason: format!(
                    "{} crop values for {frames} frames; expected at least one frame of {CROP_SIZE} x {CROP_SIZE}",
                    crops.len()
                ),
            });
        }
        let infer = |source: ort::Error| EncoderError::Inference {
            model: model.clone(),
            source,
        };
        let input = TensorRef::from_array_view(([1usize, 1, frames, CROP_SIZE, CROP_SIZE], crops))
            .map_err(infer)?;
        let outputs = self
            .session
            .run(ort::inputs!["video" => input])
            .map_err(infer)?;
        let (shape, data) = outputs["features"]
            .try_extract_tensor::<f32>()
            .map_err(infer)?;
        if shape.len() != 3
            || shape[0] != 1
            || shape[1] as usize != frames
            || shape[2] as usize != self.dim
        {
            return Err(EncoderError::Contract {
                model,
                reason: format!(
                    "features of shape {shape:?}; expected [1, {frames}, {}]",
                    self.dim
                ),
            });
        }
        Ok(LipFeatures {
            frames,
            dim: self.dim,
            data: data.to_vec(),
        })
    }
}
