//! The transcription chain for one utterance: log-mel, Whisper encoder and
//! projector for the audio; lip encoder and video projector for the mouth
//! crops; the LLM decoding from the prompt of that input with the projected
//! features spliced in where the template says `{audio}` and `{video}`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use avlm_encoders::mel::{LogMel, HOP};
use avlm_encoders::whisper::MAX_FRAMES;
use avlm_encoders::MelSpectrogram;
use avlm_llm::{
    BeamConfig, BeamSearch, CtcGuide, CtcPrefixScorer, Generation, GreedySearch, Interrupt,
    KvCache, Llama, StopCriteria,
};
use candle_core::Tensor;

use super::prompt::{Piece, PromptTemplate, SpeechInput};
use crate::bundle::manifest::EncoderWindow;
use crate::bundle::{BundleError, LoadedBundle};

/// Audio whose peak stays below this (-80 dBFS, three steps of 16-bit
/// audio) is silence: no transcript.
const SILENT_PEAK: f32 = 1e-4;

/// Longest utterance the encoder takes (Whisper's 30 s window).
pub const MAX_SAMPLES: usize = MAX_FRAMES * HOP;

/// Frames a second of the mouth crops the lip encoder reads.
pub const LIP_FPS: f64 = 25.0;

/// Side of the square mouth crops the lip encoder reads.
pub const LIP_SIZE: usize = 88;

/// Audio samples per video frame: audio-visual utterances take exactly
/// this much audio per crop (cut or zero-padded), as Llama-AVSR aligns them.
pub const SAMPLES_PER_LIP_FRAME: usize = 640;

/// Mouth crops for the lip encoder: `frames` x 88 x 88, normalised as it
/// reads them, at 25 frames a second.
#[derive(Debug, Clone, PartialEq)]
pub struct LipClip {
    pub frames: usize,
    pub data: Vec<f32>,
}

impl LipClip {
    /// Seconds of video the clip covers.
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / LIP_FPS
    }
}

/// Wall time per stage of one transcription.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub mel: Duration,
    pub encoder: Duration,
    /// The lip encoder and the video projector.
    pub lip: Duration,
    pub projector: Duration,
    pub prefill: Duration,
    pub decode: Duration,
}

impl StageTimes {
    /// All stages together: the model time one utterance took.
    pub fn total(&self) -> Duration {
        self.mel + self.encoder + self.lip + self.projector + self.prefill + self.decode
    }
}

/// The result for one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    pub tokens: Vec<u32>,
    /// The words of `text` with their times in seconds from the utterance's
    /// start, from the CTC head's forced alignment of the tokens (empty
    /// without a CTC head, or when the alignment fails).
    pub words: Vec<WordTime>,
    /// Projected audio and video positions in the prompt.
    pub audio_tokens: usize,
    pub prompt_tokens: usize,
    pub times: StageTimes,
}

/// One word of a transcript and when it was said.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTime {
    pub text: String,
    pub start_s: f64,
    pub end_s: f64,
}

pub struct AsrPipeline {
    bundle: LoadedBundle,
    /// The prompt of each input the bundle transcribes ([`SpeechInput::index`]).
    templates: [Option<PromptTemplate>; 3],
    /// KV of each prompt's text before the features, computed once and
    /// copied into every utterance's cache (it is the same for all of them).
    prefix_caches: [Option<KvCache>; 3],
    mel: LogMel,
    window: EncoderWindow,
    normalize: bool,
}

