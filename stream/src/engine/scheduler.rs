//! The model thread's loop. Each tick:
//! 1. takes new requests (blocking only when there is nothing to do) and
//!    drops every request, queued or running, whose session no longer wants it;
//! 2. prefills prompts under a per-tick token budget: running prefills first,
//!    then new requests, finals before partials, each prompt in chunks;
//! 3. runs one batched decode step over the live rows (beams) of every
//!    transcription in flight, each row at its own position in its own cache;
//! 4. answers the transcriptions whose search ended.
//!
//! A request that fails or panics is answered with its error and leaves; the
//! others go on.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use avlm_llm::KvCache;

use super::asr::{step_rows, AsrPipeline, Decode};
use super::caption::{CaptionRow, CaptionWork};
use super::{EngineError, EngineLoad, Request, Transcript, Work};
use crate::bundle::{BundleError, CaptionFormat};

/// Prompt positions prefilled per tick across all requests while no rows
/// are decoding.
pub const TICK_PROMPT_TOKENS: usize = 256;

/// The same while rows are decoding: a CPU prefills a few ms a position,
/// and every live row waits for the tick to end before its next token.
pub const TICK_PROMPT_TOKENS_DECODING: usize = 64;

/// Transcriptions decoding at once; more wait in the queue.
pub const MAX_ACTIVE: usize = 16;

/// Requests waiting here at most; beyond it they stay in the engine's
/// bounded inbox, and then with their sessions.
pub const MAX_WAITING: usize = 64;

/// A request being transcribed.
struct Active {
    request: Meta,
    decode: Decode,
}

/// A request without its samples.
struct Meta {
    session: u64,
    partial: bool,
    /// Samples this request holds in the engine's backlog (0 for a partial).
    backlog: u64,
    /// Audio seconds it transcribes.
    audio_s: f64,
    cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    reply: super::AnswerTo,
}

pub struct Scheduler {
    pipeline: AsrPipeline,
    load: Arc<EngineLoad>,
    finals: VecDeque<Request>,
    partials: VecDeque<Request>,
    active: Vec<Active>,
    /// The caption stream format, when the bundle captions video.
    format: Option<CaptionFormat>,
    captions: Vec<CaptionRow>,
    /// The caption row whose frame runs first next tick.
    caption_turn: usize,
    last_trim: Instant,
    answered_since_trim: bool,
}

