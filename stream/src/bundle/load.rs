//! Loading a bundle's models and checking that they fit together: encoder
//! width = projector input, projector output = LLM width, prompt and stop
//! tokens known to the tokenizer.

use std::path::{Path, PathBuf};

use avlm_encoders::{EncoderError, LipEncoder, VisionEncoder, VisionPreprocess, WhisperEncoder};
use avlm_llm::{CtcHead, Llama, LlmError, Tokenizer, WeightMode};
use avlm_projector::{Projector, ProjectorConfig, ProjectorError, VisionTokens};
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
    /// Transcription, when the bundle has `[audio]`.
    pub audio: Option<AudioParts>,
    pub llm: Llama,
    pub tokenizer: Tokenizer,
    /// Token ids of the decoding stop strings.
    pub stop_ids: Vec<u32>,
    /// The CTC head of joint decoding, when `decoding.ctc_weight` > 0.
    pub ctc: Option<CtcHead>,
    /// Live captions, when the bundle has `[vision]`.
    pub vision: Option<VisionParts>,
    /// Lip reading, when the bundle has `[lip]`.
    pub lip: Option<LipParts>,
}

/// What lip reading needs besides the LLM.
pub struct LipParts {
    pub encoder: LipEncoder,
    pub projector: Projector,
    /// The face detector's ONNX file (each stream runs its own).
    pub face_detector: PathBuf,
}

/// What transcription needs besides the LLM.
pub struct AudioParts {
    pub encoder: WhisperEncoder,
    pub projector: Projector,
}

/// What live captions need besides the LLM.
pub struct VisionParts {
    pub encoder: VisionEncoder,
    pub preprocess: VisionPreprocess,
    pub tokens: VisionTokens,
    pub projector: Projector,
    pub format: CaptionFormat,
}

/// The caption stream format as token ids (see `manifest::CaptionSection`).
#[derive(Debug, Clone, PartialEq)]
pub struct CaptionFormat {
    pub system: Vec<u32>,
    pub frame_open: Vec<u32>,
    pub separator: u32,
    pub reply_prompt: Vec<u32>,
    pub end: u32,
    pub threshold: f32,
    pub max_new_tokens: usize,
    pub window: usize,
    pub fps: f32,
    /// Fed before and after a client's question, when the model takes questions.
    pub question: Option<(Vec<u32>, Vec<u32>)>,
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
        if manifest.audio.is_none() && manifest.vision.is_none() && manifest.lip.is_none() {
            return Err(BundleError::Manifest(
                "no [audio], [lip] or [vision] section: a bundle transcribes audio, reads lips, captions video, or several of these".into(),
            ));
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
        let audio = load_audio(dir, &manifest, hidden, threads, &device)?;
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
        let vision = load_vision(dir, &manifest, &tokenizer, hidden, threads, &device)?;
        let lip = load_lip(dir, &manifest, hidden, threads, &device)?;
        Ok(LoadedBundle {
            dir: dir.to_path_buf(),
            manifest,
            audio,
            llm,
            tokenizer,
            stop_ids,
            ctc,
            vision,
            lip,
        })
    }

    /// A few lines describing what was loaded, for `avlm validate`.
    pub fn summary(&self) -> String {
        let mut text = self.audio_summary();
        if let Some(v) = &self.vision {
            text.push_str(&format!(
                "\n  vision encoder: {enc} ({size}x{size} -> {patches} patches of width {dim}{pooled}), tokens {tokens:?}\n  vision projector: {proj:?}\n  captions: {fps} frames/s, speak below P(separator) {thr}, up to {new} tokens, KV window {sys} sink + {win} recent positions",
                enc = v.encoder.path().display(),
                size = v.encoder.size(),
                patches = v.encoder.patches(),
                dim = v.encoder.dim(),
                pooled = if v.encoder.has_pooled() { " + pooled" } else { "" },
                tokens = v.tokens,
                proj = v.projector.config(),
                fps = v.format.fps,
                thr = v.format.threshold,
                new = v.format.max_new_tokens,
                sys = v.format.system.len(),
                win = v.format.window,
            ));
        }
        text
    }

