//! Decoding: greedy and beam search over a prefilled KV cache, both
//! deterministic (ties go to the lower token id, then the earlier beam).

use std::sync::Arc;

use crate::cache::KvCache;
use crate::ctc::{CtcPrefixScorer, CtcState};
use crate::error::{LlmError, Result};
use crate::model::Llama;

/// When to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_new_tokens: usize,
    /// Tokens that end a hypothesis (not included in its output).
    pub stop_tokens: Vec<u32>,
    /// Asked before every step: a decode nobody waits for any more (its
    /// client left, a newer request replaced it) stops there.
    pub interrupt: Interrupt,
}

/// A question a decode asks before each step: `true` ends it with
/// [`LlmError::Interrupted`].
#[derive(Clone)]
pub struct Interrupt(Option<Arc<dyn Fn() -> bool + Send + Sync>>);

impl Interrupt {
    /// Never interrupts.
    pub fn never() -> Self {
        Interrupt(None)
    }

    /// Interrupts once `asked` answers `true`.
    pub fn when(asked: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        Interrupt(Some(asked))
    }

    /// `Err(Interrupted)` once the decode should stop.
    pub fn check(&self) -> Result<()> {
        match &self.0 {
            Some(asked) if asked() => Err(LlmError::Interrupted),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Interrupt(when)"
        } else {
            "Interrupt(never)"
        })
    }
}

/// Equal when both never interrupt or both ask the same question.
impl PartialEq for Interrupt {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A finished hypothesis.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the tokens (and of the stop token, if hit).
    pub log_prob: f32,
    /// Whether a stop token ended it (else the length limit did).
    pub stopped: bool,
}

/// Greedy decoding one token at a time, with the forward pass left to the
/// caller (a scheduler steps many decodes in one batch): [`GreedySearch::select`]
/// picks the next token from the current logits, then the caller runs
/// [`GreedySearch::row`] and hands the logits back with [`GreedySearch::accept`].
pub struct GreedySearch {
    stop: StopCriteria,
    cache: KvCache,
    logits: Vec<f32>,
    out: Generation,
    done: bool,
}

impl GreedySearch {
    /// From `logits`, the distribution after the prompt in `cache`.
    pub fn new(cache: KvCache, logits: Vec<f32>, stop: StopCriteria) -> Self {
        GreedySearch {
            done: stop.max_new_tokens == 0,
            stop,
            cache,
            logits,
            out: Generation {
                tokens: Vec::new(),
                log_prob: 0.0,
                stopped: false,
            },
        }
    }

    /// Picks the next token; afterwards either the search is done or one row
    /// waits to run.
    pub fn select(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.stop.interrupt.check()?;
        let next = Llama::argmax(&self.logits);
        self.out.log_prob += Llama::log_softmax(&self.logits)[next as usize];
        if self.stop.stop_tokens.contains(&next) {
            self.out.stopped = true;
            self.done = true;
        } else {
            self.out.tokens.push(next);
            self.done = self.out.tokens.len() == self.stop.max_new_tokens;
        }
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The token to run next and the cache it runs on (after `select`).
    pub fn row(&mut self) -> Option<(u32, &mut KvCache)> {
        match (self.done, self.out.tokens.last()) {
            (false, Some(&t)) => Some((t, &mut self.cache)),
            _ => None,
        }
    }

    /// The logits after the row ran.
    pub fn accept(&mut self, logits: Vec<f32>) {
        self.logits = logits;
    }

    /// The hypothesis and the cache (holding the prompt and every token but
    /// the last).
    pub fn finish(self) -> (Generation, KvCache) {
        (self.out, self.cache)
    }
}

/// Greedy decoding from `logits` (the distribution after the prompt in `cache`).
pub fn greedy(
    model: &Llama,
    cache: &mut KvCache,
    logits: Vec<f32>,
    stop: &StopCriteria,
) -> Result<Generation> {
    let owned = std::mem::replace(cache, model.new_cache(0)?);
    let mut search = GreedySearch::new(owned, logits, stop.clone());
    let result = run_greedy(model, &mut search);
    let (out, owned) = search.finish();
    *cache = owned;
    result.map(|()| out)
}

fn run_greedy(model: &Llama, search: &mut GreedySearch) -> Result<()> {
    loop {
        search.select()?;
        let Some((token, cache)) = search.row() else {
            return Ok(());
        };
        let logits = Llama::last_logits(&model.forward(&[token], cache, false)?)?;
        search.accept(logits);
    }
}

/// Beam search settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamConfig {
    pub width: usize,
    /// Hypotheses are ranked by log_prob / len^length_penalty (len counts the stop token).
    pub length_penalty: f32,
    pub stop: StopCriteria,
}

