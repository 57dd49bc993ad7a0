//! The `avlm.toml` manifest of a model bundle. Paths are relative to the
//! bundle folder.
//!
//! ```toml
//! name = "default"
//! [audio]
//! encoder = "../../models/whisper-tiny.en-encoder.onnx"
//! n_mels = 80
//! hidden = 384
//! window = "utterance"          # or "30s"
//! [projector]
//! weights = "projector.safetensors"
//! [projector.audio]
//! prefix = "audio"
//! compression = { kind = "stack", k = 4 }
//! activation = "relu"           # or "gelu"
//! layer_norm = false
//! hidden = 576
//! [llm]
//! weights = "../../models/SmolLM2-135M-Instruct.Q4_1.gguf"
//! format = "gguf"               # or "safetensors" (a Hugging Face folder)
//! weight_mode = "f32"           # gguf only: "f32", "q8" (re-quantized Q8_0), "mixed" (f32 prompts, Q8_0 steps) or "quantized" (as stored)
//! tokenizer = "gguf"            # or a tokenizer.json path
//! # lora = "lora.safetensors"   # optional adapters, merged at load
//! max_context = 2048
//! [prompts]
//! transcribe_audio = "<|im_start|>user\n{audio}\nTranscribe speech to text.<|im_end|>\n<|im_start|>assistant\n"
//! # [lip]                      # optional: lip reading (TRANSCRIBE with video)
//! # encoder = "lip_encoder.onnx"   # `video` [N, 1, T, 88, 88] -> `features` [N, T, D], 25 frames/s
//! # hidden = 1024
//! # face_detector = "../../models/blazeface.onnx"
//! # [projector.video]
//! # prefix = "video_proj"
//! # compression = { kind = "stack", k = 2 }
//! # activation = "relu"
//! # hidden = 2048
//! # transcribe_video / transcribe_audio_video in [prompts] (with {video})
//! # [vision]                   # optional: live captions (task CAPTION)
//! # encoder = "../../models/efficientnet-lite2.onnx"
//! # mean = [0.485, 0.456, 0.406]
//! # std = [0.229, 0.224, 0.225]
//! # hidden = 1280
//! # tokens = { kind = "pooled_grid", grid = 3 }   # or "grid", or { kind = "pixel_shuffle", factor = 4 }
//! # [projector.vision]
//! # prefix = "vision"
//! # weights = "vision_projector.safetensors"   # optional: its own file
//! # compression = { kind = "stack", k = 1 }
//! # activation = "gelu"
//! # hidden = 576
//! # layers = 2                 # or 1: one Linear (fc1, bias optional), as Idefics3's connector
//! # [caption]                  # VideoLLM-online's stream format
//! # system = "<|im_start|>system\nA live video.<|im_end|>\n"
//! # frame_open = "\n["
//! # separator = ","
//! # reply_prompt = "]\nAssistant:"
//! # end = "<|im_end|>"
//! # threshold = 0.725
//! # max_new_tokens = 32
//! # window = 512
//! # fps = 2.0
//! # question_prompt = "]\nUser: "   # optional: questions from the client
//! # answer_prompt = "\nAssistant:"
//! [decoding]
//! beam_width = 1
//! # partial_beam_width = 1      # optional: partial re-decodes (default: beam_width)
//! length_penalty = 1.0
//! max_new_tokens = 64
//! max_tokens_per_audio_s = 6.0  # optional: also at most 8 + 6 per audio second
//! # ctc_head = "ctc.safetensors" # optional: joint CTC/attention beam search
//! # ctc_weight = 0.5             # (1 - w) * LLM + w * CTC; 0 = the LLM alone
//! stop = ["<|im_end|>", "<|endoftext|>"]
//! ```

use std::path::{Path, PathBuf};

use avlm_projector::{Activation, Compression};
use serde::Deserialize;

/// File name of the manifest inside a bundle folder.
pub const MANIFEST: &str = "avlm.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub audio: Option<AudioSection>,
    pub projector: ProjectorSection,
    pub llm: LlmSection,
    pub prompts: Prompts,
    #[serde(default)]
    pub decoding: Decoding,
    /// The lip encoder of audio-visual and visual speech recognition.
    pub lip: Option<LipSection>,
    /// The vision encoder of live captions.
    pub vision: Option<VisionSection>,
    /// The stream format and decisions of live captions.
    pub caption: Option<CaptionSection>,
}

