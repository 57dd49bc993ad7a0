//! The LLaMA forward pass: RMSNorm, rotary attention with grouped-query
//! heads over the caller's KV cache, SwiGLU MLP. Runs on token ids or on
//! input embeddings, so projected audio/video features can sit between text.

use std::path::Path;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::cache::KvCache;
use crate::config::{LlamaConfig, RopeStyle};
use crate::error::{LlmError, Result};
use crate::lora::{Lora, PROJECTIONS};
use crate::q8::Q8Matrix;
use crate::weights::{self, Gguf, HfWeights};

/// How GGUF matmul weights are kept in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightMode {
    /// As stored (Q4_1, Q8_0, ...), multiplied by candle's quantized kernels.
    Quantized,
    /// Dequantized to f32 at load: exact math, more memory.
    F32,
    /// Re-quantized to Q8_0 at load: candle has SIMD kernels for it, and
    /// 8-bit weights move a quarter of f32's bytes per decoded token.
    Q8,
    /// Both: f32 for prompts (compute-bound, exact) and Q8_0 for one-token
    /// decode steps (memory-bound). Twice the memory of either.
    Mixed,
}

/// A matmul weight as candle holds it, or as our 8-bit kernel does.
enum Weight {
    Candle(QMatMul),
    Q8(Q8Matrix),
}

impl Weight {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Weight::Candle(w) => w.forward(x),
            Weight::Q8(w) => {
                let dims = x.dims().to_vec();
                let k = *dims.last().unwrap_or(&0);
                let m = x.elem_count() / k.max(1);
                let y = w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, m);
                let mut out = dims;
                if let Some(last) = out.last_mut() {
                    *last = w.out_features();
                }
                Tensor::from_vec(y, out, x.device())
            }
        }
    }
}

/// A matmul weight, optionally with a second copy for one-token steps.
struct Linear {
    main: Weight,
    step: Option<Weight>,
}

impl Linear {
    fn forward(&self, x: &Tensor, one_token: bool) -> candle_core::Result<Tensor> {
        match (&self.step, one_token) {
            (Some(step), true) => step.forward(x),
            _ => self.main.forward(x),
        }
    }
}