struct Beam {
    tokens: Vec<u32>,
    /// Sum of the LLM's log-probabilities of `tokens`.
    log_prob: f32,
    /// What the search ranks by: `log_prob`, or with a CTC guide the
    /// weighted sum of it and the CTC prefix score.
    score: f32,
    ctc: Option<CtcState>,
    cache: KvCache,
    logits: Vec<f32>,
}

/// A CTC head steering a beam search (joint CTC/attention decoding):
/// hypotheses rank by `(1 - weight) * log P_llm + weight * log P_ctc`, where
/// `P_ctc` is the CTC probability of the prefix (of the whole labelling once
/// a stop token ends it). The LLM alone proposes the candidate tokens.
#[derive(Clone)]
pub struct CtcGuide {
    pub scorer: Arc<CtcPrefixScorer>,
    /// In `[0, 1]`.
    pub weight: f32,
    /// The CTC state of the tokens the cache already holds after the prompt
    /// (a forced prefix), usually `scorer.initial()`.
    pub start: CtcState,
}

fn normalised(score: f32, len: usize, penalty: f32) -> f32 {
    score / (len.max(1) as f32).powf(penalty)
}

/// Beam search from the prompt in `cache` (whose next-token logits are
/// `logits`). Returns the best hypothesis by normalised score. `cache` is
/// left holding the prompt only.
pub fn beam_search(
    model: &Llama,
    cache: &KvCache,
    logits: Vec<f32>,
    config: &BeamConfig,
) -> Result<Generation> {
    joint_beam_search(model, cache, logits, config, None)
}

/// [`beam_search`], optionally steered by a CTC head (`guide`).
pub fn joint_beam_search(
    model: &Llama,
    cache: &KvCache,
    logits: Vec<f32>,
    config: &BeamConfig,
    guide: Option<CtcGuide>,
) -> Result<Generation> {
    let mut search = BeamSearch::new(model, cache, logits, config.clone(), guide)?;
    loop {
        search.select(model)?;
        let (ids, mut caches): (Vec<u32>, Vec<&mut KvCache>) = search.rows().unzip();
        if ids.is_empty() {
            return Ok(search.finish());
        }
        let rows: Vec<Vec<f32>> = model
            .forward_batch(&ids, &mut caches)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?;
        search.accept(rows);
    }
}

/// One candidate continuation: (score, beam index, token, LLM log-prob, CTC state).
type Candidate = (f32, usize, u32, f32, Option<CtcState>);

/// A beam search that advances one token per round, with the forward pass
/// left to the caller: [`BeamSearch::select`] extends the live beams from
/// their logits, the caller runs [`BeamSearch::rows`] (one per live beam, in
/// one batch with whatever else it steps) and returns their logits in order
/// with [`BeamSearch::accept`]. Deterministic: ties go to the lower token id,
/// then the earlier beam.
pub struct BeamSearch {
    config: BeamConfig,
    guide: Option<CtcGuide>,
    width: usize,
    capacity: usize,
    beams: Vec<Beam>,
    /// (hypothesis, score)
    finished: Vec<(Generation, f32)>,
    step: usize,
    /// The live beams hold a new token whose forward is owed.
    pending: bool,
    done: bool,
}

