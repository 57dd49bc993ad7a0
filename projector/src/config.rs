//! The projector's shape: how frames are compressed, one linear layer or two
//! with an activation between them, and the widths. Deserialised from the
//! model bundle's manifest.

use serde::{Deserialize, Serialize};

use crate::error::{ProjectorError, Result};

/// How `k` consecutive encoder frames become one LLM token.
///
/// In both modes a trailing partial group (fewer than `k` frames) is dropped,
/// as Llama-AVSR does; a streaming caller keeps those frames for the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Compression {
    /// Concatenate `k` frames along the feature axis (frame-major): width `k * dim`.
    Stack { k: usize },
    /// Average `k` frames: width stays `dim`.
    Pool { k: usize },
}

impl Compression {
    /// Frames per output token.
    pub fn k(&self) -> usize {
        match *self {
            Compression::Stack { k } | Compression::Pool { k } => k,
        }
    }

    /// Width of one compressed row for encoder frames of width `dim`.
    pub fn output_dim(&self, dim: usize) -> usize {
        match *self {
            // Saturating: `validate` rejects widths that overflow.
            Compression::Stack { k } => k.saturating_mul(dim),
            Compression::Pool { .. } => dim,
        }
    }

    /// Output tokens for `frames` input frames; the partial group is dropped.
    pub fn output_len(&self, frames: usize) -> usize {
        // k = 0 is rejected by `validate`; answering 0 keeps this total.
        frames.checked_div(self.k()).unwrap_or(0)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.k() == 0 {
            return Err(ProjectorError::InvalidConfig(
                "compression k must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The nonlinearity between the projector's two linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x): Llama-AVSR.
    Relu,
    /// Exact GELU, x * Phi(x) with erf (PyTorch's default `nn.GELU()`): VideoLLM-online.
    Gelu,
}

/// Everything needed to build a projector besides its weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorConfig {
    pub compression: Compression,
    pub activation: Activation,
    /// A final affine LayerNorm (eps 1e-5) over the output; off in Llama-AVSR.
    #[serde(default)]
    pub layer_norm: bool,
    /// Width of one encoder frame.
    pub input_dim: usize,
    /// Linear layers: 2 (Linear, activation, Linear; the default) or 1 (one
    /// Linear `fc1` straight to `output_dim`, its bias optional: Idefics3's
    /// modality projection), where `activation` and `hidden_dim` are unused.
    #[serde(default = "two_layers")]
    pub layers: usize,
    /// Width between the two linear layers (unused with one layer).
    #[serde(default)]
    pub hidden_dim: usize,
    /// Width of one output embedding: the LLM's hidden size.
    pub output_dim: usize,
}

fn two_layers() -> usize {
    2
}

impl ProjectorConfig {
    /// Input width of the first linear layer (after compression).
    pub fn fc1_in_dim(&self) -> usize {
        self.compression.output_dim(self.input_dim)
    }

    /// Rejects configurations no weights could satisfy.
    pub fn validate(&self) -> Result<()> {
        self.compression.validate()?;
        if !matches!(self.layers, 1 | 2) {
            return Err(ProjectorError::InvalidConfig(format!(
                "layers is {}; a projector has 1 or 2 linear layers",
                self.layers
            )));
        }
        let hidden = (self.layers == 2).then_some(("hidden_dim", self.hidden_dim));
        for (name, value) in [
            ("input_dim", self.input_dim),
            ("output_dim", self.output_dim),
        ]
        .into_iter()
        .chain(hidden)
        {
            if value == 0 {
                return Err(ProjectorError::InvalidConfig(format!(
                    "{name} must be at least 1"
                )));
            }
        }
        if self.compression.k().checked_mul(self.input_dim).is_none() {
            return Err(ProjectorError::InvalidConfig(
                "k * input_dim overflows".into(),
            ));
        }
        Ok(())
    }
}
