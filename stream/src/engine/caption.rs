//! Live captions, VideoLLM-online's respond-or-not loop: a caption stream is
//! a long-lived row in the scheduler with its own bounded KV cache (the
//! system prompt as attention sinks plus a window of recent positions).
//! After each frame's tokens the model either predicts the separator (stay
//! silent) or, when P(separator) falls below the threshold, speaks: the
//! reply prompt, then greedy tokens until the end token or the budget, as a
//! `Caption` at the frame's media time. The vision front end (encoder, token
//! layout, projector) runs on the session's own thread, so the model thread
//! only runs the LLM.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use avlm_encoders::{Frame, VisionEncoder, VisionPreprocess};
use avlm_llm::{KvCache, Llama, Window};
use avlm_projector::{Projector, VisionTokens};
use candle_core::Tensor;

use super::EngineError;
use crate::bundle::{BundleError, CaptionFormat, VisionParts};

/// Positions evicted at once when a caption cache is full.
const EVICT_BLOCK: usize = 64;

/// The encoder, token layout and projector, shared by every session.
pub struct VisionFrontEnd {
    encoder: Mutex<VisionEncoder>,
    preprocess: VisionPreprocess,
    tokens: VisionTokens,
    projector: Projector,
    grid: (usize, usize),
    name: String,
}

impl VisionFrontEnd {
    pub fn new(parts: VisionParts) -> (Self, CaptionFormat) {
        let grid = parts.encoder.grid();
        let name = parts
            .encoder
            .path()
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        (
            VisionFrontEnd {
                encoder: Mutex::new(parts.encoder),
                preprocess: parts.preprocess,
                tokens: parts.tokens,
                projector: parts.projector,
                grid,
                name,
            },
            parts.format,
        )
    }

    /// The encoder's file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// LLM-space embeddings `[tokens, hidden]` of one frame.
    pub fn embed(&self, frame: &Frame) -> Result<Tensor, BundleError> {
        let pixels = self.preprocess.pixels(frame);
        let features = {
            let mut encoder = self.encoder.lock().unwrap_or_else(|e| e.into_inner());
            encoder.encode(&pixels)?
        };
        let tokens = self.tokens.tokens(
            features.pooled.as_deref(),
            &features.patches,
            self.grid,
            features.dim,
        )?;
        let width = self.tokens.width(features.dim);
        let x = Tensor::from_vec(
            tokens,
            (self.tokens.count(self.grid), width),
            self.projector.device(),
        )
        .map_err(avlm_projector::ProjectorError::from)?;
        Ok(self.projector.forward(&x)?)
    }
}

/// A session's caption settings, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionSettings {
    /// Speak when P(separator) after a frame falls below this.
    pub threshold: f32,
    pub max_new_tokens: usize,
}

/// What a caption stream hears back from the model thread.
#[derive(Debug)]
pub enum CaptionEvent {
    Caption {
        text: String,
        /// The client's question this answers, if any.
        question: Option<String>,
        media_time_s: f64,
        /// When the frame was handed in.
        frame_at: Instant,
        /// Model time of this frame and its reply.
        compute: Duration,
    },
    /// A frame's decision is made (its reply, if any, may still be running):
    /// the session may hand in another.
    FrameDone,
    /// Every frame handed in before the close is done.
    Closed,
    Failed(EngineError),
}

/// Where a caption stream's events go (called on the model thread: it
/// must not block).
pub type CaptionSink = Box<dyn Fn(CaptionEvent) + Send>;

/// Work for the model thread from a caption stream.
pub enum CaptionWork {
    Open {
        session: u64,
        settings: CaptionSettings,
        events: CaptionSink,
        cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    },
    Frame {
        session: u64,
        embeds: Tensor,
        media_time_s: f64,
        at: Instant,
    },
    /// A client's question, answered after the frames handed in before it.
    Question {
        session: u64,
        text: String,
        at: Instant,
    },
    /// Finish the frames handed in, answer `Closed`, and leave.
    Close { session: u64 },
}

/// One caption stream in the scheduler.
pub(super) struct CaptionRow {
    pub session: u64,
    settings: CaptionSettings,
    events: CaptionSink,
    pub cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    cache: KvCache,
    /// Text fed before the next frame: the system prompt and `frame_open`
    /// at first, the separator after a silent frame, `end` + `frame_open`
    /// after a reply.
    pending: Vec<u32>,
    frames: VecDeque<Item>,
    /// Media time of the last frame run.
    media_time_s: f64,
    speaking: Option<Speaking>,
    closing: bool,
}

/// What waits for the model in a caption stream, in order.
enum Item {
    Frame(Tensor, f64, Instant),
    Question(Vec<u32>, String, Instant),
}

