//! Reading projector weights out of a safetensors file, by name, without
//! loading the file's other tensors (a bundle may keep the projector next to
//! the LLM's weights).

use std::collections::HashSet;
use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

use crate::config::ProjectorConfig;
use crate::error::{ProjectorError, Result};
use crate::projector::{tensor_name, Projector, ProjectorWeights};

impl Projector {
    /// Loads `{prefix}.fc1.weight` `[hidden, in * k]` (stack) or `[hidden, in]` (pool),
    /// `{prefix}.fc1.bias` `[hidden]`, `{prefix}.fc2.weight` `[out, hidden]`,
    /// `{prefix}.fc2.bias` `[out]` (with one layer: `{prefix}.fc1.weight`
    /// `[out, in * k]` and, if the file has it, `{prefix}.fc1.bias`) and, if `layer_norm`, `{prefix}.norm.weight` / `.bias`
    /// `[out]` (PyTorch `nn.Linear` layout) from a safetensors file; f32, f16 and bf16 are
    /// converted to f32. Other tensors in the file are not read; norm tensors present
    /// while `layer_norm` is off are ignored with a warning.
    pub fn load(
        path: &Path,
        prefix: &str,
        config: ProjectorConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let io_error = |e: candle_core::Error| ProjectorError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // SAFETY: the mapping is only read while the tensors below are copied
        // into owned storage, and it is dropped before this function returns.
        // Like every mmap-based loader (candle's VarBuilder included) this
        // assumes nobody truncates the file during those few reads.
        let file = unsafe { MmapedSafetensors::new(path) }.map_err(io_error)?;
        let names: HashSet<String> = file.tensors().into_iter().map(|(n, _)| n).collect();
        let get = |suffix: &str| -> Result<Tensor> {
            let name = tensor_name(prefix, suffix);
            if !names.contains(&name) {
                return Err(ProjectorError::MissingTensor {
                    name,
                    source_name: path.display().to_string(),
                });
            }
            Ok(file.load(&name, device)?)
        };
        let fc1_weight = get("fc1.weight")?;
        let norm_present = names.contains(&tensor_name(prefix, "norm.weight"));
        let norm = if config.layer_norm {
            Some((get("norm.weight")?, get("norm.bias")?))
        } else {
            if norm_present {
                tracing::warn!(
                    path = %path.display(),
                    prefix,
                    "file has projector norm weights but layer_norm is off; ignoring them"
                );
            }
            None
        };
        let projector = if config.layers == 1 {
            let bias_present = names.contains(&tensor_name(prefix, "fc1.bias"));
            let bias = bias_present.then(|| get("fc1.bias")).transpose()?;
            Projector::build_linear(config, fc1_weight, bias, norm, prefix)?
        } else {
            let weights = ProjectorWeights {
                fc1_weight,
                fc1_bias: get("fc1.bias")?,
                fc2_weight: get("fc2.weight")?,
                fc2_bias: get("fc2.bias")?,
                norm,
            };
            Projector::build(config, weights, prefix)?
        };
        tracing::debug!(
            path = %path.display(),
            prefix,
            config = ?projector.config(),
            "projector loaded"
        );
        Ok(projector)
    }
}
