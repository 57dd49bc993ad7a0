//! The projector itself: compression, then Linear -> activation -> Linear
//! (or one Linear), then an optional LayerNorm. Immutable once built, so one
//! instance serves every session.

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
    /// `None` with one layer.
    fc2: Option<Linear>,
    norm: Option<LayerNorm>,
    device: Device,
}

impl Projector {
    /// Builds a projector from tensors already in memory, checking every shape
    /// against `config`. Weights move to the device of `fc1_weight`.
    pub fn from_tensors(config: ProjectorConfig, weights: ProjectorWeights) -> Result<Self> {
        Self::build(config, weights, "")
    }

    /// Builds a one-layer projector (`config.layers == 1`): `weight`
    /// `[output_dim, fc1_in_dim]`, `bias` `[output_dim]` if any.
    pub fn linear(config: ProjectorConfig, weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        Self::build_linear(config, weight, bias, None, "")
    }

    /// As `linear`, with LayerNorm weights and a tensor name prefix for errors.
    pub(crate) fn build_linear(
        config: ProjectorConfig,
        weight: Tensor,
        bias: Option<Tensor>,
        norm: Option<(Tensor, Tensor)>,
        prefix: &str,
    ) -> Result<Self> {
        config.validate()?;
        if config.layers != 1 {
            return Err(ProjectorError::InvalidConfig(format!(
                "a single linear layer given for a {}-layer projector",
                config.layers
            )));
        }
        let device = weight.device().clone();
        let out = config.output_dim;
        let take = |t: Tensor, suffix: &str, shape: &[usize]| {
            checked(t, &tensor_name(prefix, suffix), shape, &device)
        };
        let w = take(weight, "fc1.weight", &[out, config.fc1_in_dim()])?;
        let b = bias.map(|b| take(b, "fc1.bias", &[out])).transpose()?;
        let norm = Self::norm(&config, norm, prefix, &device)?;
        Ok(Self {
            config,
            fc1: Linear::new(w, b),
            fc2: None,
            norm,
            device,
        })
    }

    /// As `from_tensors`, with `prefix` put in front of tensor names in errors.
    pub(crate) fn build(
        config: ProjectorConfig,
        weights: ProjectorWeights,
        prefix: &str,
    ) -> Result<Self> {
        config.validate()?;
        if config.layers != 2 {
            return Err(ProjectorError::InvalidConfig(format!(
                "two linear layers given for a {}-layer projector",
                config.layers
            )));
        }
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
        let norm = Self::norm(&config, weights.norm, prefix, &device)?;
        Ok(Self {
            config,
            fc1: Linear::new(fc1_w, Some(fc1_b)),
            fc2: Some(Linear::new(fc2_w, Some(fc2_b))),
            norm,
            device,
        })
    }

    fn norm(
        config: &ProjectorConfig,
        weights: Option<(Tensor, Tensor)>,
        prefix: &str,
        device: &Device,
    ) -> Result<Option<LayerNorm>> {
        let out = config.output_dim;
        let take =
            |t: Tensor, suffix: &str| checked(t, &tensor_name(prefix, suffix), &[out], device);
        match (config.layer_norm, weights) {
            (true, Some((w, b))) => Ok(Some(LayerNorm::new(
                take(w, "norm.weight")?,
                take(b, "norm.bias")?,
                LAYER_NORM_EPS,
            ))),
            (true, None) => Err(ProjectorError::MissingTensor {
                name: tensor_name(prefix, "norm.weight"),
                source_name: "the given weights".into(),
            }),
            // Unused norm weights mean the config and the weights disagree;
            // refusing beats silently producing unnormalised embeddings.
            (false, Some(_)) => Err(ProjectorError::InvalidConfig(
                "norm weights given but layer_norm is false".into(),
            )),
            (false, None) => Ok(None),
        }
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
        let y = match &self.fc2 {
            None => h,
            Some(fc2) => fc2.forward(&match self.config.activation {
                Activation::Relu => h.relu()?,
                Activation::Gelu => h.gelu_erf()?,
            })?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;

    fn one_layer() -> ProjectorConfig {
        ProjectorConfig {
            compression: Compression::Stack { k: 1 },
            activation: Activation::Gelu,
            layer_norm: false,
            input_dim: 2,
            layers: 1,
            hidden_dim: 0,
            output_dim: 3,
        }
    }

    #[test]
    fn one_layer_is_a_plain_linear_map_with_or_without_bias() {
        let cpu = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., -2.], [1., 1.]], &cpu).unwrap();
        let x = Tensor::new(&[[3f32, -1.]], &cpu).unwrap();
        let p = Projector::linear(one_layer(), w.clone(), None).unwrap();
        // No activation: -2 * -1 = 2 and 3 - 1 = 2 pass through unchanged.
        let y: Vec<Vec<f32>> = p.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(y, vec![vec![3., 2., 2.]]);
        let b = Tensor::new(&[0.5f32, 0., -1.], &cpu).unwrap();
        let p = Projector::linear(one_layer(), w.clone(), Some(b)).unwrap();
        let y: Vec<Vec<f32>> = p.forward(&x).unwrap().to_vec2().unwrap();
        assert_eq!(y, vec![vec![3.5, 2., 1.]]);
        let e = Projector::linear(one_layer(), w.t().unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc1.weight"), "{e}");
    }

    #[test]
    fn the_layer_count_must_match_the_weights() {
        let cpu = Device::Cpu;
        let w = Tensor::zeros((3, 2), DType::F32, &cpu).unwrap();
        let two = ProjectorConfig {
            layers: 2,
            hidden_dim: 3,
            ..one_layer()
        };
        assert!(Projector::linear(two, w.clone(), None).is_err());
        let three = ProjectorConfig {
            layers: 3,
            ..one_layer()
        };
        assert!(three.validate().unwrap_err().to_string().contains("layers"));
        // hidden_dim only matters with two layers.
        assert!(one_layer().validate().is_ok());
    }
}