/// Lip reading: mouth crops from a face detector, a lip encoder (AV-HuBERT
/// as Llama-AVSR runs it) at 25 frames a second, and `[projector.video]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LipSection {
    /// ONNX: `video` [batch, 1, frames, 88, 88] (normalised grayscale mouth
    /// crops) -> `features` [batch, frames, hidden].
    pub encoder: PathBuf,
    /// Encoder output width.
    pub hidden: usize,
    /// The face detector (BlazeFace ONNX) the mouth crops are cut with.
    pub face_detector: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSection {
    /// ONNX: `pixel_values` [batch, 3, size, size] -> `patches` [batch, n, hidden] (+ `pooled`).
    pub encoder: PathBuf,
    /// Per-channel (RGB) mean and standard deviation of `x / 255`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Encoder output width.
    pub hidden: usize,
    /// How the encoder's outputs become a frame's tokens.
    pub tokens: avlm_projector::VisionTokens,
}

/// VideoLLM-online's stream: `system` + `frame_open` + frame (`separator`
/// frame)* ; after each frame the model either predicts `separator` (stay
/// silent) or speaks: `reply_prompt`, the reply, `end`, then `frame_open`
/// before the next frame. Every piece is tokenised on its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionSection {
    pub system: String,
    pub frame_open: String,
    /// Must be one token.
    pub separator: String,
    pub reply_prompt: String,
    /// The token that ends a reply (one token).
    pub end: String,
    /// Speak when P(separator) falls below this (a session may change it).
    #[serde(default = "default_caption_threshold")]
    pub threshold: f32,
    #[serde(default = "default_caption_tokens")]
    pub max_new_tokens: usize,
    /// Recent positions a caption stream's KV cache keeps after the system
    /// prompt (its attention sinks): memory stays flat on endless video.
    #[serde(default = "default_caption_window")]
    pub window: usize,
    /// Frames a second the captioner sees unless a session asks otherwise.
    #[serde(default = "default_caption_fps")]
    pub fps: f32,
    /// Questions from the client (VideoLLM-online's `"]\nUser: "`): fed
    /// before the question's text; unset: the model takes no questions.
    #[serde(default)]
    pub question_prompt: Option<String>,
    /// Fed after the question's text (`"\nAssistant:"`); the answer follows.
    #[serde(default)]
    pub answer_prompt: Option<String>,
}

fn default_caption_threshold() -> f32 {
    0.725
}

fn default_caption_tokens() -> usize {
    32
}

fn default_caption_window() -> usize {
    512
}

fn default_caption_fps() -> f32 {
    2.0
}