    fn audio_summary(&self) -> String {
        let m = &self.manifest;
        let window = m.audio.as_ref().map(|a| (a.window, a.normalize_waveform));
        let c = self.llm.config();
        let audio = match &self.audio {
            Some(a) => format!(
                "audio encoder: {enc} ({mels} mel bands -> width {dim}, window {window:?})\n  projector: {proj:?}",
                enc = a.encoder.path().display(),
                mels = a.encoder.n_mels(),
                dim = a.encoder.dim(),
                proj = a.projector.config(),
            ),
            None => "no audio encoder".to_string(),
        };
        let lip = match &self.lip {
            Some(l) => format!(
                "\n  lip encoder: {enc} (88x88 mouth crops at 25 frames/s -> width {dim}), faces found by {det}\n  video projector: {proj:?}",
                enc = l.encoder.path().display(),
                dim = l.encoder.dim(),
                det = l.face_detector.display(),
                proj = l.projector.config(),
            ),
            None => String::new(),
        };
        format!(
            "bundle {name:?} at {dir}\n  {desc}\n  {audio}{lip}\n  LLM: {llm}\n  tokenizer: {vocab} tokens, stop {stop:?}\n  KV cache: {kv} bytes per token, context {ctx}\n  decoding: beam {beam} (partials {pbeam}), length penalty {lp}, up to {new} new tokens{ctc}",
            name = m.name,
            dir = self.dir.display(),
            desc = m.description,
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

/// Loads and checks the audio encoder, its projector and the transcription prompt.
fn load_audio(
    dir: &Path,
    manifest: &Manifest,
    llm_hidden: usize,
    threads: usize,
    device: &Device,
) -> Result<Option<AudioParts>, BundleError> {
    let Some(audio) = &manifest.audio else {
        return Ok(None);
    };
    let proj = manifest
        .projector
        .audio
        .clone()
        .ok_or_else(|| BundleError::Manifest("no [projector.audio] section".into()))?;
    let encoder = WhisperEncoder::load(&dir.join(&audio.encoder), threads)?;
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
    let projector = Projector::load(
        &dir.join(proj.weights.as_ref().unwrap_or(&manifest.projector.weights)),
        &proj.prefix,
        ProjectorConfig {
            compression: proj.compression,
            activation: proj.activation,
            layer_norm: proj.layer_norm,
            input_dim: audio.hidden,
            layers: proj.layers,
            hidden_dim: proj.hidden,
            output_dim: llm_hidden,
        },
        device,
    )?;
    projector.check(audio.hidden, llm_hidden)?;
    if manifest.prompts.transcribe_audio.is_none()
        && manifest.prompts.transcribe_audio_video.is_none()
    {
        return Err(BundleError::Manifest(
            "[audio] needs prompts.transcribe_audio (or transcribe_audio_video)".into(),
        ));
    }
    Ok(Some(AudioParts { encoder, projector }))
}

/// Loads and checks the lip encoder, its projector and the face detector's path.
fn load_lip(
    dir: &Path,
    manifest: &Manifest,
    llm_hidden: usize,
    threads: usize,
    device: &Device,
) -> Result<Option<LipParts>, BundleError> {
    let Some(lip) = &manifest.lip else {
        if manifest.prompts.transcribe_video.is_some()
            || manifest.prompts.transcribe_audio_video.is_some()
        {
            return Err(BundleError::Manifest(
                "prompts.transcribe_video / transcribe_audio_video need a [lip] section (the lip encoder)".into(),
            ));
        }
        return Ok(None);
    };
    let proj =
        manifest.projector.video.clone().ok_or_else(|| {
            BundleError::Manifest("[lip] needs a [projector.video] section".into())
        })?;
    if manifest.prompts.transcribe_video.is_none()
        && manifest.prompts.transcribe_audio_video.is_none()
    {
        return Err(BundleError::Manifest(
            "[lip] needs prompts.transcribe_video or prompts.transcribe_audio_video".into(),
        ));
    }
    if manifest.prompts.transcribe_audio_video.is_some() && manifest.audio.is_none() {
        return Err(BundleError::Manifest(
            "prompts.transcribe_audio_video needs an [audio] section (the audio encoder)".into(),
        ));
    }
    let face_detector = dir.join(&lip.face_detector);
    if !face_detector.is_file() {
        return Err(BundleError::Manifest(format!(
            "lip.face_detector: {} is not a file",
            face_detector.display()
        )));
    }
    let encoder = LipEncoder::load(&dir.join(&lip.encoder), threads)?;
    if encoder.dim() != lip.hidden {
        return Err(BundleError::Mismatch(format!(
            "lip encoder {} outputs width {}; lip.hidden says {}",
            lip.encoder.display(),
            encoder.dim(),
            lip.hidden
        )));
    }
    let projector = Projector::load(
        &dir.join(proj.weights.as_ref().unwrap_or(&manifest.projector.weights)),
        &proj.prefix,
        ProjectorConfig {
            compression: proj.compression,
            activation: proj.activation,
            layer_norm: proj.layer_norm,
            input_dim: lip.hidden,
            layers: proj.layers,
            hidden_dim: proj.hidden,
            output_dim: llm_hidden,
        },
        device,
    )?;
    projector.check(lip.hidden, llm_hidden)?;
    Ok(Some(LipParts {
        encoder,
        projector,
        face_detector,
    }))
}

/// Loads and checks the vision encoder, its projector and the caption format.
fn load_vision(
    dir: &Path,
    manifest: &Manifest,
    tokenizer: &Tokenizer,
    llm_hidden: usize,
    threads: usize,
    device: &Device,
) -> Result<Option<VisionParts>, BundleError> {
    let (section, proj, caption) = match (
        &manifest.vision,
        &manifest.projector.vision,
        &manifest.caption,
    ) {
        (None, None, None) => return Ok(None),
        (Some(v), Some(p), Some(c)) => (v, p, c),
        _ => {
            return Err(BundleError::Manifest(
                "live captions need all of [vision], [projector.vision] and [caption]".into(),
            ))
        }
    };
    let encoder = VisionEncoder::load(&dir.join(&section.encoder), threads)?;
    if encoder.dim() != section.hidden {
        return Err(BundleError::Mismatch(format!(
            "vision encoder {} outputs width {}; vision.hidden says {}",
            section.encoder.display(),
            encoder.dim(),
            section.hidden
        )));
    }
    if section.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
        return Err(BundleError::Manifest(format!(
            "vision.std must be positive, got {:?}",
            section.std
        )));
    }
    let grid = encoder.grid();
    section
        .tokens
        .check(grid, encoder.has_pooled())
        .map_err(|e| BundleError::Mismatch(format!("vision.tokens: {e}")))?;
    let width = section.tokens.width(section.hidden);
    let projector = Projector::load(
        &dir.join(proj.weights.as_ref().unwrap_or(&manifest.projector.weights)),
        &proj.prefix,
        ProjectorConfig {
            compression: proj.compression,
            activation: proj.activation,
            layer_norm: proj.layer_norm,
            input_dim: width,
            layers: proj.layers,
            hidden_dim: proj.hidden,
            output_dim: llm_hidden,
        },
        device,
    )?;
    projector.check(width, llm_hidden)?;
    let one_token = |what: &str, text: &str| -> Result<u32, BundleError> {
        match tokenizer.encode(text)?.as_slice() {
            [id] => Ok(*id),
            ids => Err(BundleError::Mismatch(format!(
                "caption.{what} {text:?} must be one token; the tokenizer makes {} of it",
                ids.len()
            ))),
        }
    };
    let nonempty = |what: &str, text: &str| -> Result<Vec<u32>, BundleError> {
        let ids = tokenizer.encode(text)?;
        if ids.is_empty() {
            return Err(BundleError::Manifest(format!("caption.{what} is empty")));
        }
        Ok(ids)
    };
    if !(caption.threshold > 0.0 && caption.threshold < 1.0) {
        return Err(BundleError::Manifest(format!(
            "caption.threshold is {}; it must be in (0, 1)",
            caption.threshold
        )));
    }
    if caption.max_new_tokens == 0 || caption.window < 64 {
        return Err(BundleError::Manifest(
            "caption.max_new_tokens must be at least 1 and caption.window at least 64".into(),
        ));
    }
    if !(caption.fps > 0.0 && caption.fps <= crate::config::MAX_CAPTION_FPS) {
        return Err(BundleError::Manifest(format!(
            "caption.fps is {}; it must be in (0, {}]",
            caption.fps,
            crate::config::MAX_CAPTION_FPS
        )));
    }
    let format = CaptionFormat {
        system: nonempty("system", &caption.system)?,
        frame_open: nonempty("frame_open", &caption.frame_open)?,
        separator: one_token("separator", &caption.separator)?,
        reply_prompt: nonempty("reply_prompt", &caption.reply_prompt)?,
        end: one_token("end", &caption.end)?,
        threshold: caption.threshold,
        max_new_tokens: caption.max_new_tokens,
        window: caption.window,
        fps: caption.fps,
        question: match (&caption.question_prompt, &caption.answer_prompt) {
            (Some(q), Some(a)) => Some((
                nonempty("question_prompt", q)?,
                nonempty("answer_prompt", a)?,
            )),
            (None, None) => None,
            _ => {
                return Err(BundleError::Manifest(
                    "caption.question_prompt and caption.answer_prompt go together".into(),
                ))
            }
        },
    };
    Ok(Some(VisionParts {
        preprocess: VisionPreprocess {
            size: encoder.size() as u32,
            mean: section.mean,
            std: section.std,
        },
        encoder,
        tokens: section.tokens,
        projector,
        format,
    }))
}