impl AsrPipeline {
    /// The pipeline of `bundle`; a bundle without `[audio]` (captions only)
    /// gives one whose transcriptions fail with a clear error.
    pub fn new(bundle: LoadedBundle) -> Result<Self, BundleError> {
        let mut templates = [None, None, None];
        for input in SpeechInput::ALL {
            let usable = (!input.has_audio() || bundle.audio.is_some())
                && (!input.has_video() || bundle.lip.is_some());
            if usable {
                templates[input.index()] =
                    PromptTemplate::of(input, &bundle.manifest.prompts, &bundle.tokenizer)?;
            }
        }
        let audio = bundle.manifest.audio.as_ref();
        Ok(AsrPipeline {
            mel: LogMel::whisper(audio.map_or(80, |a| a.n_mels)),
            window: audio.map(|a| a.window).unwrap_or_default(),
            normalize: audio.is_some_and(|a| a.normalize_waveform),
            bundle,
            templates,
            prefix_caches: [None, None, None],
        })
    }

    /// Whether the bundle transcribes `input`.
    pub fn transcribes(&self, input: SpeechInput) -> bool {
        self.templates[input.index()].is_some()
    }

    pub fn bundle(&self) -> &LoadedBundle {
        &self.bundle
    }

    /// Token ids of the audio prompt before and after the audio (empty
    /// when the bundle does not transcribe audio alone).
    pub fn prompt_ids(&self) -> (Vec<u32>, Vec<u32>) {
        let Some(t) = &self.templates[SpeechInput::Audio.index()] else {
            return (Vec::new(), Vec::new());
        };
        let suffix = t
            .rest
            .iter()
            .flat_map(|p| match p {
                Piece::Text(ids) => ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        (t.prefix.clone(), suffix)
    }

    /// The log-mel input the encoder gets for `samples` (even frame count).
    pub fn spectrogram(&self, samples: &[f32]) -> MelSpectrogram {
        // Llama-AVSR normalises the whole utterance, then cuts it to 30 s.
        let normalized;
        let samples = if self.normalize {
            normalized = normalize(samples);
            &normalized[..]
        } else {
            samples
        };
        let samples = &samples[..samples.len().min(MAX_SAMPLES)];
        match self.window {
            EncoderWindow::Utterance => {
                let mut mel = self.mel.compute(samples);
                if mel.frames % 2 == 1 {
                    drop_last_frame(&mut mel);
                }
                mel
            }
            EncoderWindow::Padded30s => {
                let mut padded = samples.to_vec();
                padded.resize(MAX_SAMPLES, 0.0);
                self.mel.compute(&padded)
            }
        }
    }

    /// Projected audio embeddings `[tokens, hidden]` for `samples`, or `None`
    /// when the audio is too short to give a single token.
    pub fn audio_embeddings(
        &mut self,
        samples: &[f32],
        times: &mut StageTimes,
    ) -> Result<Option<Tensor>, BundleError> {
        // Digital silence has nothing to transcribe, and the model would
        // make words up from its flat log-mel.
        if samples.iter().all(|s| s.abs() < SILENT_PEAK) {
            return Ok(None);
        }
        self.audio_features(samples, times)
    }

    /// [`AsrPipeline::audio_embeddings`] of audio that may be silent (the
    /// video beside it has something to say).
    fn audio_features(
        &mut self,
        samples: &[f32],
        times: &mut StageTimes,
    ) -> Result<Option<Tensor>, BundleError> {
        let t = Instant::now();
        let mel = self.spectrogram(samples);
        times.mel = t.elapsed();
        if mel.frames < 2 {
            return Ok(None);
        }
        let t = Instant::now();
        let audio = self.bundle.audio.as_mut().ok_or_else(|| {
            BundleError::Manifest(
                "this bundle has no [audio] section: it does not transcribe".into(),
            )
        })?;
        let mut features = audio.encoder.encode(&mel)?;
        if self.window == EncoderWindow::Padded30s {
            let keep = padded_frames_kept(samples.len()).min(features.frames);
            features.data.truncate(keep * features.dim);
            features.frames = keep;
        }
        times.encoder = t.elapsed();
        if audio.projector.output_len(features.frames) == 0 {
            return Ok(None);
        }
        let t = Instant::now();
        let x = Tensor::from_vec(
            features.data,
            (features.frames, features.dim),
            self.bundle.llm.device(),
        )
        .map_err(avlm_llm::LlmError::from)?;
        let projected = audio.projector.forward(&x)?;
        times.projector = t.elapsed();
        Ok(Some(projected))
    }

    /// Projected video embeddings `[tokens, hidden]` of `clip`, or `None`
    /// when it is too short to give a single token.
    pub fn video_embeddings(
        &mut self,
        clip: &LipClip,
        times: &mut StageTimes,
    ) -> Result<Option<Tensor>, BundleError> {
        let lip = self.bundle.lip.as_mut().ok_or_else(|| {
            BundleError::Manifest("this bundle has no [lip] section: it does not read lips".into())
        })?;
        if clip.frames == 0 || lip.projector.output_len(clip.frames) == 0 {
            return Ok(None);
        }
        if clip.data.len() != clip.frames * LIP_SIZE * LIP_SIZE {
            return Err(BundleError::Mismatch(format!(
                "a lip clip of {} frames holds {} values, not {} (88x88 a frame)",
                clip.frames,
                clip.data.len(),
                clip.frames * LIP_SIZE * LIP_SIZE
            )));
        }
        // Llama-AVSR trims the crops to whole projector stacks before the
        // encoder (its attention sees every frame, so trimming after differs).
        let k = lip.projector.config().compression.k().max(1);
        let frames = clip.frames / k * k;
        let t = Instant::now();
        let features = lip
            .encoder
            .encode(&clip.data[..frames * LIP_SIZE * LIP_SIZE], frames)?;
        let x = Tensor::from_vec(
            features.data,
            (features.frames, features.dim),
            self.bundle.llm.device(),
        )
        .map_err(avlm_llm::LlmError::from)?;
        let projected = lip.projector.forward(&x)?;
        times.lip += t.elapsed();
        Ok(Some(projected))
    }

    /// Transcribes one utterance of 16 kHz mono audio (at most 30 s is used).
    pub fn transcribe(&mut self, samples: &[f32]) -> Result<Transcript, BundleError> {
        self.transcribe_with(samples, &[])
    }

    /// Like [`AsrPipeline::transcribe`], with the answer forced to start with
    /// `forced` tokens (text already committed to the client); the returned
    /// tokens and text include them.
    pub fn transcribe_with(
        &mut self,
        samples: &[f32],
        forced: &[u32],
    ) -> Result<Transcript, BundleError> {
        self.decode(samples, None, forced, false)
    }

    /// Transcribes one utterance from its audio (16 kHz mono; may be empty)
    /// and its mouth crops (`None`: audio alone), with the prompt of that input.
    pub fn transcribe_clip(
        &mut self,
        samples: &[f32],
        video: Option<&LipClip>,
    ) -> Result<Transcript, BundleError> {
        self.decode(samples, video, &[], false)
    }

    /// A provisional transcript of an open segment's audio so far, starting
    /// with `forced` tokens, decoded with `decoding.partial_beam_width`.
    pub fn transcribe_partial(
        &mut self,
        samples: &[f32],
        forced: &[u32],
    ) -> Result<Transcript, BundleError> {
        self.decode(samples, None, forced, true)
    }

    fn decode(
        &mut self,
        samples: &[f32],
        video: Option<&LipClip>,
        forced: &[u32],
        partial: bool,
    ) -> Result<Transcript, BundleError> {
        let mut d = self.begin_clip(samples, video, forced, partial)?;
        self.prefill(&mut d, usize::MAX)?;
        let llm = &self.bundle.llm;
        loop {
            d.select(llm)?;
            let t = Instant::now();
            let (ids, mut caches): (Vec<u32>, Vec<&mut KvCache>) = d.rows().unzip();
            if ids.is_empty() {
                break;
            }
            let rows = step_rows(llm, &ids, &mut caches)?;
            d.accept(rows);
            d.times.decode += t.elapsed();
        }
        self.finish(d)
    }

    /// Starts transcribing `samples` (16 kHz mono, at most 30 s used) with the
    /// answer forced to start with `forced`: runs the encoder and projector
    /// and lays out the prompt; [`AsrPipeline::prefill`] then runs it through
    /// the LLM and the returned [`Decode`] is stepped one token per round.
    /// A `partial` re-decode searches with `decoding.partial_beam_width`.
    /// Nothing interrupts its search: a caller that no longer wants the
    /// answer stops stepping it.
    pub fn begin(
        &mut self,
        samples: &[f32],
        forced: &[u32],
        partial: bool,
    ) -> Result<Decode, BundleError> {
        self.begin_clip(samples, None, forced, partial)
    }

    /// [`AsrPipeline::begin`] of an utterance with mouth crops: audio alone
    /// (`video` `None`), video alone (`samples` empty), or both (the audio
    /// cut or zero-padded to 640 samples a crop); each with its own prompt.
    pub fn begin_clip(
        &mut self,
        samples: &[f32],
        video: Option<&LipClip>,
        forced: &[u32],
        partial: bool,
    ) -> Result<Decode, BundleError> {
        let decoding = &self.bundle.manifest.decoding;
        let width = if partial {
            decoding.partial_beam_width.unwrap_or(decoding.beam_width)
        } else {
            decoding.beam_width
        };
        let mut times = StageTimes::default();
        let empty = |times| Decode {
            forced: forced.to_vec(),
            audio_tokens: 0,
            prompt_tokens: 0,
            times,
            state: DecodeState::Finished(Generation {
                tokens: Vec::new(),
                log_prob: 0.0,
                stopped: false,
            }),
            silent: true,
            prompt_digest: None,
            ctc: None,
            frame_s: 0.0,
        };
        let input = match (samples.is_empty(), video) {
            (_, None) => SpeechInput::Audio,
            (true, Some(_)) => SpeechInput::Video,
            (false, Some(_)) => SpeechInput::AudioVideo,
        };
        if self.templates[input.index()].is_none() {
            return Err(BundleError::Manifest(format!(
                "this bundle has no {} (or not the encoders it needs)",
                input.prompt_key()
            )));
        }
        let aligned;
        let samples = match video {
            Some(clip) if input == SpeechInput::AudioVideo => {
                let mut a = samples.to_vec();
                a.resize(clip.frames * SAMPLES_PER_LIP_FRAME, 0.0);
                aligned = a;
                &aligned[..]
            }
            _ => samples,
        };
        let audio = match input {
            SpeechInput::Audio => match self.audio_embeddings(samples, &mut times)? {
                Some(a) => Some(a),
                None => return Ok(empty(times)),
            },
            SpeechInput::AudioVideo => match self.audio_features(samples, &mut times)? {
                Some(a) => Some(a),
                None => return Ok(empty(times)),
            },
            SpeechInput::Video => None,
        };
        let clip_s = video.map(LipClip::seconds);
        let video = match video {
            Some(clip) => match self.video_embeddings(clip, &mut times)? {
                Some(v) => Some(v),
                None => return Ok(empty(times)),
            },
            None => None,
        };
        let t = Instant::now();
        self.ensure_prefix_cache(input)?;
        let llm = &self.bundle.llm;
        let decoding = &self.bundle.manifest.decoding;
        let template = self.templates[input.index()]
            .as_ref()
            .expect("checked above");
        let mut parts = Vec::with_capacity(template.rest.len() + 1);
        let mut feature_tokens = 0;
        for piece in &template.rest {
            match piece {
                Piece::Text(ids) => parts.push(llm.embed_tokens(ids)?),
                Piece::Audio | Piece::Video => {
                    let x = if *piece == Piece::Audio {
                        &audio
                    } else {
                        &video
                    };
                    let x = x.clone().expect("the template's inputs were encoded");
                    feature_tokens += x.dim(0).map_err(tensor_error)?;
                    parts.push(x);
                }
            }
        }
        if !forced.is_empty() {
            parts.push(llm.embed_tokens(forced)?);
        }
        let embedded = Tensor::cat(&parts, 0).map_err(tensor_error)?;
        // The CTC head scores the audio alone (not the prompt around it).
        let ctc = match (&self.bundle.ctc, &audio) {
            (Some(head), Some(audio)) => Some(Arc::new(head.scorer(llm, audio)?)),
            _ => None,
        };
        let ctc_for_words = ctc.clone();
        // Encoder frames are 2 hops (20 ms); the projector merges k of them.
        let frame_s = match (&audio, &self.bundle.audio) {
            (Some(_), Some(a)) => {
                let k = 1000.0 / a.projector.output_len(1000).max(1) as f64;
                k * (2 * HOP) as f64 / f64::from(crate::media::AUDIO_RATE)
            }
            _ => 0.0,
        };
        let fed_before = embedded.dim(0).map_err(tensor_error)?;
        let prompt_tokens = template.prefix.len() + fed_before - forced.len();
        let seconds = match clip_s {
            Some(s) if input == SpeechInput::Video => s,
            _ => samples.len() as f64 / f64::from(crate::media::AUDIO_RATE),
        };
        let budget = decoding.token_budget(seconds).max(forced.len() + 1);
        let mut cache = llm.new_cache(prompt_tokens + budget + 1)?;
        if let Some(prefix) = &self.prefix_caches[input.index()] {
            cache.copy_prefix_from(prefix, prefix.len())?;
        }
        times.prefill = t.elapsed();
        Ok(Decode {
            forced: forced.to_vec(),
            audio_tokens: feature_tokens,
            prompt_tokens,
            times,
            state: DecodeState::Prefill(Box::new(Prefill {
                cache,
                input: embedded,
                fed: 0,
                ctc,
                width,
                budget,
            })),
            silent: false,
            prompt_digest: None,
            ctc: ctc_for_words,
            frame_s,
        })
    }

    /// Runs more prompt positions of `d` through the LLM, in whole chunks of
    /// [`PREFILL_CHUNK`] positions while they fit in `max_tokens` (at least
    /// one chunk when any are left); once the prompt is in, `d` is ready to
    /// step. Returns the positions run.
    ///
    /// The chunks start at fixed positions whatever the budget, so a prompt
    /// gives the same numbers (and the same transcript) alone and under load.
    pub fn prefill(&self, d: &mut Decode, max_tokens: usize) -> Result<usize, BundleError> {
        let DecodeState::Prefill(p) = &mut d.state else {
            return Ok(0);
        };
        let t = Instant::now();
        let llm = &self.bundle.llm;
        let total = p.input.dim(0).map_err(tensor_error)?;
        let mut ran = 0;
        let logits = loop {
            let n = (total - p.fed).min(PREFILL_CHUNK);
            let chunk = p.input.narrow(0, p.fed, n).map_err(tensor_error)?;
            let out = llm.forward_embeds(&chunk, &mut p.cache, false)?;
            p.fed += n;
            ran += n;
            if p.fed == total {
                break Llama::last_logits(&out)?;
            }
            if ran + (total - p.fed).min(PREFILL_CHUNK) > max_tokens {
                d.times.prefill += t.elapsed();
                return Ok(ran);
            }
        };
        d.times.prefill += t.elapsed();
        d.prompt_digest = Some(digest(&logits));
        let n = ran;
        let DecodeState::Prefill(p) = std::mem::replace(&mut d.state, DecodeState::Taken) else {
            unreachable!("matched above");
        };
        d.state = DecodeState::Search(self.search(*p, logits, &d.forced)?);
        Ok(n)
    }

    fn search(&self, p: Prefill, logits: Vec<f32>, forced: &[u32]) -> Result<Search, BundleError> {
        let llm = &self.bundle.llm;
        let decoding = &self.bundle.manifest.decoding;
        let stop = StopCriteria {
            max_new_tokens: p.budget.saturating_sub(forced.len()).max(1),
            stop_tokens: self.bundle.stop_ids.clone(),
            interrupt: Interrupt::never(),
        };
        let beam = BeamConfig {
            width: p.width,
            length_penalty: decoding.length_penalty,
            stop,
        };
        // A forced prefix the CTC head rules out (longer than the audio's
        // frames) cannot steer anything: the LLM decodes alone then.
        let guide = match p.ctc {
            Some(scorer) => {
                let start = scorer.advance(scorer.initial(), forced)?;
                (start.prefix > f32::NEG_INFINITY).then(|| CtcGuide {
                    scorer,
                    weight: decoding.ctc_weight,
                    start,
                })
            }
            None => None,
        };
        Ok(match guide {
            Some(guide) => Search::Beam(BeamSearch::new(llm, &p.cache, logits, beam, Some(guide))?),
            None if p.width <= 1 => Search::Greedy(GreedySearch::new(p.cache, logits, beam.stop)),
            None => Search::Beam(BeamSearch::new(llm, &p.cache, logits, beam, None)?),
        })
    }

    /// The transcript of a decode that has stopped stepping.
    pub fn finish(&self, d: Decode) -> Result<Transcript, BundleError> {
        let generation = match d.state {
            DecodeState::Finished(g) => g,
            DecodeState::Search(Search::Greedy(s)) => s.finish().0,
            DecodeState::Search(Search::Beam(s)) => s.finish(),
            DecodeState::Prefill(_) | DecodeState::Taken => {
                return Err(BundleError::Manifest(
                    "a transcription finished before its prompt was run".into(),
                ))
            }
        };
        if d.silent {
            return Ok(Transcript {
                text: String::new(),
                tokens: Vec::new(),
                words: Vec::new(),
                audio_tokens: 0,
                prompt_tokens: 0,
                times: d.times,
            });
        }
        let forced = &d.forced;
        let mut tokens = forced.to_vec();
        tokens.extend(generation.tokens);
        // Repetition loops are cut in the generated part only: the forced
        // prefix (already committed to the client) stays as it is.
        let full = self.bundle.tokenizer.decode(&tokens, true)?;
        let forced_text = self.bundle.tokenizer.decode(forced, true)?;
        let text = match full.strip_prefix(forced_text.as_str()) {
            Some(rest) if !forced.is_empty() => format!(
                "{} {}",
                forced_text.trim(),
                super::repetition::cut_repetitions(rest)
            )
            .trim()
            .to_string(),
            _ => super::repetition::cut_repetitions(&full),
        };
        let words = match &d.ctc {
            Some(ctc) => self.word_times(ctc, &tokens, &text, d.frame_s)?,
            None => Vec::new(),
        };
        Ok(Transcript {
            text,
            tokens,
            words,
            audio_tokens: d.audio_tokens,
            prompt_tokens: d.prompt_tokens,
            times: d.times,
        })
    }

    /// The words of `text` (the transcript of `tokens`) timed by the CTC
    /// head's forced alignment of the tokens; `frame_s` is the time one
    /// projected audio frame covers. A word spans its tokens' frames.
    fn word_times(
        &self,
        ctc: &CtcPrefixScorer,
        tokens: &[u32],
        text: &str,
        frame_s: f64,
    ) -> Result<Vec<WordTime>, BundleError> {
        let tokenizer = &self.bundle.tokenizer;
        // The spoken tokens: stop and special tokens decode to nothing.
        let mut pieces = Vec::new();
        for &t in tokens {
            let piece = tokenizer.decode(&[t], true)?;
            if !piece.is_empty() && !self.bundle.stop_ids.contains(&t) {
                pieces.push((t, piece));
            }
        }
        let ids: Vec<u32> = pieces.iter().map(|(t, _)| *t).collect();
        let Some(spans) = ctc.align(&ids)? else {
            return Ok(Vec::new());
        };
        // Tokens grouped into words: a piece starting with a space starts one.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for (i, (_, piece)) in pieces.iter().enumerate() {
            let starts = piece.starts_with(' ') || groups.is_empty();
            if starts && !piece.trim().is_empty() {
                groups.push((i, i));
            } else if let Some(g) = groups.last_mut() {
                g.1 = i;
            }
        }
        // The transcript's words take the groups' times in order (its text
        // may be shorter: repetitions are cut). CTC marks a token with a
        // short spike near its onset, not its extent: a word starts at its
        // first token's spike and lasts until the next word starts, the
        // last one until the audio ends.
        let starts: Vec<f64> = groups
            .iter()
            .map(|&(a, _)| spans[a].0 as f64 * frame_s)
            .collect();
        let audio_end = ctc.frames() as f64 * frame_s;
        let words: Vec<&str> = text.split_whitespace().collect();
        let n = words.len().min(groups.len());
        Ok((0..n)
            .map(|i| {
                let (_, b) = groups[i];
                let end = match starts.get(i + 1) {
                    Some(&next) => next,
                    None => audio_end.max((spans[b].1 + 1) as f64 * frame_s),
                };
                WordTime {
                    text: words[i].to_string(),
                    start_s: starts[i],
                    end_s: end.max(starts[i] + frame_s / 2.0),
                }
            })
            .collect())
    }

    /// Token ids of `text` as the model would write it after the prompt.
    pub fn encode_answer(&self, text: &str) -> Result<Vec<u32>, BundleError> {
        Ok(self.bundle.tokenizer.encode(text)?)
    }

    fn ensure_prefix_cache(&mut self, input: SpeechInput) -> Result<(), BundleError> {
        let i = input.index();
        let prefix = match &self.templates[i] {
            Some(t) if self.prefix_caches[i].is_none() && !t.prefix.is_empty() => &t.prefix,
            _ => return Ok(()),
        };
        let llm = &self.bundle.llm;
        let mut cache = llm.new_cache(prefix.len())?;
        llm.forward(prefix, &mut cache, false)?;
        self.prefix_caches[i] = Some(cache);
        Ok(())
    }
}

/// The prompt of a transcription, run through the LLM in chunks.
struct Prefill {
    cache: KvCache,
    /// `[positions, hidden]`: projected audio, the prompt after it, the forced answer.
    input: Tensor,
    fed: usize,
    ctc: Option<Arc<CtcPrefixScorer>>,
    width: usize,
    /// Most tokens the answer may have, forced ones included.
    budget: usize,
}

enum Search {
    Greedy(GreedySearch),
    Beam(BeamSearch),
}

enum DecodeState {
    Prefill(Box<Prefill>),
    Search(Search),
    Finished(Generation),
    /// Only while moving from one state to the next.
    Taken,
}

/// A hash of `values`' bits.
fn digest(values: &[f32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for v in values {
        v.to_bits().hash(&mut h);
    }
    h.finish()
}

/// Prompt positions one prefill call of the LLM runs at most: prompts are
/// cut at multiples of it from their start, so their numbers never depend
/// on how much else a tick runs.
pub const PREFILL_CHUNK: usize = 64;

/// One transcription in progress (see [`AsrPipeline::begin`]): its prompt
/// is prefilled, then its search advances one token per round, its rows
/// run by the caller, batched with other decodes' rows.
pub struct Decode {
    forced: Vec<u32>,
    audio_tokens: usize,
    prompt_tokens: usize,
    /// Silence or audio too short for a token: nothing to decode.
    silent: bool,
    pub times: StageTimes,
    state: DecodeState,
    /// A fingerprint of the logits after the whole prompt, once it is in.
    prompt_digest: Option<u64>,
    /// The CTC head's view of the audio, for the words' times.
    ctc: Option<Arc<CtcPrefixScorer>>,
    /// Seconds of audio one projected frame covers.
    frame_s: f64,
}

impl Decode {
    /// A fingerprint of the exact logits the prompt ended with, once the
    /// prompt is in: two decodes with equal fingerprints ran their prompts
    /// to the same numbers, bit for bit.
    pub fn prompt_digest(&self) -> Option<u64> {
        self.prompt_digest
    }

    /// Prompt positions still to run.
    pub fn prefill_left(&self) -> usize {
        match &self.state {
            DecodeState::Prefill(p) => p.input.dim(0).map_or(0, |n| n - p.fed),
            _ => 0,
        }
    }

    /// Whether the search has ended (or there was nothing to decode).
    pub fn is_done(&self) -> bool {
        match &self.state {
            DecodeState::Finished(_) => true,
            DecodeState::Search(Search::Greedy(s)) => s.is_done(),
            DecodeState::Search(Search::Beam(s)) => s.is_done(),
            DecodeState::Prefill(_) | DecodeState::Taken => false,
        }
    }

    /// Picks the next tokens from the last logits (a no-op while prefilling).
    pub fn select(&mut self, llm: &Llama) -> Result<(), BundleError> {
        match &mut self.state {
            DecodeState::Search(Search::Greedy(s)) => s.select()?,
            DecodeState::Search(Search::Beam(s)) => s.select(llm)?,
            _ => {}
        }
        Ok(())
    }

    /// The rows to run this round: (token, cache) of each live hypothesis.
    pub fn rows(&mut self) -> Box<dyn Iterator<Item = (u32, &mut KvCache)> + '_> {
        match &mut self.state {
            DecodeState::Search(Search::Greedy(s)) => Box::new(s.row().into_iter()),
            DecodeState::Search(Search::Beam(s)) => Box::new(s.rows()),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The logits of [`Decode::rows`], in their order.
    pub fn accept(&mut self, mut logits: Vec<Vec<f32>>) {
        match &mut self.state {
            DecodeState::Search(Search::Greedy(s)) => {
                if let Some(l) = logits.pop() {
                    s.accept(l);
                }
            }
            DecodeState::Search(Search::Beam(s)) => s.accept(logits),
            _ => {}
        }
    }
}

/// One decode step over `ids` with their caches: logits rows as Vecs.
pub fn step_rows(
    llm: &Llama,
    ids: &[u32],
    caches: &mut [&mut KvCache],
) -> Result<Vec<Vec<f32>>, BundleError> {
    let rows = llm
        .forward_batch(ids, caches)?
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.to_vec2())
        .map_err(tensor_error)?;
    Ok(rows)
}

fn tensor_error(e: candle_core::Error) -> BundleError {
    BundleError::Llm(avlm_llm::LlmError::from(e))
}

fn drop_last_frame(mel: &mut MelSpectrogram) {
    let frames = mel.frames - 1;
    let mut data = Vec::with_capacity(mel.n_mels * frames);
    for m in 0..mel.n_mels {
        data.extend_from_slice(&mel.data[m * mel.frames..m * mel.frames + frames]);
    }
    mel.data = data;
    mel.frames = frames;
}

/// Encoder frames kept of a 30 s window holding `samples` of audio, as
/// Llama-AVSR cuts them: `max(int(samples / 16000 * 50), 25)`, in f64 as
/// Python computes it (a frame fewer than `samples / 320` at some lengths).
pub fn padded_frames_kept(samples: usize) -> usize {
    let frames = (samples as f64 / f64::from(crate::media::AUDIO_RATE) * 50.0).floor() as usize;
    frames.max(25)
}

/// Zero mean, unit variance over the utterance (Llama-AVSR's layer norm of
/// the waveform, eps 1e-8).
fn normalize(samples: &[f32]) -> Vec<f32> {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = samples
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    let scale = 1.0 / (var + 1e-8).sqrt();
    samples
        .iter()
        .map(|&x| ((f64::from(x) - mean) * scale) as f32)
        .collect()
}
