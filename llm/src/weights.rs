//! Reading LLaMA weights: GGUF (quantized types kept for candle's quantized
//! matmul, or dequantized) and Hugging Face safetensors (f32/f16/bf16).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::config::{HfConfig, LlamaConfig, RopeStyle};
use crate::error::{LlmError, Result};

/// An opened GGUF file.
pub struct Gguf {
    pub path: PathBuf,
    pub content: Content,
    file: File,
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |e: &dyn std::fmt::Display| LlmError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut file = File::open(path).map_err(|e| io(&e))?;
        let content = Content::read(&mut file).map_err(|e| LlmError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("not a readable GGUF file: {e}"),
        })?;
        Ok(Gguf {
            path: path.to_path_buf(),
            content,
            file,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32> {
        let v = self
            .meta(key)
            .ok_or_else(|| LlmError::BadWeights(format!("GGUF metadata {key} missing")))?;
        match v {
            Value::U32(x) => Ok(*x),
            Value::I32(x) if *x >= 0 => Ok(*x as u32),
            Value::U64(x) => Ok(*x as u32),
            Value::I64(x) if *x >= 0 => Ok(*x as u32),
            other => Err(LlmError::BadWeights(format!(
                "GGUF metadata {key} is not an integer: {other:?}"
            ))),
        }
    }

    pub fn meta_f32(&self, key: &str) -> Option<f32> {
        match self.meta(key)? {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        }
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta(key)?.to_string().ok().map(|s| s.as_str())
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn qtensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(LlmError::BadWeights(format!(
                "tensor {name} missing from {}",
                self.path.display()
            )));
        }
        Ok(self.content.tensor(&mut self.file, name, device)?)
    }

    /// The LLaMA configuration in the metadata (`general.architecture` = llama).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.meta_str("general.architecture").unwrap_or("");
        if arch != "llama" {
            return Err(LlmError::Unsupported {
                path: self.path.clone(),
                reason: format!("architecture {arch:?} is not llama"),
            });
        }
        let k = |s: &str| format!("llama.{s}");
        let hidden = self.meta_u32(&k("embedding_length"))? as usize;
        let heads = self.meta_u32(&k("attention.head_count"))? as usize;
        let kv_heads = self
            .meta_u32(&k("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads);
        let head_dim = self
            .meta_u32(&k("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(hidden / heads);
        let vocab = match self.meta("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => self
                .content
                .tensor_infos
                .get("token_embd.weight")
                .map(|t| t.shape.dims()[0])
                .ok_or_else(|| LlmError::BadWeights("vocabulary size unknown".into()))?,
        };
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_u32(&k("feed_forward_length"))? as usize,
            num_layers: self.meta_u32(&k("block_count"))? as usize,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: f64::from(
                self.meta_f32(&k("attention.layer_norm_rms_epsilon"))
                    .unwrap_or(1e-5),
            ),
            rope_theta: self.meta_f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: None,
            rope_style: RopeStyle::Interleaved,
            max_position_embeddings: self
                .meta_u32(&k("context_length"))
                .map(|v| v as usize)
                .unwrap_or(4096),
            tie_word_embeddings: !self.has_tensor("output.weight"),
        })
    }
}

/// How matmul weights are held.
pub fn matmul(q: QTensor, dequantize: bool) -> Result<QMatMul> {
    if dequantize {
        Ok(QMatMul::Tensor(q.dequantize(&q.device())?))
    } else {
        Ok(QMatMul::from_qtensor(q)?)
    }
}

/// Re-quantizes a weight to Q8_0 (a no-op when it already is).
pub fn requantize_q8(q: &QTensor) -> Result<QMatMul> {
    if q.dtype() == candle_core::quantized::GgmlDType::Q8_0 {
        return Ok(QMatMul::from_qtensor(QTensor::quantize(
            &q.dequantize(&q.device())?,
            q.dtype(),
        )?)?);
    }
    let dense = q.dequantize(&q.device())?;
    Ok(QMatMul::from_qtensor(QTensor::quantize(
        &dense,
        candle_core::quantized::GgmlDType::Q8_0,
    )?)?)
}

/// Safetensors tensors of a Hugging Face checkpoint folder, as f32.
pub struct HfWeights {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    tensors: HashMap<String, Tensor>,
}

impl HfWeights {
    pub fn open(dir: &Path, device: &Device) -> Result<Self> {
        let io = |p: &Path, e: &dyn std::fmt::Display| LlmError::Io {
            path: p.to_path_buf(),
            reason: e.to_string(),
        };
        let config_path = dir.join("config.json");
        let raw = std::fs::read(&config_path).map_err(|e| io(&config_path, &e))?;
        let hf: HfConfig = serde_json::from_slice(&raw).map_err(|e| LlmError::Unsupported {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config = hf.into_config().map_err(|reason| LlmError::Unsupported {
            path: config_path.clone(),
            reason,
        })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, &e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(LlmError::Unsupported {
                path: dir.to_path_buf(),
                reason: "no .safetensors files".into(),
            });
        }
        let mut tensors = HashMap::new();
        for f in &files {
            for (name, t) in candle_core::safetensors::load(f, device)? {
                tensors.insert(name, t.to_dtype(DType::F32)?);
            }
        }
        Ok(HfWeights {
            dir: dir.to_path_buf(),
            config,
            tensors,
        })
    }

    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| {
            LlmError::BadWeights(format!("tensor {name} missing from {}", self.dir.display()))
        })
    }
}
