//! Loading a bundle's models and checking that they fit together: encoder
//! width = projector input, projector output = LLM width, prompt and stop
//! tokens known to the tokenizer.

use std::path::{Path, PathBuf};

use avlm_encoders::{EncoderError, WhisperEncoder};
use avlm_llm::{CtcHead, Llama, LlmError, Tokenizer, WeightMode};
use avlm_projector::{Projector, ProjectorConfig, ProjectorError};
use candle_core::Device;

use super::manifest::{LlmFormat, Manifest};

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The manifest is missing or malformed.
    #[error("bundle manifest: {0}")]
    Manifest(String),
    /// The audio encoder did not load.
    #[error("audio encoder: {0}")]
    Encoder(#[from] EncoderError),
    /// The projector did not load.
    #[error("projector: {0}")]
    Projector(#[from] ProjectorError),
    /// The LLM or its tokenizer did not load.
    #[error("LLM: {0}")]
    Llm(#[from] LlmError),
    /// The parts load but do not fit together.
    #[error("bundle parts do not fit: {0}")]
    Mismatch(String),
}

impl BundleError {
    pub fn label(&self) -> &'static str {
        match self {
            BundleError::Manifest(_) => "manifest",
            BundleError::Encoder(_) => "encoder",
            BundleError::Projector(_) => "projector",
            BundleError::Llm(_) => "llm",
            BundleError::Mismatch(_) => "mismatch",
        }
    }
}

/// Everything a bundle names, loaded and checked.
pub struct LoadedBundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub encoder: WhisperEncoder,
    pub projector: Projector,
    pub llm: Llama,
    pub tokenizer: Tokenizer,
    /// Token ids of the decoding stop strings.
    pub stop_ids: Vec<u32>,
    /// The CTC head of joint decoding, when `decoding.ctc_weight` > 0.
    pub ctc: Option<CtcHead>,
}

impl LoadedBundle {
    /// Loads the bundle in `dir`; the encoder runs on `threads` threads.
    /// ONNX Runtime must be initialised first.
    pub fn load(dir: &Path, threads: usize) -> Result<Self, BundleError> {
        let manifest = Manifest::read(dir).map_err(BundleError::Manifest)?;
        Self::load_with(dir, manifest, threads)
    }

