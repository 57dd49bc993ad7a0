//! Tensor names in Llama-AVSR checkpoints and the names this crate loads.
//!
//! Llama-AVSR (`models/modeling_AVSRLLM.py`, class `AVSR_LLMs`) builds each
//! projector as `nn.Sequential(nn.Linear(dim * k, intermediate), nn.ReLU(),
//! nn.Linear(intermediate, hidden))`, so PyTorch names its layers by position:
//! `0` is the first Linear, `1` the ReLU (no weights), `2` the second Linear.

/// Which of Llama-AVSR's projectors a key map is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaAvsrModality {
    /// `audio_proj`, after the Whisper (or WavLM / AV-HuBERT audio) encoder.
    Audio,
    /// `video_proj`, after the AV-HuBERT video encoder.
    Video,
    /// `audiovisual_proj`, the single projector of the `audiovisual_avhubert`
    /// modality with `single_projector_avhubert` set (not a released checkpoint).
    AudioVisual,
}

impl LlamaAvsrModality {
    /// The attribute name of this projector in `AVSR_LLMs`; also the prefix
    /// we load it under, so `Projector::load(path, modality.module(), ..)` works
    /// on a converted file.
    pub fn module(&self) -> &'static str {
        match self {
            LlamaAvsrModality::Audio => "audio_proj",
            LlamaAvsrModality::Video => "video_proj",
            LlamaAvsrModality::AudioVisual => "audiovisual_proj",
        }
    }
}

/// (Llama-AVSR key, our key) for every tensor of one projector, keys as they
/// appear in the released `.pth` (a plain `AVSR_LLMs` state dict). Lightning
/// `.ckpt` files nest the same keys under `state_dict` with a `model.` prefix.
pub fn llama_avsr_key_map(modality: LlamaAvsrModality) -> Vec<(String, String)> {
    let m = modality.module();
    [
        ("0.weight", "fc1.weight"),
        ("0.bias", "fc1.bias"),
        ("2.weight", "fc2.weight"),
        ("2.bias", "fc2.bias"),
    ]
    .into_iter()
    .map(|(theirs, ours)| (format!("{m}.{theirs}"), format!("{m}.{ours}")))
    .collect()
}