struct Speaking {
    question: Option<String>,
    ids: Vec<u32>,
    /// The token to feed next (or the end of the reply).
    next: u32,
    media_time_s: f64,
    frame_at: Instant,
    compute: Duration,
}

/// The bounded KV cache of a caption stream: the system prompt as attention
/// sinks and the format's window of recent positions.
pub fn caption_cache(llm: &Llama, format: &CaptionFormat) -> Result<KvCache, BundleError> {
    let window = Window {
        sinks: format.system.len(),
        recent: format.window,
        evict: EVICT_BLOCK.min(format.window),
    };
    Ok(KvCache::windowed(llm.config(), window, llm.device())?)
}

impl CaptionRow {
    pub fn open(
        cache: KvCache,
        format: &CaptionFormat,
        session: u64,
        settings: CaptionSettings,
        events: CaptionSink,
        cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        let mut pending = format.system.clone();
        pending.extend(&format.frame_open);
        CaptionRow {
            session,
            settings,
            events,
            cancelled,
            cache,
            pending,
            frames: VecDeque::new(),
            media_time_s: 0.0,
            speaking: None,
            closing: false,
        }
    }

    /// Queues a frame (the session bounds how many it hands in at once).
    pub fn push(&mut self, embeds: Tensor, media_time_s: f64, at: Instant) {
        self.frames.push_back(Item::Frame(embeds, media_time_s, at));
    }

    /// Queues a client's question (token ids of its text) after the frames
    /// handed in before it.
    pub fn ask(&mut self, ids: Vec<u32>, text: String, at: Instant) {
        self.frames.push_back(Item::Question(ids, text, at));
    }

    pub fn close(&mut self) {
        self.closing = true;
    }

    /// A frame is waiting and no reply is being spoken.
    pub fn wants_prefill(&self) -> bool {
        self.speaking.is_none() && !self.frames.is_empty()
    }

    /// Positions the next frame step feeds.
    pub fn prefill_cost(&self) -> usize {
        self.pending.len()
            + match self.frames.front() {
                Some(Item::Frame(e, _, _)) => e.dims()[0],
                Some(Item::Question(ids, _, _)) => ids.len(),
                None => 0,
            }
    }

    /// Done: closing with nothing left to do.
    pub fn finished(&self) -> bool {
        self.closing && self.frames.is_empty() && self.speaking.is_none()
    }

    /// Busy with model work.
    pub fn busy(&self) -> bool {
        self.speaking.is_some() || !self.frames.is_empty() || self.closing
    }

    /// Runs the next frame: its tokens after the pending text, then the
    /// decision; when the model speaks, the reply prompt too.
    /// Returns P(separator) after the frame (1 for a question: it is answered).
    pub fn frame_step(&mut self, llm: &Llama, format: &CaptionFormat) -> Result<f32, BundleError> {
        let (embeds, media_time_s, frame_at) = match self.frames.pop_front() {
            None => return Ok(1.0),
            Some(Item::Question(ids, text, at)) => {
                self.question(llm, format, ids, text, at)?;
                return Ok(1.0);
            }
            Some(Item::Frame(embeds, t, at)) => (embeds, t, at),
        };
        self.media_time_s = media_time_s;
        let t = Instant::now();
        let text = llm.embed_tokens(&self.pending)?;
        let x = Tensor::cat(&[&text, &embeds], 0).map_err(avlm_llm::LlmError::from)?;
        let logits = Llama::last_logits(&llm.forward_embeds(&x, &mut self.cache, false)?)?;
        let p_separator = probability(&logits, format.separator);
        (self.events)(CaptionEvent::FrameDone);
        if p_separator >= self.settings.threshold {
            self.pending = vec![format.separator];
            return Ok(p_separator);
        }
        self.pending.clear();
        let logits =
            Llama::last_logits(&llm.forward(&format.reply_prompt, &mut self.cache, false)?)?;
        self.speaking = Some(Speaking {
            question: None,
            ids: Vec::new(),
            next: Llama::argmax(&logits),
            media_time_s,
            frame_at,
            compute: t.elapsed(),
        });
        Ok(p_separator)
    }