/// How much audio the encoder sees at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum EncoderWindow {
    /// The utterance at its own length (cost grows with the speech, not 30 s).
    #[default]
    #[serde(rename = "utterance")]
    Utterance,
    /// Zero-padded to Whisper's 30 s window, output cut to the speech (as
    /// Llama-AVSR's checkpoints were trained).
    #[serde(rename = "30s")]
    Padded30s,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioSection {
    pub encoder: PathBuf,
    pub n_mels: usize,
    /// Encoder output width.
    pub hidden: usize,
    #[serde(default)]
    pub window: EncoderWindow,
    /// Scale each utterance's waveform to zero mean, unit variance first.
    #[serde(default)]
    pub normalize_waveform: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorSection {
    pub weights: PathBuf,
    pub audio: Option<ProjectorModality>,
    pub video: Option<ProjectorModality>,
    /// The vision encoder's tokens (captions).
    pub vision: Option<ProjectorModality>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectorModality {
    /// Tensor name prefix in the weights file (`{prefix}.fc1.weight`, ...).
    pub prefix: String,
    /// A weights file of this modality's own; unset: `projector.weights`.
    #[serde(default)]
    pub weights: Option<PathBuf>,
    pub compression: Compression,
    pub activation: Activation,
    #[serde(default)]
    pub layer_norm: bool,
    /// 2 (Linear, activation, Linear) or 1 (one Linear, bias optional;
    /// `activation` and `hidden` unused).
    #[serde(default = "two_layers")]
    pub layers: usize,
    /// Width of the MLP's hidden layer (two layers).
    #[serde(default)]
    pub hidden: usize,
}

fn two_layers() -> usize {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmFormat {
    Gguf,
    Safetensors,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmWeightMode {
    #[default]
    F32,
    Q8,
    Mixed,
    Quantized,
}

impl From<LlmWeightMode> for avlm_llm::WeightMode {
    fn from(mode: LlmWeightMode) -> Self {
        match mode {
            LlmWeightMode::F32 => avlm_llm::WeightMode::F32,
            LlmWeightMode::Q8 => avlm_llm::WeightMode::Q8,
            LlmWeightMode::Mixed => avlm_llm::WeightMode::Mixed,
            LlmWeightMode::Quantized => avlm_llm::WeightMode::Quantized,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// A GGUF file, or a Hugging Face folder (config.json + *.safetensors).
    pub weights: PathBuf,
    pub format: LlmFormat,
    #[serde(default)]
    pub weight_mode: LlmWeightMode,
    /// "gguf" (the vocabulary inside the GGUF) or a tokenizer.json path.
    pub tokenizer: String,
    /// LoRA adapters merged into the weights at load (GGUF models).
    #[serde(default)]
    pub lora: Option<PathBuf>,
    #[serde(default = "default_context")]
    pub max_context: usize,
}

fn default_context() -> usize {
    2048
}

/// Prompt templates; `{audio}` / `{video}` mark where projected features go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompts {
    pub transcribe_audio: Option<String>,
    pub transcribe_video: Option<String>,
    pub transcribe_audio_video: Option<String>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoding {
    #[serde(default = "one")]
    pub beam_width: usize,
    /// Beam width of the partial re-decodes of an open segment (their text
    /// is provisional; a narrower beam keeps them cheap and frequent).
    /// Unset: `beam_width`.
    #[serde(default)]
    pub partial_beam_width: Option<usize>,
    #[serde(default = "one_f")]
    pub length_penalty: f32,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    /// Also caps new tokens by the audio's length: at most
    /// `8 + ceil(max_tokens_per_audio_s * seconds)` (0: no such cap). Speech
    /// runs well under 6 tokens a second; a decode past that is looping or
    /// inventing text, and the cap bounds its latency.
    #[serde(default)]
    pub max_tokens_per_audio_s: f64,
    /// Token strings that end a hypothesis.
    #[serde(default)]
    pub stop: Vec<String>,
    /// A CTC head over the projected audio (`ctc.blank_w`, `ctc.blank_b`;
    /// token classes are the LLM's embeddings) for joint CTC/attention
    /// decoding: the beam search ranks hypotheses by
    /// `(1 - ctc_weight) * log P_llm + ctc_weight * log P_ctc`.
    #[serde(default)]
    pub ctc_head: Option<PathBuf>,
    /// In `[0, 1]`; 0 decodes with the LLM alone (the head is not used).
    #[serde(default)]
    pub ctc_weight: f32,
}

impl Decoding {
    /// The new-token budget for `seconds` of audio.
    pub fn token_budget(&self, seconds: f64) -> usize {
        if self.max_tokens_per_audio_s > 0.0 {
            let by_length = 8 + (self.max_tokens_per_audio_s * seconds.max(0.0)).ceil() as usize;
            self.max_new_tokens.min(by_length)
        } else {
            self.max_new_tokens
        }
    }
}

impl Default for Decoding {
    fn default() -> Self {
        Decoding {
            beam_width: 1,
            partial_beam_width: None,
            length_penalty: 1.0,
            max_new_tokens: default_new_tokens(),
            max_tokens_per_audio_s: 0.0,
            stop: Vec::new(),
            ctc_head: None,
            ctc_weight: 0.0,
        }
    }
}

fn one() -> usize {
    1
}

fn one_f() -> f32 {
    1.0
}

fn default_new_tokens() -> usize {
    64
}

impl Manifest {
    /// Reads `dir/avlm.toml`.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join(MANIFEST);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_budget_follows_the_audio_length_when_asked() {
        let mut d = Decoding::default();
        assert_eq!(d.token_budget(30.0), 64);
        d.max_tokens_per_audio_s = 6.0;
        assert_eq!(d.token_budget(0.0), 8);
        assert_eq!(d.token_budget(2.5), 23);
        assert_eq!(d.token_budget(30.0), 64);
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("manifest.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| {
                l.trim_start_matches("//!")
                    .strip_prefix(' ')
                    .unwrap_or("")
                    .to_string()
                    + "\n"
            })
            .collect();
        let m: Manifest = toml::from_str(&example).unwrap();
        assert_eq!(m.name, "default");
        assert_eq!(m.audio.unwrap().window, EncoderWindow::Utterance);
        let p = m.projector.audio.unwrap();
        assert!(matches!(p.compression, Compression::Stack { k: 4 }));
        assert_eq!(m.llm.weight_mode, LlmWeightMode::F32);
        assert!(m.prompts.transcribe_audio.unwrap().contains("{audio}"));
        assert_eq!(m.decoding.stop.len(), 2);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let bad = "name = \"x\"\nflavour = 1\n[projector]\nweights = \"p\"\n[llm]\nweights = \"w\"\nformat = \"gguf\"\ntokenizer = \"gguf\"\n[prompts]\n";
        let e = toml::from_str::<Manifest>(bad).unwrap_err().to_string();
        assert!(e.contains("flavour"), "{e}");
    }
}