/// How often at most a busy thread returns freed heap to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Scheduler {
    pub fn new(
        pipeline: AsrPipeline,
        format: Option<CaptionFormat>,
        load: Arc<EngineLoad>,
    ) -> Self {
        Scheduler {
            pipeline,
            load,
            finals: VecDeque::new(),
            partials: VecDeque::new(),
            active: Vec::new(),
            format,
            captions: Vec::new(),
            caption_turn: 0,
            last_trim: Instant::now(),
            answered_since_trim: false,
        }
    }

    /// Serves requests until every sender is gone and all work is done.
    pub fn run(mut self, inbox: Receiver<Work>) {
        let mut open = true;
        loop {
            if self.idle() {
                if !open {
                    return;
                }
                give_back_memory();
                match inbox.recv() {
                    Ok(r) => self.enqueue(r),
                    Err(_) => return,
                }
            }
            while open && self.finals.len() + self.partials.len() < MAX_WAITING {
                match inbox.try_recv() {
                    Ok(r) => self.enqueue(r),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            let t = Instant::now();
            self.tick();
            crate::metrics::get()
                .model_busy_seconds
                .inc_by(t.elapsed().as_secs_f64());
        }
    }

    fn idle(&self) -> bool {
        self.finals.is_empty()
            && self.partials.is_empty()
            && self.active.is_empty()
            && !self.captions.iter().any(CaptionRow::busy)
    }

    fn enqueue(&mut self, work: Work) {
        let r = match work {
            Work::Transcribe(r) => r,
            Work::Caption(c) => return self.caption_work(c),
        };
        if r.partial {
            self.partials.push_back(r);
        } else {
            self.finals.push_back(r);
        }
    }

    fn caption_work(&mut self, work: CaptionWork) {
        match work {
            CaptionWork::Open {
                session,
                settings,
                events,
                cancelled,
            } => {
                let Some(format) = &self.format else {
                    events(super::CaptionEvent::Failed(EngineError::Model(
                        "this bundle has no vision encoder".into(),
                    )));
                    return;
                };
                let llm = &self.pipeline.bundle().llm;
                match guarded(|| super::caption::caption_cache(llm, format)) {
                    Ok(cache) => {
                        self.captions.push(CaptionRow::open(
                            cache, format, session, settings, events, cancelled,
                        ));
                        self.count_captions();
                    }
                    Err(e) => events(super::CaptionEvent::Failed(e)),
                }
            }
            CaptionWork::Frame {
                session,
                embeds,
                media_time_s,
                at,
            } => {
                if let Some(row) = self.captions.iter_mut().find(|r| r.session == session) {
                    row.push(embeds, media_time_s, at);
                }
            }
            CaptionWork::Question { session, text, at } => {
                let tokenizer = &self.pipeline.bundle().tokenizer;
                if let Some(row) = self.captions.iter_mut().find(|r| r.session == session) {
                    // A question fits the cache's window with room for its
                    // answer: longer ones are cut to their first tokens.
                    let most = self.format.as_ref().map_or(64, |f| (f.window / 4).max(16));
                    match tokenizer.encode(&text) {
                        Ok(mut ids) => {
                            if ids.len() > most {
                                tracing::info!(
                                    tokens = ids.len(),
                                    kept = most,
                                    "a long question was cut"
                                );
                                ids.truncate(most);
                            }
                            row.ask(ids, text, at)
                        }
                        Err(e) => tracing::warn!(error = %e, "a question could not be tokenised"),
                    }
                }
            }
            CaptionWork::Close { session } => {
                if let Some(row) = self.captions.iter_mut().find(|r| r.session == session) {
                    row.close();
                }
                self.finish_captions();
            }
        }
    }

    fn count_captions(&self) {
        self.load
            .caption_rows
            .store(self.captions.len() as u64, Ordering::Relaxed);
        self.load.caption_kv_bytes.store(
            self.captions
                .iter()
                .map(CaptionRow::kv_bytes)
                .sum::<usize>() as u64,
            Ordering::Relaxed,
        );
    }

    /// Removes the caption rows that are closed and done, telling their sessions.
    fn finish_captions(&mut self) {
        let before = self.captions.len();
        self.captions.retain(|row| {
            if row.finished() {
                row.closed();
                false
            } else {
                true
            }
        });
        if self.captions.len() != before {
            self.count_captions();
        }
    }

    /// One round: drop, prefill, step, answer.
    pub fn tick(&mut self) {
        self.drop_cancelled();
        let budget = self.caption_frames();
        self.prefill(budget);
        self.step();
        self.finish_captions();
        let metrics = crate::metrics::get();
        metrics
            .queue_depth
            .set((self.finals.len() + self.partials.len()) as i64);
        metrics.backlog_seconds.set(self.load.backlog_s());
    }

    /// Runs one waiting frame of each caption stream (its tokens and the
    /// speak-or-not decision); returns the prompt budget left for transcriptions.
    fn caption_frames(&mut self) -> usize {
        let decoding = self.active.iter().any(|a| a.decode.prefill_left() == 0)
            || self.captions.iter().any(|r| !r.wants_prefill() && r.busy());
        let mut budget = if decoding {
            TICK_PROMPT_TOKENS_DECODING
        } else {
            TICK_PROMPT_TOKENS
        };
        let Some(format) = &self.format else {
            return budget;
        };
        let llm = &self.pipeline.bundle().llm;
        let mut failed = Vec::new();
        // Round-robin from where the last tick stopped, under the budget (at
        // least one frame a tick): many caption streams must not hold up the
        // decode steps of the rows already running.
        let n = self.captions.len();
        let first = self.caption_turn % n.max(1);
        let mut ran = 0;
        for k in 0..n {
            let i = (first + k) % n;
            let row = &mut self.captions[i];
            if !row.wants_prefill() {
                continue;
            }
            let cost = row.prefill_cost();
            if ran > 0 && cost > budget {
                self.caption_turn = i;
                break;
            }
            if let Err(e) = guarded(|| row.frame_step(llm, format)) {
                failed.push((i, e));
            }
            crate::metrics::get().prefill_tokens.inc_by(cost as u64);
            ran += 1;
            budget = budget.saturating_sub(cost);
            self.caption_turn = i + 1;
        }
        failed.sort_by_key(|(i, _)| *i);
        for (i, e) in failed.into_iter().rev() {
            let row = self.captions.remove(i);
            tracing::warn!(error = %e, "a caption stream failed");
            row.failed(e);
        }
        budget
    }

    /// Counts a request out; before its answer, so whoever gets the answer
    /// sees the count without it.
    fn done_with(&self, request: &Meta) {
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.load
            .backlog_samples
            .fetch_sub(request.backlog, Ordering::AcqRel);
    }

    fn drop_cancelled(&mut self) {
        let before = self.finals.len() + self.partials.len() + self.active.len();
        let load = &self.load;
        let forget = |samples: u64| {
            load.backlog_samples.fetch_sub(samples, Ordering::AcqRel);
        };
        self.finals.retain(|r| {
            let gone = (r.cancelled)();
            if gone {
                forget(r.samples.len() as u64);
            }
            !gone
        });
        self.partials.retain(|r| !(r.cancelled)());
        self.active.retain(|a| {
            let gone = (a.request.cancelled)();
            if gone {
                forget(a.request.backlog);
            }
            !gone
        });
        let rows = self.captions.len();
        self.captions.retain(|r| {
            let gone = (r.cancelled)();
            if gone {
                r.closed();
            }
            !gone
        });
        if self.captions.len() != rows {
            self.count_captions();
        }
        let after = self.finals.len() + self.partials.len() + self.active.len();
        for _ in after..before {
            self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn prefill(&mut self, mut budget: usize) {
        // Running prefills first, finals before partials.
        self.active.sort_by_key(|a| a.request.partial);
        let mut failed = Vec::new();
        for (i, a) in self.active.iter_mut().enumerate() {
            if budget == 0 {
                break;
            }
            if a.decode.prefill_left() == 0 {
                continue;
            }
            let pipeline = &self.pipeline;
            match guarded(|| pipeline.prefill(&mut a.decode, budget)) {
                Ok(n) => {
                    crate::metrics::get().prefill_tokens.inc_by(n as u64);
                    budget = budget.saturating_sub(n)
                }
                Err(e) => failed.push((i, e)),
            }
        }
        self.fail(failed);
        while budget > 0 && self.active.len() < MAX_ACTIVE {
            // Partials start only while no final is waiting or running: a
            // final's latency is what a client waits on; a partial is a preview.
            let finals_busy = self.active.iter().any(|a| !a.request.partial);
            let next = match self.next_final() {
                Some(r) => Some(r),
                None if !finals_busy => self.partials.pop_front(),
                None => None,
            };
            let Some(r) = next else {
                break;
            };
            let meta = Meta {
                session: r.session,
                partial: r.partial,
                backlog: if r.partial { 0 } else { r.samples.len() as u64 },
                audio_s: (r.samples.len() as f64 / crate::media::AUDIO_RATE as f64)
                    .max(r.video.as_deref().map_or(0.0, super::LipClip::seconds)),
                cancelled: r.cancelled,
                reply: r.reply,
            };
            let pipeline = &mut self.pipeline;
            let started = guarded(|| {
                let forced = pipeline.encode_answer(&r.forced)?;
                let mut decode =
                    pipeline.begin_clip(&r.samples, r.video.as_deref(), &forced, r.partial)?;
                let n = pipeline.prefill(&mut decode, budget)?;
                Ok((decode, n))
            });
            match started {
                Ok((decode, n)) => {
                    crate::metrics::get().prefill_tokens.inc_by(n as u64);
                    budget = budget.saturating_sub(n);
                    self.active.push(Active {
                        request: meta,
                        decode,
                    });
                }
                Err(e) => {
                    self.done_with(&meta);
                    (meta.reply)(Err(e));
                }
            }
        }
    }

    /// The oldest waiting final of a session with the fewest transcriptions
    /// running: a client that sent a whole file at once takes its turn with
    /// the live ones instead of ahead of them.
    fn next_final(&mut self) -> Option<Request> {
        let running = |s: u64| {
            self.active
                .iter()
                .filter(|a| a.request.session == s)
                .count()
        };
        let pick = (0..self.finals.len()).min_by_key(|&i| (running(self.finals[i].session), i))?;
        self.finals.remove(pick)
    }

    fn step(&mut self) {
        let mut failed = Vec::new();
        let llm = &self.pipeline.bundle().llm;
        for (i, a) in self.active.iter_mut().enumerate() {
            if a.decode.prefill_left() == 0 {
                if let Err(e) = guarded(|| a.decode.select(llm)) {
                    failed.push((i, e));
                }
            }
        }
        self.fail(failed);
        self.answer_finished();
        let t = Instant::now();
        let mut ids = Vec::new();
        let mut counts = Vec::with_capacity(self.active.len());
        let mut caches: Vec<&mut KvCache> = Vec::new();
        for a in self.active.iter_mut() {
            let before = ids.len();
            if a.decode.prefill_left() == 0 {
                for (id, cache) in a.decode.rows() {
                    ids.push(id);
                    caches.push(cache);
                }
            }
            counts.push(ids.len() - before);
        }
        let mut speaking = Vec::new();
        let mut speaking_kv = 0;
        if let Some(format) = &self.format {
            let bundle = self.pipeline.bundle();
            for (i, row) in self.captions.iter_mut().enumerate() {
                if let Some((id, cache)) = row.select(format, &bundle.stop_ids, &bundle.tokenizer) {
                    speaking_kv += cache.bytes();
                    ids.push(id);
                    caches.push(cache);
                    speaking.push(i);
                }
            }
        }
        let metrics = crate::metrics::get();
        let caption_kv = self.load.caption_kv_bytes.load(Ordering::Relaxed);
        let decode_kv = caches.iter().map(|c| c.bytes()).sum::<usize>() - speaking_kv;
        metrics
            .kv_cache_bytes
            .set((decode_kv as u64 + caption_kv) as i64);
        if ids.is_empty() {
            return;
        }
        let llm = &self.pipeline.bundle().llm;
        let batched = guarded(|| step_rows(llm, &ids, &mut caches));
        drop(caches);
        let rows = ids.len();
        metrics.rows.observe(rows as f64);
        metrics.decode_tokens.inc_by(rows as u64);
        self.load.max_rows.fetch_max(rows as u64, Ordering::Relaxed);
        match batched {
            Ok(logits) => {
                let elapsed = t.elapsed();
                let share = |n: usize| elapsed.mul_f64(n as f64 / rows as f64);
                let mut logits = logits.into_iter();
                for (a, &n) in self.active.iter_mut().zip(&counts) {
                    if n > 0 {
                        a.decode.accept(logits.by_ref().take(n).collect());
                        a.decode.times.decode += share(n);
                    }
                }
                for (&i, l) in speaking.iter().zip(logits) {
                    self.captions[i].accept(&l, share(1));
                }
            }
            // The batch failed: each row steps alone, so only the one at
            // fault fails.
            Err(_) => self.step_alone(&counts, &speaking),
        }
    }

    fn step_alone(&mut self, counts: &[usize], speaking: &[usize]) {
        let llm = &self.pipeline.bundle().llm;
        let mut failed_rows = Vec::new();
        for &i in speaking {
            let t = Instant::now();
            let row = &mut self.captions[i];
            let Some(format) = &self.format else { break };
            let bundle = self.pipeline.bundle();
            let run = guarded(
                || match row.select(format, &bundle.stop_ids, &bundle.tokenizer) {
                    Some((id, cache)) => step_rows(llm, &[id], &mut [cache]).map(Some),
                    None => Ok(None),
                },
            );
            match run {
                Ok(Some(logits)) => row.accept(&logits[0], t.elapsed()),
                Ok(None) => {}
                Err(e) => failed_rows.push((i, e)),
            }
        }
        for (i, e) in failed_rows.into_iter().rev() {
            let row = self.captions.remove(i);
            tracing::warn!(error = %e, "a caption stream failed");
            row.failed(e);
        }
        let mut failed = Vec::new();
        for (i, (a, &n)) in self.active.iter_mut().zip(counts).enumerate() {
            if n == 0 {
                continue;
            }
            let t = Instant::now();
            let run = guarded(|| {
                let (ids, mut caches): (Vec<u32>, Vec<&mut KvCache>) = a.decode.rows().unzip();
                step_rows(llm, &ids, &mut caches)
            });
            match run {
                Ok(logits) => {
                    a.decode.accept(logits);
                    a.decode.times.decode += t.elapsed();
                }
                Err(e) => failed.push((i, e)),
            }
        }
        self.fail(failed);
    }

    fn answer_finished(&mut self) {
        if self.answered_since_trim && self.last_trim.elapsed() >= TRIM_EVERY {
            give_back_memory();
            self.last_trim = Instant::now();
            self.answered_since_trim = false;
        }
        let mut i = 0;
        while i < self.active.len() {
            if !self.active[i].decode.is_done() {
                i += 1;
                continue;
            }
            let a = self.active.swap_remove(i);
            let pipeline = &self.pipeline;
            let decode = a.decode;
            let result: Result<Transcript, EngineError> = guarded(|| pipeline.finish(decode));
            if let Ok(t) = &result {
                self.load
                    .observe_rate(t.times.total().as_secs_f64(), a.request.audio_s);
                tracing::debug!(
                    partial = a.request.partial,
                    compute_ms = t.times.total().as_millis() as u64,
                    audio_tokens = t.audio_tokens,
                    new_tokens = t.tokens.len(),
                    "transcribed"
                );
            }
            self.done_with(&a.request);
            (a.request.reply)(result);
            self.answered_since_trim = true;
        }
    }

    /// Answers the active requests at `failed` (indices) with their errors.
    fn fail(&mut self, mut failed: Vec<(usize, EngineError)>) {
        failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in failed {
            let a = self.active.remove(i);
            tracing::warn!(error = %e, partial = a.request.partial, "a transcription failed");
            self.done_with(&a.request);
            (a.request.reply)(Err(e));
        }
    }
}

/// Returns the heap that finished transcriptions freed (KV caches, prompt
/// tensors) to the system while the thread has nothing to do: glibc keeps
/// freed blocks in its arenas, so a burst of concurrent transcriptions
/// would otherwise hold its peak memory for good.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs one request's share of the model work: its error, or a panic, stays
/// with that request and never takes the model thread down.
fn guarded<T>(f: impl FnOnce() -> Result<T, BundleError>) -> Result<T, EngineError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EngineError::Model(e.to_string())),
        Err(_) => Err(EngineError::Panicked),
    }
}