/// Our 8-bit copy of `q` (its rows quantized from the dequantized values,
/// as a Q8_0 re-quantization would); `None` on devices other than the CPU.
fn q8_weight(q: &QTensor, device: &Device) -> Result<Option<Weight>> {
    if !device.is_cpu() {
        return Ok(None);
    }
    let dense = q.dequantize(device)?;
    let (n, k) = dense.dims2()?;
    let data = dense.flatten_all()?.to_vec1::<f32>()?;
    Ok(Q8Matrix::from_dense(&data, n, k).map(Weight::Q8))
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// A loaded LLaMA; immutable and shareable across sessions.
pub struct Llama {
    config: LlamaConfig,
    /// `[vocab, hidden]` f32, for embedding lookups.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    device: Device,
    description: String,
}

impl Llama {
    /// Loads a GGUF file of the llama architecture.
    pub fn from_gguf(path: &Path, mode: WeightMode, device: &Device) -> Result<Self> {
        Self::from_gguf_with_lora(path, mode, device, None)
    }

    /// Loads a GGUF file and merges `lora` into its weights first.
    pub fn from_gguf_with_lora(
        path: &Path,
        mode: WeightMode,
        device: &Device,
        lora: Option<&Lora>,
    ) -> Result<Self> {
        let mut g = Gguf::open(path)?;
        let config = g.llama_config()?;
        let dq = matches!(mode, WeightMode::F32 | WeightMode::Mixed);
        let q8 = mode == WeightMode::Q8;
        let mixed = mode == WeightMode::Mixed;
        let linear = |q: QTensor| -> Result<Linear> {
            let ours = if mixed || q8 {
                q8_weight(&q, device)?
            } else {
                None
            };
            Ok(match (ours, mixed) {
                (Some(step), true) => Linear {
                    main: Weight::Candle(weights::matmul(q, dq)?),
                    step: Some(step),
                },
                (Some(main), false) => Linear { main, step: None },
                // Off the CPU, or rows not in blocks of 32: candle's Q8_0.
                (None, _) if mixed => Linear {
                    step: Some(Weight::Candle(weights::requantize_q8(&q)?)),
                    main: Weight::Candle(weights::matmul(q, dq)?),
                },
                (None, _) if q8 => Linear {
                    main: Weight::Candle(weights::requantize_q8(&q)?),
                    step: None,
                },
                (None, _) => Linear {
                    main: Weight::Candle(weights::matmul(q, dq)?),
                    step: None,
                },
            })
        };
        let embed_q = g.qtensor("token_embd.weight", device)?;
        let embed = embed_q.dequantize(device)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let mut mm = |name: &str| -> Result<Linear> {
                let q = g.qtensor(&format!("blk.{i}.{name}.weight"), device)?;
                let proj = PROJECTIONS
                    .iter()
                    .find(|(_, gguf)| *gguf == name)
                    .map(|(hf, _)| *hf);
                let delta = match (lora, proj) {
                    (Some(l), Some(hf)) => l.delta(i, hf)?,
                    _ => None,
                };
                match delta {
                    // Merged in f32; only the as-stored mode re-quantizes the result.
                    Some(delta) => {
                        let dtype = if mode == WeightMode::Quantized {
                            q.dtype()
                        } else {
                            candle_core::quantized::GgmlDType::F32
                        };
                        linear(QTensor::quantize(&(q.dequantize(device)? + delta)?, dtype)?)
                    }
                    None => linear(q),
                }
            };
            let wq = mm("attn_q")?;
            let wk = mm("attn_k")?;
            let wv = mm("attn_v")?;
            let wo = mm("attn_output")?;
            let w_gate = mm("ffn_gate")?;
            let w_up = mm("ffn_up")?;
            let w_down = mm("ffn_down")?;
            layers.push(Layer {
                attn_norm: g
                    .qtensor(&format!("blk.{i}.attn_norm.weight"), device)?
                    .dequantize(device)?,
                ffn_norm: g
                    .qtensor(&format!("blk.{i}.ffn_norm.weight"), device)?
                    .dequantize(device)?,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
            });
        }
        let norm = g
            .qtensor("output_norm.weight", device)?
            .dequantize(device)?;
        let lm_head = if config.tie_word_embeddings {
            linear(embed_q)?
        } else {
            linear(g.qtensor("output.weight", device)?)?
        };
        let name = g.meta_str("general.name").unwrap_or("llama").to_string();
        let adapters = lora
            .map(|l| format!(", LoRA on {} matrices merged", l.len()))
            .unwrap_or_default();
        let description = format!(
            "{name} (GGUF, {} layers, d={}, {} heads / {} kv, vocab {}, {:?} weights{adapters})",
            config.num_layers,
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.vocab_size,
            mode
        );
        Self::assemble(config, embed, layers, norm, lm_head, device, description)
    }

    /// Loads a Hugging Face LLaMA checkpoint folder (`config.json` and
    /// `*.safetensors` in f32, f16 or bf16).
    pub fn from_safetensors(dir: &Path, device: &Device) -> Result<Self> {
        let mut w = HfWeights::open(dir, device)?;
        let config = w.config.clone();
        let embed = w.take("model.embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            let mut mm = |name: &str| -> Result<Linear> {
                Ok(Linear {
                    main: Weight::Candle(QMatMul::Tensor(w.take(&format!("{p}.{name}.weight"))?)),
                    step: None,
                })
            };
            layers.push(Layer {
                wq: mm("self_attn.q_proj")?,
                wk: mm("self_attn.k_proj")?,
                wv: mm("self_attn.v_proj")?,
                wo: mm("self_attn.o_proj")?,
                w_gate: mm("mlp.gate_proj")?,
                w_up: mm("mlp.up_proj")?,
                w_down: mm("mlp.down_proj")?,
                attn_norm: w.take(&format!("{p}.input_layernorm.weight"))?,
                ffn_norm: w.take(&format!("{p}.post_attention_layernorm.weight"))?,
            });
        }
        let norm = w.take("model.norm.weight")?;
        // An untied model must ship its output head: never fall back to the embeddings.
        let lm_head = Linear {
            main: Weight::Candle(if config.tie_word_embeddings {
                QMatMul::Tensor(embed.clone())
            } else {
                QMatMul::Tensor(w.take("lm_head.weight")?)
            }),
            step: None,
        };
        let description = format!(
            "{} (safetensors, {} layers, d={}, {} heads / {} kv, vocab {})",
            dir.display(),
            config.num_layers,
            config.hidden_size,
            config.num_heads,
            config.num_kv_heads,
            config.vocab_size
        );
        Self::assemble(config, embed, layers, norm, lm_head, device, description)
    }

    fn assemble(
        config: LlamaConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Linear,
        device: &Device,
        description: String,
    ) -> Result<Self> {
        let (vocab, hidden) = embed.dims2()?;
        if vocab != config.vocab_size || hidden != config.hidden_size {
            return Err(LlmError::BadWeights(format!(
                "token embeddings are {vocab}x{hidden}, config says {}x{}",
                config.vocab_size, config.hidden_size
            )));
        }
        if !config.num_heads.is_multiple_of(config.num_kv_heads)
            || !config.head_dim.is_multiple_of(2)
        {
            return Err(LlmError::BadWeights(format!(
                "{} heads cannot share {} kv heads of dim {}",
                config.num_heads, config.num_kv_heads, config.head_dim
            )));
        }
        Ok(Llama {
            inv_freq: config.inv_freq(),
            config,
            embed: embed.to_dtype(DType::F32)?,
            layers,
            norm,
            lm_head,
            device: device.clone(),
            description,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One line saying what was loaded.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// A fresh cache for this model holding `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(&self.config, capacity, &self.device)
    }

    /// The token embedding matrix `[vocab, hidden]` (f32).
    pub fn token_embeddings(&self) -> &Tensor {
        &self.embed
    }

    /// Embeddings of `ids`: `[n, hidden]`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(LlmError::InvalidInput(format!(
                "token id {bad} outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&ids, 0)?)
    }

    /// Runs `ids` after what `cache` holds. Returns logits `[n, vocab]` for
    /// every new position when `all_logits`, else `[1, vocab]` for the last.
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, all_logits: bool) -> Result<Tensor> {
        let x = self.embed_tokens(ids)?;
        self.forward_embeds(&x, cache, all_logits)
    }

    /// Like [`Llama::forward`] on input embeddings `[n, hidden]`.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        all_logits: bool,
    ) -> Result<Tensor> {
        let (seq, hidden) = embeds.dims2()?;
        if hidden != self.config.hidden_size {
            return Err(LlmError::InvalidInput(format!(
                "embeddings of width {hidden}, model width {}",
                self.config.hidden_size
            )));
        }
        if seq == 0 {
            return Err(LlmError::InvalidInput("no positions to run".into()));
        }
        self.make_room(cache, seq)?;
        cache.reserve(seq)?;
        let pos = cache.len();
        let (cos, sin) = self.rope_tables(pos, seq)?;
        let mask = (seq > 1).then(|| self.causal_mask(pos, seq)).transpose()?;
        let one = seq == 1;
        let mut x = embeds.to_dtype(DType::F32)?.unsqueeze(0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h =
                candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_norm_eps as f32)?;
            let a = self.attention(i, layer, &h, &cos, &sin, mask.as_ref(), cache, one)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.config.rms_norm_eps as f32)?;
            let gate = layer.w_gate.forward(&h, one)?.silu()?;
            let up = layer.w_up.forward(&h, one)?;
            x = (x + layer.w_down.forward(&(gate * up)?, one)?)?;
        }
        cache.advance(seq);
        let x = if all_logits {
            x
        } else {
            x.narrow(1, seq - 1, 1)?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.config.rms_norm_eps as f32)?;
        Ok(self.lm_head.forward(&x, one)?.squeeze(0)?)
    }

    /// One decode step for several sequences at once: `ids[i]` runs after
    /// what `caches[i]` holds, at that cache's own position (rows of
    /// different sessions and lengths step together). Returns logits
    /// `[ids.len(), vocab]`. The matmuls see all rows together, so each weight
    /// is read from memory once per step instead of once per sequence; the
    /// attention runs per sequence over its own cache.
    pub fn forward_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        if ids.len() != caches.len() {
            return Err(LlmError::InvalidInput(format!(
                "{} tokens for {} caches",
                ids.len(),
                caches.len()
            )));
        }
        if caches.is_empty() {
            return Err(LlmError::InvalidInput("no sequences to run".into()));
        }
        if ids.len() == 1 {
            return self.forward(ids, caches[0], false);
        }
        for c in caches.iter_mut() {
            self.make_room(c, 1)?;
            c.reserve(1)?;
        }
        let positions: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let (cos, sin) = self.rope_rows(&positions)?;
        let eps = self.config.rms_norm_eps as f32;
        // [batch, hidden]: one row per sequence, so every Linear is one matmul.
        let mut x = self.embed_tokens(ids)?.to_dtype(DType::F32)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let a = self.attention_batch(i, layer, &h, &cos, &sin, caches)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, eps)?;
            let gate = layer.w_gate.forward(&h, true)?.silu()?;
            let up = layer.w_up.forward(&h, true)?;
            x = (x + layer.w_down.forward(&(gate * up)?, true)?)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        Ok(self.lm_head.forward(&x, true)?)
    }

    /// Evicts from a windowed `cache` what must go before `n` more
    /// positions fit, rotating the kept keys back by the evicted span.
    fn make_room(&self, cache: &mut KvCache, n: usize) -> Result<()> {
        let d = cache.eviction_for(n);
        if d == 0 {
            return Ok(());
        }
        let half = self.inv_freq.len();
        let back = -(d as f32);
        cache.evict(d, |k| {
            let rows = k.dim(2)?;
            let angles: Vec<f32> = self.inv_freq.iter().map(|&f| back * f).collect();
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let table = |v: Vec<f32>| -> Result<Tensor> {
                Ok(Tensor::from_vec(v, (1, half), &self.device)?.repeat((rows, 1))?)
            };
            self.rope_one(k, &table(cos)?, &table(sin)?)
        })
    }

    /// [`Llama::attention`] for one new position of each of `caches`; `h` is
    /// `[batch, hidden]`.
    fn attention_batch(
        &self,
        index: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let c = &self.config;
        let batch = h.dim(0)?;
        // [batch, heads, 1, head_dim]: with one position, the head split is a reshape.
        let heads =
            |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((batch, n, 1, c.head_dim))?) };
        let q = heads(layer.wq.forward(h, true)?, c.num_heads)?;
        let k = heads(layer.wk.forward(h, true)?, c.num_kv_heads)?;
        let v = heads(layer.wv.forward(h, true)?, c.num_kv_heads)?;
        // Each row has its own position: the rows become the sequence axis
        // of one rope call whose table row b holds row b's position.
        let by_row = |t: &Tensor| -> Result<Tensor> {
            let t = t.transpose(0, 2)?.contiguous()?;
            Ok(self.rope_one(&t, cos, sin)?.transpose(0, 2)?.contiguous()?)
        };
        let (q, k) = (by_row(&q)?, by_row(&k)?);
        let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
        let width = c.num_heads * c.head_dim;
        let mut out = vec![0.0f32; batch * width];
        for (b, cache) in caches.iter_mut().enumerate() {
            cache.append(index, &k.narrow(0, b, 1)?, &v.narrow(0, b, 1)?)?;
            let len = cache.len() + 1;
            let row = &mut out[b * width..(b + 1) * width];
            cache.with_layer(index, |keys, values, capacity| {
                one_token_attention(
                    c,
                    &q[b * width..(b + 1) * width],
                    keys,
                    values,
                    capacity,
                    len,
                    row,
                )
            })?;
        }
        let out = Tensor::from_vec(out, (batch, width), &self.device)?;
        Ok(layer.wo.forward(&out, true)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        index: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        one: bool,
    ) -> Result<Tensor> {
        let c = &self.config;
        let seq = h.dim(1)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            Ok(t.reshape((1, seq, n, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = heads(layer.wq.forward(h, one)?, c.num_heads)?;
        let k = heads(layer.wk.forward(h, one)?, c.num_kv_heads)?;
        let v = heads(layer.wv.forward(h, one)?, c.num_kv_heads)?;
        let (q, k) = self.rope(&q, &k, cos, sin)?;
        if seq == 1 && self.device.is_cpu() {
            // The same kernel as a batched step's rows, so a row gives the
            // same numbers alone and in a batch.
            let q: Vec<f32> = q.flatten_all()?.to_vec1()?;
            cache.append(index, &k, &v)?;
            let len = cache.len() + 1;
            let mut out = vec![0.0f32; c.num_heads * c.head_dim];
            cache.with_layer(index, |keys, values, capacity| {
                one_token_attention(c, &q, keys, values, capacity, len, &mut out)
            })?;
            let out = Tensor::from_vec(out, (1, 1, c.num_heads * c.head_dim), &self.device)?;
            return Ok(layer.wo.forward(&out, one)?);
        }
        let (k_all, v_all) = cache.append(index, &k, &v)?;

        let group = c.num_heads / c.num_kv_heads;
        // Query heads sharing a kv head are stacked along the row axis, so one
        // matmul per kv head covers its whole group.
        let q = q.reshape((1, c.num_kv_heads, group * seq, c.head_dim))?;
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        let scores = (q.matmul(&k_all.t()?)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v_all)?;
        debug_assert_eq!(out.dims(), &[1, c.num_kv_heads, group * seq, c.head_dim]);
        let out = out
            .reshape((1, c.num_heads, seq, c.head_dim))?
            .transpose(1, 2)?
            .reshape((1, seq, c.num_heads * c.head_dim))?;
        Ok(layer.wo.forward(&out, one)?)
    }

    /// Rotary position embedding of queries and keys `[batch, heads, seq, head_dim]`.
    fn rope(&self, q: &Tensor, k: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.rope_one(q, cos, sin)?, self.rope_one(k, cos, sin)?))
    }

    /// Rotary position embedding of `x` `[batch, heads, seq, head_dim]`.
    fn rope_one(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        Ok(match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin)?,
            RopeStyle::HalfSplit => candle_nn::rotary_emb::rope(x, cos, sin)?,
        })
    }

    /// cos/sin `[rows, head_dim / 2]`, row i for position `positions[i]`.
    fn rope_rows(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, half), &self.device)?,
            Tensor::from_vec(sin, (n, half), &self.device)?,
        ))
    }

    /// cos/sin `[seq, head_dim / 2]` for positions `pos..pos + seq`.
    fn rope_tables(&self, pos: usize, seq: usize) -> Result<(Tensor, Tensor)> {
        self.rope_rows(&(pos..pos + seq).collect::<Vec<_>>())
    }

    /// `[group * seq, pos + seq]`: row (g, i) sees keys up to position pos + i.
    fn causal_mask(&self, pos: usize, seq: usize) -> Result<Tensor> {
        let group = self.config.num_heads / self.config.num_kv_heads;
        let total = pos + seq;
        let mut m = vec![0.0f32; group * seq * total];
        for g in 0..group {
            for i in 0..seq {
                let row = &mut m[(g * seq + i) * total..(g * seq + i + 1) * total];
                for slot in row.iter_mut().skip(pos + i + 1) {
                    *slot = f32::NEG_INFINITY;
                }
            }
        }
        Ok(Tensor::from_vec(m, (group * seq, total), &self.device)?)
    }

    /// Logits of the last row of `logits` as a Vec.
    pub fn last_logits(logits: &Tensor) -> Result<Vec<f32>> {
        let n = logits.dim(0)?;
        Ok(logits.get(n - 1)?.to_dtype(DType::F32)?.to_vec1()?)
    }

    /// Softmax-normalised log-probabilities of `logits` (one row).
    pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
        let log_z = max as f64 + sum.ln();
        logits
            .iter()
            .map(|&l| (f64::from(l) - log_z) as f32)
            .collect()
    }

    /// Argmax of a logit row (lowest id wins ties, for determinism).
    pub fn argmax(logits: &[f32]) -> u32 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best as u32
    }
}

/// Attention of one new position over `len` cached ones, in plain loops:
/// one call per row instead of a dozen tensor operations, which dominate a
/// small model's decode step. `q` is `[heads, head_dim]` (rotated), `keys`
/// and `values` `[kv_heads, capacity, head_dim]`; writes `[heads, head_dim]`.
fn one_token_attention(
    c: &LlamaConfig,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    capacity: usize,
    len: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let group = c.num_heads / c.num_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0.0f32; len];
    for h in 0..c.num_heads {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let kg = &keys[g * capacity * hd..];
        let vg = &values[g * capacity * hd..];
        let mut max = f32::NEG_INFINITY;
        for (p, s) in scores.iter_mut().enumerate() {
            let kp = &kg[p * hd..(p + 1) * hd];
            *s = dot(qh, kp) * scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.fill(0.0);
        for (p, &s) in scores.iter().enumerate() {
            let w = s / sum;
            for (o, &x) in oh.iter_mut().zip(&vg[p * hd..(p + 1) * hd]) {
                *o += w * x;
            }
        }
    }
}

/// Dot product in 8 lanes (the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}