impl BeamSearch {
    /// From the prompt in `cache` (copied; the caller's cache is not touched).
    pub fn new(
        model: &Llama,
        cache: &KvCache,
        logits: Vec<f32>,
        config: BeamConfig,
        guide: Option<CtcGuide>,
    ) -> Result<Self> {
        if let Some(g) = &guide {
            if !(0.0..=1.0).contains(&g.weight) {
                return Err(LlmError::InvalidInput(format!(
                    "CTC weight {} outside [0, 1]",
                    g.weight
                )));
            }
        }
        let prompt_len = cache.len();
        let capacity = prompt_len + config.stop.max_new_tokens + 1;
        let mut first = model.new_cache(capacity)?;
        first.copy_prefix_from(cache, prompt_len)?;
        let beams = vec![Beam {
            tokens: Vec::new(),
            log_prob: 0.0,
            score: 0.0,
            ctc: guide.as_ref().map(|g| g.start.clone()),
            cache: first,
            logits,
        }];
        Ok(BeamSearch {
            width: config.width.max(1),
            done: config.stop.max_new_tokens == 0,
            config,
            guide,
            capacity,
            beams,
            finished: Vec::new(),
            step: 0,
            pending: false,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The rows to run after [`BeamSearch::select`]: each live beam's new
    /// token and cache. Empty once the search is over.
    pub fn rows(&mut self) -> impl Iterator<Item = (u32, &mut KvCache)> {
        let pending = self.pending;
        self.beams.iter_mut().filter(move |_| pending).map(|b| {
            let t = *b.tokens.last().expect("a live beam has a new token");
            (t, &mut b.cache)
        })
    }

    /// The logits of the rows, in the order [`BeamSearch::rows`] gave them.
    pub fn accept(&mut self, logits: Vec<Vec<f32>>) {
        debug_assert_eq!(logits.len(), self.beams.len());
        for (beam, l) in self.beams.iter_mut().zip(logits) {
            beam.logits = l;
        }
        self.pending = false;
    }

    /// Extends the live beams by one token each (or ends the search).
    pub fn select(&mut self, model: &Llama) -> Result<()> {
        if self.done || self.pending {
            return Ok(());
        }
        let config = &self.config;
        let width = self.width;
        config.stop.interrupt.check()?;
        // Weight 0 is the LLM alone even where the CTC score is -inf (0 * -inf is NaN).
        let joint = |llm: f32, ctc: f32, w: f32| {
            if w == 0.0 {
                llm
            } else {
                (1.0 - w) * llm + w * ctc
            }
        };
        let mut candidates: Vec<Candidate> = Vec::new();
        for (b, beam) in self.beams.iter().enumerate() {
            let lp = Llama::log_softmax(&beam.logits);
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            // The 2 x width best tokens of this beam by the LLM, ties to the lower id.
            let better =
                |x: &u32, y: &u32| lp[*y as usize].total_cmp(&lp[*x as usize]).then(x.cmp(y));
            // Partition out the best, then sort only them (a full sort of
            // the vocabulary per beam per step was a few % of a busy server).
            let keep = (width * 2).min(order.len());
            if keep < order.len() {
                order.select_nth_unstable_by(keep, better);
                order.truncate(keep);
            }
            order.sort_by(better);
            match (&self.guide, &beam.ctc) {
                (Some(g), Some(state)) => {
                    let words: Vec<u32> = order
                        .iter()
                        .copied()
                        .filter(|t| !config.stop.stop_tokens.contains(t))
                        .collect();
                    let mut extended = g.scorer.extend(state, &words)?.into_iter();
                    for &t in &order {
                        let llm = beam.log_prob + lp[t as usize];
                        if config.stop.stop_tokens.contains(&t) {
                            let ctc = g.scorer.final_score(state);
                            candidates.push((joint(llm, ctc, g.weight), b, t, llm, None));
                        } else {
                            let next = extended.next().expect("one state per candidate");
                            let score = joint(llm, next.prefix, g.weight);
                            candidates.push((score, b, t, llm, Some(next)));
                        }
                    }
                }
                _ => {
                    for &t in &order {
                        let llm = beam.log_prob + lp[t as usize];
                        candidates.push((llm, b, t, llm, None));
                    }
                }
            }
        }
        // A labelling the audio cannot hold (more tokens than CTC frames) is dropped.
        let is_word = |c: &Candidate| !config.stop.stop_tokens.contains(&c.2);
        let words_before = candidates.iter().any(is_word);
        candidates.retain(|c| c.0 > f32::NEG_INFINITY);
        // The CTC head ruled out every continuation by a token.
        let blocked = words_before && !candidates.iter().any(is_word);
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut chosen: Vec<Candidate> = Vec::new();
        for c in candidates {
            if chosen.len() == width {
                break;
            }
            if config.stop.stop_tokens.contains(&c.2) {
                let parent = &self.beams[c.1];
                self.finished.push((
                    Generation {
                        tokens: parent.tokens.clone(),
                        log_prob: c.3,
                        stopped: true,
                    },
                    c.0,
                ));
            } else {
                chosen.push(c);
            }
        }
        self.step += 1;
        let last_step = self.step == config.stop.max_new_tokens;
        // Enough finished hypotheses that no live beam can overtake: done.
        if self.finished.len() >= width && !chosen.is_empty() {
            let worst_finished = self
                .finished
                .iter()
                .map(|(g, s)| normalised(*s, g.tokens.len() + 1, config.length_penalty))
                .fold(f32::INFINITY, f32::min);
            let best_live = normalised(
                chosen[0].0,
                self.beams[chosen[0].1].tokens.len() + 1,
                config.length_penalty,
            );
            if best_live < worst_finished && config.length_penalty <= 1.0 {
                chosen.clear();
            }
        }
        if chosen.is_empty() {
            // Either finished hypotheses beat every live one (drop them), or
            // the CTC head allows no continuation (the audio has no frames
            // left for another token): the live beams end here as they are.
            if !blocked {
                self.beams.clear();
            }
            self.done = true;
            return Ok(());
        }
        // Children take their parent's cache; a parent with several children is copied.
        let mut uses = vec![0usize; self.beams.len()];
        for c in &chosen {
            uses[c.1] += 1;
        }
        let mut parents: Vec<Option<Beam>> = std::mem::take(&mut self.beams)
            .into_iter()
            .map(Some)
            .collect();
        let mut next = Vec::with_capacity(chosen.len());
        for (score, b, t, log_prob, ctc) in chosen {
            uses[b] -= 1;
            let (mut tokens, cache) = if uses[b] == 0 {
                let p = parents[b]
                    .take()
                    .expect("parent used once more than counted");
                (p.tokens, p.cache)
            } else {
                let p = parents[b].as_ref().expect("parent present");
                let mut c = model.new_cache(self.capacity)?;
                c.copy_prefix_from(&p.cache, p.cache.len())?;
                (p.tokens.clone(), c)
            };
            tokens.push(t);
            next.push(Beam {
                tokens,
                log_prob,
                score,
                ctc,
                cache,
                logits: Vec::new(),
            });
        }
        self.beams = next;
        self.pending = !last_step;
        self.done = last_step;
        Ok(())
    }

    /// The best hypothesis by normalised score (live beams count as they are).
    pub fn finish(self) -> Generation {
        let mut finished = self.finished;
        for beam in self.beams {
            finished.push((
                Generation {
                    tokens: beam.tokens,
                    log_prob: beam.log_prob,
                    stopped: false,
                },
                beam.score,
            ));
        }
        let penalty = self.config.length_penalty;
        let best = finished
            .into_iter()
            .enumerate()
            .max_by(|(ia, (a, sa)), (ib, (b, sb))| {
                let sa = normalised(*sa, a.tokens.len() + usize::from(a.stopped), penalty);
                let sb = normalised(*sb, b.tokens.len() + usize::from(b.stopped), penalty);
                sa.total_cmp(&sb).then(ib.cmp(ia))
            })
            .map(|(_, (g, _))| g);
        best.unwrap_or(Generation {
            tokens: Vec::new(),
            log_prob: 0.0,
            stopped: false,
        })
    }
}
