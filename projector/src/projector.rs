//! The projector itself: compression, then Linear -> activation -> Linear,
//! then an optional LayerNorm. Immutable once built, so one instance serves
//! every session.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::compress::compress;
use crate::config::{Activation, ProjectorConfig};
use crate::error::{ProjectorError, Result};

/// PyTorch's `nn.LayerNorm` default, which the reference projectors train with.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Raw projector weights in PyTorch `nn.Linear` layout (weight is
/// `[out_features, in_features]`). Any of f32, f16, bf16; converted to f32.
#[derive(Debug, Clone)]
pub struct ProjectorWeights {
    /// `[hidden_dim, fc1_in_dim]`
    pub fc1_weight: Tensor,
    /// `[hidden_dim]`
    pub fc1_bias: Tensor,
    /// `[output_dim, hidden_dim]`
    pub fc2_weight: Tensor,
    /// `[output_dim]`
    pub fc2_bias: Tensor,
    /// LayerNorm (weight, bias), each `[output_dim]`; required iff `layer_norm`.
    pub norm: Option<(Tensor, Tensor)>,
}

/// Maps encoder frames of one modality into LLM embeddings.
#[derive(Debug, Clone)]
pub struct Projector {
    config: ProjectorConfig,
    fc1: Linear,
    fc2: Linear,
    norm: Option<LayerNorm>,
    device: Device,
}

impl Projector {
    /// Builds a projector from tensors already in memory, checking every shape
    /// against `config`. Weights move to the device of `fc1_weight`.
    pub fn from_tensors(config: ProjectorConfig, weights: ProjectorWeights) -> Result<Self> {
        Self::build(config, weights, "")
    }

    /// As `from_tensors`, with `prefix` put in front of tensor names in errors.
    pub(crate) fn build(
        config: ProjectorConfig,
        weights: ProjectorWeights,
        prefix: &str,
    ) -> Result<Self> {
        config.validate()?;
        let device = weights.fc1_weight.device().clone();
        let (hidden, out) = (config.hidden_dim, config.output_dim);
        let take = |t: Tensor, suffix: &str, shape: &[usize]| {
            checked(t, &tensor_name(prefix, suffix), shape, &device)
        };
        let fc1_w = take(
            weights.fc1_weight,
            "fc1.weight",
            &[hidden, config.fc1_in_dim()],
        )?;
        let fc1_b = take(weights.fc1_bias, "fc1.bias", &[hidden])?;
        let fc2_w = take(weights.fc2_weight, "fc2.weight", &[out, hidden])?;
        let fc2_b = take(weights.fc2_bias, "fc2.bias", &[out])?;
        let norm = match (config.layer_norm, weights.norm) {
            (true, Some((w, b))) => Some(LayerNorm::new(
                take(w, "norm.weight", &[out])?,
                take(b, "norm.bias", &[out])?,
                LAYER_NORM_EPS,
            )),
            (true, None) => {
                return Err(ProjectorError::MissingTensor {
                    name: tensor_name(prefix, "norm.weight"),
                    source_name: "the given weights".into(),
                })
            }
            // Unused norm weights mean the config and the weights disagree;
            // refusing beats silently producing unnormalised embeddings.
            (false, Some(_)) => {
                return Err(ProjectorError::InvalidConfig(
                    "norm weights given but layer_norm is false".into(),
                ))
            }
            (false, None) => None,
        };
        Ok(Self {
            config,
            fc1: Linear::new(fc1_w, Some(fc1_b)),
            fc2: Linear::new(fc2_w, Some(fc2_b)),
            norm,
            device,
        })
    }

    pub fn config(&self) -> &ProjectorConfig {
        &self.config
    }

    /// The device the weights live on; `forward` moves its input here.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of output tokens for `frames` input frames (frames / k, leftover dropped).
    pub fn output_len(&self, frames: usize) -> usize {
        self.config.compression.output_len(frames)
    }

    /// features: `[frames, input_dim]` -> `[frames / k, output_dim]` f32.
    ///
    /// Fewer than `k` frames give a [0, output_dim] tensor, not an error.
    /// f16/bf16 input is accepted and computed in f32.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let (_, dim) = features.dims2().map_err(|_| {
            ProjectorError::InvalidInput(format!(
                "features must be [frames, {}], got shape {:?}",
                self.config.input_dim,
                features.dims()
            ))
        })?;
        if dim != self.config.input_dim {
            return Err(ProjectorError::InvalidInput(format!(
                "features have width {dim}, projector expects {}",
                self.config.input_dim
            )));
        }
        if !features.dtype().is_float() {
            return Err(ProjectorError::InvalidInput(format!(
                "features must be floating point, got {:?}",
                features.dtype()
            )));
        }
        let x = features.to_dtype(DType::F32)?.to_device(&self.device)?;
        let x = compress(&x, &self.config.compression)?;
        if x.dim(0)? == 0 {
            return Ok(Tensor::zeros(
                (0, self.config.output_dim),
                DType::F32,
                &self.device,
            )?);
        }
        let h = self.fc1.forward(&x)?;
        let h = match self.config.activation {
            Activation::Relu => h.relu()?,
            Activation::Gelu => h.gelu_erf()?,
        };
        let y = self.fc2.forward(&h)?;
        match &self.norm {
            Some(norm) => Ok(norm.forward(&y)?),
            None => Ok(y),
        }
    }

    /// Checks that this projector fits an encoder producing `input_dim`-wide
    /// frames and an LLM whose hidden size is `llm_hidden`.
    pub fn check(&self, input_dim: usize, llm_hidden: usize) -> Result<()> {
        // The weights were checked against the config when built, so the
        // config's widths are the weights' widths.
        if self.config.input_dim != input_dim {
            return Err(ProjectorError::Incompatible {
                what: "input width",
                expected: input_dim,
                actual: self.config.input_dim,
            });
        }
        if self.config.output_dim != llm_hidden {
            return Err(ProjectorError::Incompatible {
                what: "output width",
                expected: llm_hidden,
                actual: self.config.output_dim,
            });
        }
        Ok(())
    }
}

/// `prefix.suffix`, or `suffix` alone when there is no prefix.
pub(crate) fn tensor_name(prefix: &str, suffix: &str) -> String {
    let prefix = prefix.trim_end_matches('.');
    if prefix.is_empty() {
        suffix.to_string()
    } else {
        format!("{prefix}.{suffix}")
    }
}

/// Verifies dtype and shape, then converts to f32 on `device`.
fn checked(t: Tensor, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
    if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(ProjectorError::UnsupportedDtype {
            name: name.to_string(),
            dtype: format!("{:?}", t.dtype()),
        });
    }
    if t.dims() != shape {
        return Err(ProjectorError::BadShape {
            name: name.to_string(),
            expected: shape.to_vec(),
            actual: t.dims().to_vec(),
        });
    }
    Ok(t.to_dtype(DType::F32)?.to_device(device)?)
}