    /// Feeds a question after the frames so far and starts its answer.
    fn question(
        &mut self,
        llm: &Llama,
        format: &CaptionFormat,
        ids: Vec<u32>,
        text: String,
        at: Instant,
    ) -> Result<(), BundleError> {
        let Some((before, after)) = &format.question else {
            return Ok(());
        };
        let t = Instant::now();
        // The frame list closes here: a separator waiting for the next frame goes.
        if self.pending == [format.separator] {
            self.pending.clear();
        }
        let mut feed = std::mem::take(&mut self.pending);
        feed.extend(before);
        feed.extend(ids);
        feed.extend(after);
        let logits = Llama::last_logits(&llm.forward(&feed, &mut self.cache, false)?)?;
        self.speaking = Some(Speaking {
            question: Some(text),
            ids: Vec::new(),
            next: Llama::argmax(&logits),
            media_time_s: self.media_time_s,
            frame_at: at,
            compute: t.elapsed(),
        });
        Ok(())
    }

    /// Ends a reply that reached its end token or budget; else the row's
    /// next token and cache for the batched step.
    pub fn select(
        &mut self,
        format: &CaptionFormat,
        stop: &[u32],
        tokenizer: &avlm_llm::Tokenizer,
    ) -> Option<(u32, &mut KvCache)> {
        let s = self.speaking.as_ref()?;
        let ended = s.next == format.end || stop.contains(&s.next);
        if ended || s.ids.len() >= self.settings.max_new_tokens {
            let s = self.speaking.take()?;
            self.pending = vec![format.end];
            self.pending.extend(&format.frame_open);
            let text = tokenizer
                .decode(&s.ids, true)
                .map(|t| t.trim().to_string())
                .unwrap_or_default();
            if !text.is_empty() || s.question.is_some() {
                (self.events)(CaptionEvent::Caption {
                    text,
                    question: s.question,
                    media_time_s: s.media_time_s,
                    frame_at: s.frame_at,
                    compute: s.compute,
                });
            }
            return None;
        }
        let next = s.next;
        Some((next, &mut self.cache))
    }

    /// Takes the logits of the token `select` gave.
    pub fn accept(&mut self, logits: &[f32], spent: Duration) {
        if let Some(s) = &mut self.speaking {
            s.ids.push(s.next);
            s.next = Llama::argmax(logits);
            s.compute += spent;
        }
    }

    pub fn closed(&self) {
        (self.events)(CaptionEvent::Closed);
    }

    pub fn failed(&self, e: EngineError) {
        (self.events)(CaptionEvent::Failed(e));
    }

    /// KV bytes this row holds (its whole window, preallocated).
    pub fn kv_bytes(&self) -> usize {
        self.cache.bytes()
    }
}

/// What the caption loop did after one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameOutcome {
    /// P(separator) after the frame's tokens: the model stays silent when
    /// it is at least the threshold.
    pub p_separator: f32,
    /// What the model said after the frame, if it spoke.
    pub caption: Option<String>,
}

/// Runs the caption loop of one stream over `frames` (LLM-space embeddings
/// `[tokens, hidden]` with their media times) on this thread, exactly as the
/// scheduler runs a caption row (each step alone instead of batched with
/// other rows): for checking converted checkpoints against their reference,
/// and for benchmarks.
pub fn caption_frames(
    llm: &Llama,
    tokenizer: &avlm_llm::Tokenizer,
    stop: &[u32],
    format: &CaptionFormat,
    settings: CaptionSettings,
    frames: &[(Tensor, f64)],
) -> Result<Vec<FrameOutcome>, BundleError> {
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let mut row = CaptionRow::open(
        caption_cache(llm, format)?,
        format,
        0,
        settings,
        Box::new(move |e| {
            if let CaptionEvent::Caption { text, .. } = e {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(text);
            }
        }),
        Arc::new(|| false),
    );
    let mut out = Vec::with_capacity(frames.len());
    for (embeds, t) in frames {
        row.push(embeds.clone(), *t, Instant::now());
        let p_separator = row.frame_step(llm, format)?;
        let spoke = row.speaking.is_some();
        while let Some((id, cache)) = row.select(format, stop, tokenizer) {
            let logits = Llama::last_logits(&llm.forward(&[id], cache, false)?)?;
            row.accept(&logits, Duration::ZERO);
        }
        let caption = spoke
            .then(|| said.lock().unwrap_or_else(|e| e.into_inner()).pop())
            .flatten();
        out.push(FrameOutcome {
            p_separator,
            caption,
        });
    }
    Ok(out)
}

/// Softmax probability of `id` in `logits`.
fn probability(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    logits
        .get(id as usize)
        .map_or(0.0, |&l| (f64::from(l - max).exp() / total) as f32)
}

#[cfg(test)]
mod tests {
    use super::probability;

    #[test]
    fn the_probability_is_a_softmax_entry() {
        let p = probability(&[0.0, (3.0f32).ln(), 0.0], 1);
        assert!((p - 0.6).abs() < 1e-6, "{p}");
        assert_eq!(probability(&[1.0], 5), 0.0);
    }
}
