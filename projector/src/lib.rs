//! avlm's projector: turns one modality's encoder frames into LLM-space
//! embeddings. `k` consecutive frames are compressed into one row (stacked,
//! as Llama-AVSR does with audio k=4 / video k=2, or average-pooled; a
//! trailing partial group is dropped), then a two-layer MLP (Linear,
//! ReLU or exact GELU, Linear, as in Llama-AVSR and VideoLLM-online) and an
//! optional LayerNorm map each row to the LLM's hidden size.
//!
//! A [`Projector`] is immutable and `Send + Sync`: one instance serves every
//! session. Streaming callers ask [`Projector::output_len`] how many frames a
//! call consumes and keep the remaining `frames % k` for the next chunk;
//! fewer than `k` frames is not an error, `forward` returns `[0, output_dim]`.
//!
//! # Weights
//!
//! [`Projector::load`] reads `{prefix}.fc1.weight` `[hidden, input_dim * k]`
//! (stack) or `[hidden, input_dim]` (pool), `{prefix}.fc1.bias` `[hidden]`,
//! `{prefix}.fc2.weight` `[output_dim, hidden]`, `{prefix}.fc2.bias`
//! `[output_dim]`, and with `layer_norm` `{prefix}.norm.weight` / `.bias`
//! `[output_dim]`, from a safetensors file in f32, f16 or bf16. Weights are in
//! PyTorch `nn.Linear` layout, so a PyTorch checkpoint needs renaming only.
//!
//! # Loading a Llama-AVSR checkpoint
//!
//! Read from `umbertocappellazzo/Llama-AVSR`, `models/modeling_AVSRLLM.py`
//! (class `AVSR_LLMs`): each projector is
//! `nn.Sequential(nn.Linear(dim * k, intermediate_size), nn.ReLU(),
//! nn.Linear(intermediate_size, hidden_size))` stored in the attribute
//! `audio_proj` or `video_proj` (`audiovisual_proj` for the single-projector
//! AV-HuBERT variant). `nn.Sequential` names layers by index, so the keys are:
//!
//! | Llama-AVSR key        | our key                  | shape                     |
//! |-----------------------|--------------------------|---------------------------|
//! | `audio_proj.0.weight` | `audio_proj.fc1.weight`  | `[2048, 1024 * k_audio]`  |
//! | `audio_proj.0.bias`   | `audio_proj.fc1.bias`    | `[2048]`                  |
//! | `audio_proj.2.weight` | `audio_proj.fc2.weight`  | `[d_model, 2048]`         |
//! | `audio_proj.2.bias`   | `audio_proj.fc2.bias`    | `[d_model]`               |
//! | `video_proj.0.weight` | `video_proj.fc1.weight`  | `[2048, 1024 * k_video]`  |
//! | `video_proj.0.bias`   | `video_proj.fc1.bias`    | `[2048]`                  |
//! | `video_proj.2.weight` | `video_proj.fc2.weight`  | `[d_model, 2048]`         |
//! | `video_proj.2.bias`   | `video_proj.fc2.bias`    | `[d_model]`               |
//!
//! ([`llama_avsr_key_map`] returns these pairs.) These are the keys of a
//! plain `AVSR_LLMs` state dict, which is what their released checkpoints
//! should hold: `lightning_LLM.py` loads `--pretrained-model-path` with
//! `self.model.load_state_dict(torch.load(path))`, and `train_LLM.py` makes
//! such files with `utils/avg_checkpoints_original.py`, which strips the
//! Lightning `model.` prefix (inferred from their code; no released file was
//! opened here). A raw Lightning `.ckpt` has the same keys under `state_dict`
//! as `model.audio_proj.0.weight` and so on. The
//! 2048 is `--intermediate-size` (default 2048), `d_model` the LLM's hidden
//! size (4096 for Llama 3.1 8B), and 1024 the Whisper-medium / AV-HuBERT
//! Large width. Their config is `Compression::Stack`, `Activation::Relu`,
//! `layer_norm: false`; the best AVSR checkpoint uses k = 4 (audio) and
//! k = 2 (video).
//!
//! Their stacking is `x[:, i:i+k, :].view(B, 1, -1)` over each group, i.e. the
//! frame-major concatenation [`compress`] does; audio drops the partial
//! group after stacking, video is cut to a multiple of k in the data loader.

mod compress;
mod config;
mod error;
mod llama_avsr;
mod load;
mod projector;
mod vision;

pub use compress::compress;
pub use config::{Activation, Compression, ProjectorConfig};
pub use error::{ProjectorError, Result};
pub use llama_avsr::{llama_avsr_key_map, LlamaAvsrModality};
pub use projector::{Projector, ProjectorWeights};
pub use vision::{adaptive_avg_pool, pixel_shuffle, VisionTokens};
