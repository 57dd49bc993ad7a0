//! The Whisper audio encoder as an ONNX model (converted from CTranslate2 or
//! Hugging Face weights by tools/whisper/): log-mel frames of any even length
//! up to 3000 in, `frames / 2` feature vectors out.
//!
//! ONNX Runtime runs a session under `&mut`, so the encoder belongs to one
//! model thread; it is loaded once per server.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use crate::mel::MelSpectrogram;
use crate::{runtime, EncoderError};

/// Longest input Whisper's positional table covers (30 s).
pub const MAX_FRAMES: usize = 3000;

/// Encoder output: `frames` rows of `dim` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub frames: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Features {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

pub struct WhisperEncoder {
    path: PathBuf,
    session: Session,
    n_mels: usize,
    dim: usize,
}

impl std::fmt::Debug for WhisperEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperEncoder")
            .field("path", &self.path)
            .field("n_mels", &self.n_mels)
            .field("dim", &self.dim)
            .finish()
    }
}

impl WhisperEncoder {
    /// Loads an encoder with the avlm ONNX contract (input `mel`
    /// [batch, n_mels, frames], output `features` [batch, frames/2, dim]),
    /// running on `threads` intra-op threads.
    pub fn load(path: &Path, threads: usize) -> Result<Self, EncoderError> {
        let session = runtime::session(
            path,
            threads,
            "run tools/setup.sh to convert the Whisper encoder",
        )?;
        let contract = |reason: String| EncoderError::Contract {
            model: path.display().to_string(),
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == "mel")
            .ok_or_else(|| contract("no input named `mel`".into()))?;
        let in_shape = input
            .dtype()
            .tensor_shape()
            .cloned()
            .ok_or_else(|| contract("`mel` is not a tensor".into()))?;
        let output = session
            .outputs()
            .iter()
            .find(|o| o.name() == "features")
            .ok_or_else(|| contract("no output named `features`".into()))?;
        let out_shape = output
            .dtype()
            .tensor_shape()
            .cloned()
            .ok_or_else(|| contract("`features` is not a tensor".into()))?;
        let (n_mels, dim) = match (&in_shape[..], &out_shape[..]) {
            ([_, m, _], [_, _, d]) if *m > 0 && *d > 0 => (*m as usize, *d as usize),
            _ => {
                return Err(contract(format!(
                    "expected mel [batch, n_mels, frames] -> features [batch, frames/2, dim], found {in_shape:?} -> {out_shape:?}"
                )))
            }
        };
        Ok(WhisperEncoder {
            path: path.to_path_buf(),
            session,
            n_mels,
            dim,
        })
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// Width of each output feature vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes a spectrogram with an even number of frames (at most 3000).
    pub fn encode(&mut self, mel: &MelSpectrogram) -> Result<Features, EncoderError> {
        if mel.n_mels != self.n_mels {
            return Err(EncoderError::Contract {
                model: self.path.display().to_string(),
                reason: format!(
                    "spectrogram has {} mel bands, the encoder takes {}",
                    mel.n_mels, self.n_mels
                ),
            });
        }
        if mel.frames == 0 || !mel.frames.is_multiple_of(2) || mel.frames > MAX_FRAMES {
            return Err(EncoderError::Contract {
                model: self.path.display().to_string(),
                reason: format!(
                    "{} frames: the encoder takes an even count from 2 to {MAX_FRAMES}",
                    mel.frames
                ),
            });
        }
        let infer = |source: ort::Error| EncoderError::Inference {
            model: "whisper encoder".into(),
            source,
        };
        let input =
            TensorRef::from_array_view(([1usize, mel.n_mels, mel.frames], mel.data.as_slice()))
                .map_err(infer)?;
        let outputs = self
            .session
            .run(ort::inputs!["mel" => input])
            .map_err(infer)?;
        let (shape, data) = outputs["features"]
            .try_extract_tensor::<f32>()
            .map_err(infer)?;
        let frames = mel.frames / 2;
        if shape.len() != 3 || shape[1] as usize != frames || shape[2] as usize != self.dim {
            return Err(EncoderError::Contract {
                model: self.path.display().to_string(),
                reason: format!(
                    "output shape {shape:?}, expected [1, {frames}, {}]",
                    self.dim
                ),
            });
        }
        Ok(Features {
            frames,
            dim: self.dim,
            data: data.to_vec(),
        })
    }
}
