//! LLaMA hyper-parameters, from GGUF metadata or a Hugging Face `config.json`.

use serde::Deserialize;

/// How query/key pairs are rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent dimensions (2i, 2i+1) rotate together: GGUF files, whose
    /// converter permutes q/k rows for ggml's rope.
    Interleaved,
    /// Dimension i rotates with i + d/2: Hugging Face checkpoints.
    HalfSplit,
}

/// Llama 3.x frequency scaling for long context.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub rope_style: RopeStyle,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

impl LlamaConfig {
    /// Reads the configuration from a GGUF file's metadata (no weights loaded).
    pub fn from_gguf(path: &std::path::Path) -> crate::error::Result<Self> {
        crate::weights::Gguf::open(path)?.llama_config()
    }

    /// KV-cache bytes one position costs: f32 keys and values of every layer.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }

    /// Inverse frequencies of the rotary embedding, with Llama 3 scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f32> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f32 / self.head_dim as f32))
            .collect();
        let Some(s) = self.rope_scaling else {
            return base;
        };
        let old = s.original_max_position_embeddings as f32;
        let low_wavelen = old / s.low_freq_factor;
        let high_wavelen = old / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

/// The subset of a Hugging Face LLaMA `config.json` this code reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<HfRopeScaling>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HfRopeScaling {
    pub rope_type: Option<String>,
    /// Older configs spell `rope_type` as `type`; re-saved ones carry both.
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub factor: Option<f32>,
    pub low_freq_factor: Option<f32>,
    pub high_freq_factor: Option<f32>,
    pub original_max_position_embeddings: Option<usize>,
}

fn default_theta() -> f32 {
    10_000.0
}

fn default_max_pos() -> usize {
    4096
}

impl HfConfig {
    pub fn into_config(self) -> std::result::Result<LlamaConfig, String> {
        let rope_scaling = match self.rope_scaling.map(|mut s| {
            s.rope_type = s.rope_type.take().or(s.legacy_type.take());
            s
        }) {
            None => None,
            Some(s) if s.rope_type.as_deref() == Some("llama3") => Some(RopeScaling {
                factor: s.factor.ok_or("rope_scaling.factor missing")?,
                low_freq_factor: s
                    .low_freq_factor
                    .ok_or("rope_scaling.low_freq_factor missing")?,
                high_freq_factor: s
                    .high_freq_factor
                    .ok_or("rope_scaling.high_freq_factor missing")?,
                original_max_position_embeddings: s
                    .original_max_position_embeddings
                    .ok_or("rope_scaling.original_max_position_embeddings missing")?,
            }),
            Some(s) if s.rope_type.as_deref() == Some("default") => None,
            Some(s) => {
                return Err(format!(
                    "rope_scaling type {:?} is not supported (only llama3)",
                    s.rope_type
                ))
            }
        };
        let num_heads = self.num_attention_heads;
        Ok(LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(num_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / num_heads),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            rope_style: RopeStyle::HalfSplit,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_leaves_high_frequencies_and_divides_low_ones() {
        let mut c = LlamaConfig {
            vocab_size: 10,
            hidden_size: 128,
            intermediate_size: 256,
            num_layers: 1,
            num_heads: 1,
            num_kv_heads: 1,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: None,
            rope_style: RopeStyle::HalfSplit,
            max_position_embeddings: 8192,
            tie_word_embeddings: false,
        };
        let plain = c.inv_freq();
        c.rope_scaling = Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = c.inv_freq();
        assert_eq!(plain[0], scaled[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-12);
    }
}