    /// [`LoadedBundle::load`] with a manifest the caller read (and perhaps
    /// changed) itself; its relative paths are relative to `dir`.
    pub fn load_with(dir: &Path, manifest: Manifest, threads: usize) -> Result<Self, BundleError> {
        let at = |p: &Path| dir.join(p);
        let audio = manifest.audio.clone().ok_or_else(|| {
            BundleError::Manifest("no [audio] section: this server transcribes audio".into())
        })?;
        let proj = manifest
            .projector
            .audio
            .clone()
            .ok_or_else(|| BundleError::Manifest("no [projector.audio] section".into()))?;

        let encoder = WhisperEncoder::load(&at(&audio.encoder), threads)?;
        if encoder.n_mels() != audio.n_mels || encoder.dim() != audio.hidden {
            return Err(BundleError::Mismatch(format!(
                "encoder {} takes {} mel bands and outputs width {}; the manifest says {} and {}",
                audio.encoder.display(),
                encoder.n_mels(),
                encoder.dim(),
                audio.n_mels,
                audio.hidden
            )));
        }

        let device = Device::Cpu;
        let (llm, tokenizer) = match manifest.llm.format {
            LlmFormat::Gguf => {
                let mode = WeightMode::from(manifest.llm.weight_mode);
                let path = at(&manifest.llm.weights);
                let lora = match &manifest.llm.lora {
                    Some(p) => Some(avlm_llm::Lora::load(&at(p), &device)?),
                    None => None,
                };
                let llm = Llama::from_gguf_with_lora(&path, mode, &device, lora.as_ref())?;
                let tok = if manifest.llm.tokenizer == "gguf" {
                    Tokenizer::from_gguf(&path)?
                } else {
                    Tokenizer::from_file(&at(Path::new(&manifest.llm.tokenizer)))?
                };
                (llm, tok)
            }
            LlmFormat::Safetensors => {
                if manifest.llm.lora.is_some() {
                    return Err(BundleError::Manifest("llm.lora is supported for GGUF models; merge the adapters into the safetensors checkpoint instead".into()));
                }
                if manifest.llm.tokenizer == "gguf" {
                    return Err(BundleError::Manifest(
                        "llm.tokenizer = \"gguf\" needs a GGUF model; give a tokenizer.json path"
                            .into(),
                    ));
                }
                (
                    Llama::from_safetensors(&at(&manifest.llm.weights), &device)?,
                    Tokenizer::from_file(&at(Path::new(&manifest.llm.tokenizer)))?,
                )
            }
        };
        let hidden = llm.config().hidden_size;
        let projector = Projector::load(
            &at(&manifest.projector.weights),
            &proj.prefix,
            ProjectorConfig {
                compression: proj.compression,
                activation: proj.activation,
                layer_norm: proj.layer_norm,
                input_dim: audio.hidden,
                hidden_dim: proj.hidden,
                output_dim: hidden,
            },
            &device,
        )?;
        projector.check(audio.hidden, hidden)?;

        let template = manifest
            .prompts
            .transcribe_audio
            .clone()
            .ok_or_else(|| BundleError::Manifest("prompts.transcribe_audio missing".into()))?;
        if template.matches("{audio}").count() != 1 {
            return Err(BundleError::Manifest(
                "prompts.transcribe_audio must contain {audio} exactly once".into(),
            ));
        }
        let mut stop_ids = Vec::new();
        for s in &manifest.decoding.stop {
            let id = tokenizer.token_id(s).ok_or_else(|| {
                BundleError::Mismatch(format!(
                    "stop token {s:?} is not in the tokenizer's vocabulary"
                ))
            })?;
            stop_ids.push(id);
        }
        if manifest.decoding.beam_width == 0
            || manifest.decoding.max_new_tokens == 0
            || manifest.decoding.partial_beam_width == Some(0)
        {
            return Err(BundleError::Manifest(
                "decoding.beam_width, partial_beam_width and max_new_tokens must be at least 1"
                    .into(),
            ));
        }
        let decoding = &manifest.decoding;
        if !(0.0..=1.0).contains(&decoding.ctc_weight) {
            return Err(BundleError::Manifest(format!(
                "decoding.ctc_weight is {}; it must be in [0, 1]",
                decoding.ctc_weight
            )));
        }
        let ctc = match (&decoding.ctc_head, decoding.ctc_weight > 0.0) {
            (Some(p), true) => Some(CtcHead::load(&at(p), hidden, &device)?),
            (None, true) => {
                return Err(BundleError::Manifest(
                    "decoding.ctc_weight > 0 needs decoding.ctc_head (the CTC head's weights)"
                        .into(),
                ))
            }
            (_, false) => None,
        };
        Ok(LoadedBundle {
            dir: dir.to_path_buf(),
            manifest,
            encoder,
            projector,
            llm,
            tokenizer,
            stop_ids,
            ctc,
        })
    }

    /// A few lines describing what was loaded, for `avlm validate`.
    pub fn summary(&self) -> String {
        let m = &self.manifest;
        let audio = m.audio.as_ref().map(|a| (a.window, a.normalize_waveform));
        let c = self.llm.config();
        format!(
            "bundle {name:?} at {dir}\n  {desc}\n  audio encoder: {enc} ({mels} mel bands -> width {dim}, window {audio:?})\n  projector: {proj:?}\n  LLM: {llm}\n  tokenizer: {vocab} tokens, stop {stop:?}\n  KV cache: {kv} bytes per token, context {ctx}\n  decoding: beam {beam} (partials {pbeam}), length penalty {lp}, up to {new} new tokens{ctc}",
            name = m.name,
            dir = self.dir.display(),
            desc = m.description,
            enc = self.encoder.path().display(),
            mels = self.encoder.n_mels(),
            dim = self.encoder.dim(),
            proj = self.projector.config(),
            llm = self.llm.describe(),
            vocab = self.tokenizer.vocab_size(),
            stop = m.decoding.stop,
            kv = c.kv_bytes_per_token(),
            ctx = m.llm.max_context,
            beam = m.decoding.beam_width,
            pbeam = m.decoding.partial_beam_width.unwrap_or(m.decoding.beam_width),
            lp = m.decoding.length_penalty,
            new = m.decoding.max_new_tokens,
            ctc = match (&self.ctc, &m.decoding.ctc_head) {
                (Some(_), Some(p)) => format!(
                    ", joint CTC/attention (CTC weight {}, head {})",
                    m.decoding.ctc_weight,
                    p.display()
                ),
                _ => String::new(),
            },
        )
    }
}
