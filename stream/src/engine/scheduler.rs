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
use super::{EngineError, EngineLoad, Request, Transcript};
use crate::bundle::BundleError;

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
    cancelled: Arc<dyn Fn() -> bool + Send + Sync>,
    reply: super::AnswerTo,
}

pub struct Scheduler {
    pipeline: AsrPipeline,
    load: Arc<EngineLoad>,
    finals: VecDeque<Request>,
    partials: VecDeque<Request>,
    active: Vec<Active>,
    last_trim: Instant,
    answered_since_trim: bool,
}

/// How often at most a busy thread returns freed heap to the system.
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

impl Scheduler {
    pub fn new(pipeline: AsrPipeline, load: Arc<EngineLoad>) -> Self {
        Scheduler {
            pipeline,
            load,
            finals: VecDeque::new(),
            partials: VecDeque::new(),
            active: Vec::new(),
            last_trim: Instant::now(),
            answered_since_trim: false,
        }
    }

    /// Serves requests until every sender is gone and all work is done.
    pub fn run(mut self, inbox: Receiver<Request>) {
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
            self.tick();
        }
    }

    fn idle(&self) -> bool {
        self.finals.is_empty() && self.partials.is_empty() && self.active.is_empty()
    }

    fn enqueue(&mut self, r: Request) {
        if r.partial {
            self.partials.push_back(r);
        } else {
            self.finals.push_back(r);
        }
    }

    /// One round: drop, prefill, step, answer.
    pub fn tick(&mut self) {
        self.drop_cancelled();
        self.prefill();
        self.step();
    }

    /// Counts a request out; before its answer, so whoever gets the answer
    /// sees the count without it.
    fn done_with(&self) {
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    fn drop_cancelled(&mut self) {
        let before = self.finals.len() + self.partials.len() + self.active.len();
        self.finals.retain(|r| !(r.cancelled)());
        self.partials.retain(|r| !(r.cancelled)());
        self.active.retain(|a| !(a.request.cancelled)());
        let after = self.finals.len() + self.partials.len() + self.active.len();
        for _ in after..before {
            self.done_with();
        }
    }

    fn prefill(&mut self) {
        let decoding = self.active.iter().any(|a| a.decode.prefill_left() == 0);
        let mut budget = if decoding {
            TICK_PROMPT_TOKENS_DECODING
        } else {
            TICK_PROMPT_TOKENS
        };
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
                Ok(n) => budget = budget.saturating_sub(n),
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
                cancelled: r.cancelled,
                reply: r.reply,
            };
            let pipeline = &mut self.pipeline;
            let started = guarded(|| {
                let forced = pipeline.encode_answer(&r.forced)?;
                let mut decode = pipeline.begin(&r.samples, &forced, r.partial)?;
                let n = pipeline.prefill(&mut decode, budget)?;
                Ok((decode, n))
            });
            match started {
                Ok((decode, n)) => {
                    budget = budget.saturating_sub(n);
                    self.active.push(Active {
                        request: meta,
                        decode,
                    });
                }
                Err(e) => {
                    self.done_with();
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
        if ids.is_empty() {
            return;
        }
        let llm = &self.pipeline.bundle().llm;
        let batched = guarded(|| step_rows(llm, &ids, &mut caches));
        drop(caches);
        let rows = ids.len();
        self.load.max_rows.fetch_max(rows as u64, Ordering::Relaxed);
        match batched {
            Ok(logits) => {
                let elapsed = t.elapsed();
                let mut logits = logits.into_iter();
                for (a, &n) in self.active.iter_mut().zip(&counts) {
                    if n > 0 {
                        a.decode.accept(logits.by_ref().take(n).collect());
                        a.decode.times.decode += elapsed.mul_f64(n as f64 / rows as f64);
                    }
                }
            }
            // The batch failed: each transcription steps alone, so only
            // the one at fault fails.
            Err(_) => self.step_alone(&counts),
        }
    }

    fn step_alone(&mut self, counts: &[usize]) {
        let llm = &self.pipeline.bundle().llm;
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
                tracing::debug!(
                    partial = a.request.partial,
                    compute_ms = t.times.total().as_millis() as u64,
                    audio_tokens = t.audio_tokens,
                    new_tokens = t.tokens.len(),
                    "transcribed"
                );
            }
            self.done_with();
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
            self.done_with();
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
