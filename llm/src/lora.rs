//! LoRA adapters merged into the weights at load: `W += scale * B @ A`.
//!
//! File format (safetensors, f32/f16/bf16): `lora.layers.{i}.{proj}.A`
//! `[rank, in]` and `lora.layers.{i}.{proj}.B` `[out, rank]` for `proj` in
//! q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj; metadata
//! `scale` = alpha / rank. For GGUF models the rows of B are in the GGUF
//! order (q and k rows permuted for ggml's rope, as llama.cpp's converter
//! permutes them), so a delta adds to the stored weight as is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{LlmError, Result};

/// Hugging Face projection names and the GGUF tensor names they merge into.
pub const PROJECTIONS: [(&str, &str); 7] = [
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("gate_proj", "ffn_gate"),
    ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

pub struct Lora {
    pub path: PathBuf,
    pub scale: f64,
    tensors: HashMap<String, Tensor>,
}

impl Lora {
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let io = |reason: String| LlmError::Io {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(e.to_string()))?;
        let scale = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("scale"))
            .ok_or_else(|| {
                LlmError::BadWeights(format!(
                    "{}: metadata \"scale\" (alpha / rank) missing",
                    path.display()
                ))
            })?
            .parse::<f64>()
            .map_err(|e| {
                LlmError::BadWeights(format!("{}: metadata \"scale\": {e}", path.display()))
            })?;
        let mut tensors = HashMap::new();
        for (name, t) in candle_core::safetensors::load_buffer(&bytes, device)? {
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        if tensors.is_empty() {
            return Err(LlmError::BadWeights(format!(
                "{}: no adapter tensors",
                path.display()
            )));
        }
        Ok(Lora {
            path: path.to_path_buf(),
            scale,
            tensors,
        })
    }

    /// Number of adapted weight matrices.
    pub fn len(&self) -> usize {
        self.tensors.keys().filter(|k| k.ends_with(".A")).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `scale * B @ A` for projection `proj` of layer `layer`, if adapted.
    pub fn delta(&self, layer: usize, proj: &str) -> Result<Option<Tensor>> {
        let key = |m: &str| format!("lora.layers.{layer}.{proj}.{m}");
        match (self.tensors.get(&key("A")), self.tensors.get(&key("B"))) {
            (None, None) => Ok(None),
            (Some(a), Some(b)) => Ok(Some((b.matmul(a)? * self.scale)?)),
            _ => Err(LlmError::BadWeights(format!(
                "{}: {} has only one of A and B",
                self.path.display(),
                key("*")
            ))),
        }
    }
}
