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

/// Greedy decoding from `logits` (the distribution after the prompt in `cache`).
pub fn greedy(
    model: &Llama,
    cache: &mut KvCache,
    logits: Vec<f32>,
    stop: &StopCriteria,
) -> Result<Generation> {
    let mut out = Generation {
        tokens: Vec::new(),
        log_prob: 0.0,
        stopped: false,
    };
    let mut logits = logits;
    for _ in 0..stop.max_new_tokens {
        stop.interrupt.check()?;
        let next = Llama::argmax(&logits);
        out.log_prob += Llama::log_softmax(&logits)[next as usize];
        if stop.stop_tokens.contains(&next) {
            out.stopped = true;
            break;
        }
        out.tokens.push(next);
        if out.tokens.len() == stop.max_new_tokens {
            break;
        }
        logits = Llama::last_logits(&model.forward(&[next], cache, false)?)?;
    }
    Ok(out)
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
pub struct CtcGuide<'a> {
    pub scorer: &'a CtcPrefixScorer,
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

/// One candidate continuation: (score, beam index, token, LLM log-prob, CTC state).
type Candidate = (f32, usize, u32, f32, Option<CtcState>);

/// [`beam_search`], optionally steered by a CTC head (`guide`).
pub fn joint_beam_search(
    model: &Llama,
    cache: &KvCache,
    logits: Vec<f32>,
    config: &BeamConfig,
    guide: Option<CtcGuide<'_>>,
) -> Result<Generation> {
    if let Some(g) = &guide {
        if !(0.0..=1.0).contains(&g.weight) {
            return Err(LlmError::InvalidInput(format!(
                "CTC weight {} outside [0, 1]",
                g.weight
            )));
        }
    }
    let width = config.width.max(1);
    let prompt_len = cache.len();
    let capacity = prompt_len + config.stop.max_new_tokens + 1;
    let mut first = model.new_cache(capacity)?;
    first.copy_prefix_from(cache, prompt_len)?;
    let mut beams = vec![Beam {
        tokens: Vec::new(),
        log_prob: 0.0,
        score: 0.0,
        ctc: guide.as_ref().map(|g| g.start.clone()),
        cache: first,
        logits,
    }];
    // (hypothesis, score)
    let mut finished: Vec<(Generation, f32)> = Vec::new();
    // Weight 0 is the LLM alone even where the CTC score is -inf (0 * -inf is NaN).
    let joint = |llm: f32, ctc: f32, w: f32| {
        if w == 0.0 {
            llm
        } else {
            (1.0 - w) * llm + w * ctc
        }
    };
    for step in 0..config.stop.max_new_tokens {
        config.stop.interrupt.check()?;
        let mut candidates: Vec<Candidate> = Vec::new();
        for (b, beam) in beams.iter().enumerate() {
            let lp = Llama::log_softmax(&beam.logits);
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            // The 2 x width best tokens of this beam by the LLM, ties to the lower id.
            order.sort_by(|&x, &y| lp[y as usize].total_cmp(&lp[x as usize]).then(x.cmp(&y)));
            order.truncate(width * 2);
            match (&guide, &beam.ctc) {
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
                let parent = &beams[c.1];
                finished.push((
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
        let last_step = step + 1 == config.stop.max_new_tokens;
        // Enough finished hypotheses that no live beam can overtake: done.
        if finished.len() >= width && !chosen.is_empty() {
            let worst_finished = finished
                .iter()
                .map(|(g, s)| normalised(*s, g.tokens.len() + 1, config.length_penalty))
                .fold(f32::INFINITY, f32::min);
            let best_live = normalised(
                chosen[0].0,
                beams[chosen[0].1].tokens.len() + 1,
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
                beams.clear();
            }
            break;
        }
        // Children take their parent's cache; a parent with several children is copied.
        let mut uses = vec![0usize; beams.len()];
        for c in &chosen {
            uses[c.1] += 1;
        }
        let mut parents: Vec<Option<Beam>> = beams.into_iter().map(Some).collect();
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
                let mut c = model.new_cache(capacity)?;
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
        if !last_step {
            // All live beams step together: one batched forward per token.
            let ids: Vec<u32> = next
                .iter()
                .map(|b| *b.tokens.last().expect("pushed"))
                .collect();
            let mut caches: Vec<&mut KvCache> = next.iter_mut().map(|b| &mut b.cache).collect();
            let rows: Vec<Vec<f32>> = model
                .forward_batch(&ids, &mut caches)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec2()?;
            for (beam, logits) in next.iter_mut().zip(rows) {
                beam.logits = logits;
            }
        }
        beams = next;
    }
    for beam in beams {
        finished.push((
            Generation {
                tokens: beam.tokens,
                log_prob: beam.log_prob,
                stopped: false,
            },
            beam.score,
        ));
    }
    let best = finished
        .into_iter()
        .enumerate()
        .max_by(|(ia, (a, sa)), (ib, (b, sb))| {
            let sa = normalised(
                *sa,
                a.tokens.len() + usize::from(a.stopped),
                config.length_penalty,
            );
            let sb = normalised(
                *sb,
                b.tokens.len() + usize::from(b.stopped),
                config.length_penalty,
            );
            sa.total_cmp(&sb).then(ib.cmp(ia))
        })
        .map(|(_, (g, _))| g);
    Ok(best.unwrap_or(Generation {
        tokens: Vec::new(),
        log_prob: 0.0,
        stopped: false,
    }))
}
