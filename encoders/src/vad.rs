//! Silero VAD (v5 ONNX) run on 16 kHz mono audio in 32 ms windows.
//!
//! The model is recurrent: every stream carries its own LSTM state and the
//! last 64 samples of the previous window as left context, exactly as the
//! reference wrapper (`silero_vad.utils_vad.OnnxWrapper`) does. One
//! [`SileroVad`] holds the model bytes; each live stream owns a [`VadStream`]
//! with its own ONNX session (ONNX Runtime runs a session under `&mut`, so
//! per-stream sessions keep streams independent of each other).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::TensorRef;

use crate::{runtime, EncoderError};

/// Sample rate the VAD runs at.
pub const VAD_SAMPLE_RATE: u32 = crate::SAMPLE_RATE;
/// Samples per VAD window at 16 kHz (32 ms).
pub const VAD_CHUNK_SAMPLES: usize = 512;
/// Left context carried from the previous window.
const CONTEXT_SAMPLES: usize = 64;
/// LSTM state: [2, batch=1, 128].
const STATE_LEN: usize = 2 * 128;

/// The loaded Silero VAD model, shared by all streams.
#[derive(Clone)]
pub struct SileroVad {
    path: PathBuf,
    bytes: Arc<[u8]>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad")
            .field("path", &self.path)
            .finish()
    }
}

impl SileroVad {
    /// Reads the model file and checks that ONNX Runtime accepts it and that
    /// its inputs and outputs are Silero v5's.
    pub fn load(path: &Path) -> Result<Self, EncoderError> {
        let bytes = std::fs::read(path).map_err(|e| EncoderError::ModelLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let vad = SileroVad {
            path: path.to_path_buf(),
            bytes: bytes.into(),
        };
        let stream = vad.stream()?;
        let inputs: Vec<&str> = stream.session.inputs().iter().map(|i| i.name()).collect();
        let outputs: Vec<&str> = stream.session.outputs().iter().map(|o| o.name()).collect();
        if inputs != ["input", "state", "sr"] || outputs != ["output", "stateN"] {
            return Err(EncoderError::Contract {
                model: path.display().to_string(),
                reason: format!(
                    "expected inputs [input, state, sr] and outputs [output, stateN] (Silero VAD v5), found {inputs:?} and {outputs:?}"
                ),
            });
        }
        Ok(vad)
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh stream with zeroed state.
    pub fn stream(&self) -> Result<VadStream, EncoderError> {
        let env = runtime::environment()?;
        let load_err = |e: ort::Error| EncoderError::ModelLoad {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let session = Session::builder(env)
            .map_err(load_err)?
            .with_intra_threads(1)
            .map_err(|e| load_err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| load_err(e.into()))?
            .commit_from_memory(&self.bytes)
            .map_err(load_err)?;
        Ok(VadStream {
            session,
            state: vec![0.0; STATE_LEN],
            window: vec![0.0; CONTEXT_SAMPLES + VAD_CHUNK_SAMPLES],
        })
    }
}

/// One stream's VAD: an ONNX session plus the recurrent state it carries.
pub struct VadStream {
    session: Session,
    state: Vec<f32>,
    /// Left context followed by the current window.
    window: Vec<f32>,
}

impl VadStream {
    /// Speech probability of the next 512 samples (16 kHz) of the stream.
    pub fn probability(&mut self, chunk: &[f32; VAD_CHUNK_SAMPLES]) -> Result<f32, EncoderError> {
        self.window[CONTEXT_SAMPLES..].copy_from_slice(chunk);
        let infer_err = |source: ort::Error| EncoderError::Inference {
            model: "silero_vad".into(),
            source,
        };
        let sr = [i64::from(VAD_SAMPLE_RATE)];
        let outputs = self
            .session
            .run(ort::inputs![
                "input" => TensorRef::from_array_view(([1usize, self.window.len()], self.window.as_slice())).map_err(infer_err)?,
                "state" => TensorRef::from_array_view(([2usize, 1, 128], self.state.as_slice())).map_err(infer_err)?,
                "sr" => TensorRef::from_array_view(((), &sr[..])).map_err(infer_err)?,
            ])
            .map_err(infer_err)?;
        let (_, prob) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(infer_err)?;
        let (_, state) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(infer_err)?;
        if prob.len() != 1 || state.len() != STATE_LEN {
            return Err(EncoderError::Contract {
                model: "silero_vad".into(),
                reason: format!(
                    "output has {} values and state {} (expected 1 and {STATE_LEN})",
                    prob.len(),
                    state.len()
                ),
            });
        }
        let p = prob[0];
        self.state.copy_from_slice(state);
        drop(outputs);
        self.window.copy_within(VAD_CHUNK_SAMPLES.., 0);
        Ok(p)
    }

    /// Forgets all history, as at the start of a stream.
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.window.fill(0.0);
    }
}
