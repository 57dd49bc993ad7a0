//! Decoding: greedy and beam search over a prefilled KV cache, both
//! deterministic (ties go to the lower token id, then the earlier beam).

use crate::cache::KvCache;
use crate::error::Result;
use crate::model::Llama;

/// When to stop.
#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_new_tokens: usize,
    /// Tokens that end a hypothesis (not included in its output).
    pub stop_tokens: Vec<u32>,
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
    log_prob: f32,
    cache: KvCache,
    logits: Vec<f32>,
}

fn normalised(log_prob: f32, len: usize, penalty: f32) -> f32 {
    log_prob / (len.max(1) as f32).powf(penalty)
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
    let width = config.width.max(1);
    let prompt_len = cache.len();
    let capacity = prompt_len + config.stop.max_new_tokens + 1;
    let mut first = model.new_cache(capacity)?;
    first.copy_prefix_from(cache, prompt_len)?;
    let mut beams = vec![Beam {
        tokens: Vec::new(),
        log_prob: 0.0,
        cache: first,
        logits,
    }];
    let mut finished: Vec<Generation> = Vec::new();
    for step in 0..config.stop.max_new_tokens {
        // (score, beam index, token)
        let mut candidates: Vec<(f32, usize, u32)> = Vec::new();
        for (b, beam) in beams.iter().enumerate() {
            let lp = Llama::log_softmax(&beam.logits);
            let mut order: Vec<u32> = (0..lp.len() as u32).collect();
            // The width best tokens of this beam, ties to the lower id.
            order.sort_by(|&x, &y| lp[y as usize].total_cmp(&lp[x as usize]).then(x.cmp(&y)));
            for &t in order.iter().take(width * 2) {
                candidates.push((beam.log_prob + lp[t as usize], b, t));
            }
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut chosen: Vec<(f32, usize, u32)> = Vec::new();
        for c in candidates {
            if chosen.len() == width {
                break;
            }
            if config.stop.stop_tokens.contains(&c.2) {
                let parent = &beams[c.1];
                finished.push(Generation {
                    tokens: parent.tokens.clone(),
                    log_prob: c.0,
                    stopped: true,
                });
            } else {
                chosen.push(c);
            }
        }
        let last_step = step + 1 == config.stop.max_new_tokens;
        // Enough finished hypotheses that no live beam can overtake: done.
        if finished.len() >= width && !chosen.is_empty() {
            let worst_finished = finished
                .iter()
                .map(|g| normalised(g.log_prob, g.tokens.len() + 1, config.length_penalty))
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
            beams.clear();
            break;
        }
        // Children take their parent's cache; a parent with several children is copied.
        let mut uses = vec![0usize; beams.len()];
        for c in &chosen {
            uses[c.1] += 1;
        }
        let mut parents: Vec<Option<Beam>> = beams.into_iter().map(Some).collect();
        let mut next = Vec::with_capacity(chosen.len());
        for (score, b, t) in chosen {
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
            let mut cache = cache;
            let logits = if last_step {
                Vec::new()
            } else {
                Llama::last_logits(&model.forward(&[t], &mut cache, false)?)?
            };
            next.push(Beam {
                tokens,
                log_prob: score,
                cache,
                logits,
            });
        }
        beams = next;
    }
    for beam in beams {
        finished.push(Generation {
            tokens: beam.tokens,
            log_prob: beam.log_prob,
            stopped: false,
        });
    }
    let best = finished
        .into_iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| {
            let sa = normalised(
                a.log_prob,
                a.tokens.len() + usize::from(a.stopped),
                config.length_penalty,
            );
            let sb = normalised(
                b.log_prob,
                b.tokens.len() + usize::from(b.stopped),
                config.length_penalty,
            );
            sa.total_cmp(&sb).then(ib.cmp(ia))
        })
        .map(|(_, g)| g);
    Ok(best.unwrap_or(Generation {
        tokens: Vec::new(),
        log_prob: 0.0,
        stopped: false,
    }))
}
