//! A CTC head over projected audio, for joint CTC/attention decoding
//! (Watanabe et al., "Hybrid CTC/Attention Architecture for End-to-End
//! Speech Recognition", 2017).
//!
//! The head scores each projected audio vector `x_t` against the LLM's own
//! token embeddings: the logit of token `v` is `x_t · E_v`, and one extra
//! class, the blank, has logit `x_t · w + b` (file: safetensors with
//! `ctc.blank_w` `[hidden]` and `ctc.blank_b` `[]` or `[1]`). Optionally,
//! residual context blocks transform the audio first
//! (`tools/train/train_ctc_head.py`): block `i` adds
//! `fc2(relu(fc1(unfold_k(layer_norm(x)))))`, where `unfold_k` puts each frame
//! next to its `k / 2` neighbours on either side (zeros past the ends); tensors
//! `ctc.blocks.{i}.{norm,fc1,fc2}.{weight,bias}`, PyTorch layout.
//! [`CtcPrefixScorer`] gives the CTC probability that the
//! audio's labelling starts with a token prefix, which a beam search adds to
//! the LLM's score so hypotheses must stay consistent with the audio
//! (curbing the LLM's inventions).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{LlmError, Result};
use crate::model::Llama;

/// Frames scored at once when normalising (bounds the `[frames, vocab]` block).
const CHUNK: usize = 64;

/// The trained parts of a CTC head: its blank class and any context blocks.
#[derive(Debug, Clone)]
pub struct CtcHead {
    blank_w: Tensor,
    blank_b: f32,
    hidden: usize,
    blocks: Vec<ContextBlock>,
}

/// One residual context block (see the module docs).
#[derive(Debug, Clone)]
struct ContextBlock {
    norm_w: Tensor,
    norm_b: Tensor,
    /// `[kernel * hidden, inner]` (transposed from PyTorch's `[out, in]`).
    fc1_t: Tensor,
    fc1_b: Tensor,
    /// `[inner, hidden]`.
    fc2_t: Tensor,
    fc2_b: Tensor,
    kernel: usize,
}

/// PyTorch's LayerNorm epsilon, which the trainer uses.
const LAYER_NORM_EPS: f64 = 1e-5;

impl ContextBlock {
    /// Reads block `i` from `tensors` (`ctc.blocks.{i}.…`); `hidden` is the
    /// LLM's width.
    fn from_tensors(
        i: usize,
        tensors: &mut std::collections::HashMap<String, Tensor>,
        hidden: usize,
    ) -> Result<Self> {
        let mut take = |part: &str| -> Result<Tensor> {
            let name = format!("ctc.blocks.{i}.{part}");
            let t = tensors
                .remove(&name)
                .ok_or_else(|| LlmError::BadWeights(format!("tensor {name} missing")))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let norm_w = take("norm.weight")?;
        let norm_b = take("norm.bias")?;
        let fc1 = take("fc1.weight")?;
        let fc1_b = take("fc1.bias")?;
        let fc2 = take("fc2.weight")?;
        let fc2_b = take("fc2.bias")?;
        let (inner, window) = fc1.dims2()?;
        let shape_err = |what: String| LlmError::BadWeights(format!("ctc.blocks.{i}: {what}"));
        if !window.is_multiple_of(hidden) || (window / hidden).is_multiple_of(2) {
            return Err(shape_err(format!(
                "fc1.weight is [{inner}, {window}]; its input must be an odd number of frames of width {hidden}"
            )));
        }
        if norm_w.dims() != [hidden] || norm_b.dims() != [hidden] {
            return Err(shape_err(format!(
                "norm is {:?} / {:?}, expected [{hidden}]",
                norm_w.dims(),
                norm_b.dims()
            )));
        }
        if fc1_b.dims() != [inner] || fc2.dims() != [hidden, inner] || fc2_b.dims() != [hidden] {
            return Err(shape_err(format!(
                "fc1.bias {:?}, fc2.weight {:?}, fc2.bias {:?}; expected [{inner}], [{hidden}, {inner}], [{hidden}]",
                fc1_b.dims(),
                fc2.dims(),
                fc2_b.dims()
            )));
        }
        for t in [&norm_w, &norm_b, &fc1, &fc1_b, &fc2, &fc2_b] {
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(shape_err("weights are not finite".into()));
            }
        }
        Ok(ContextBlock {
            norm_w,
            norm_b,
            fc1_t: fc1.t()?.contiguous()?,
            fc1_b,
            fc2_t: fc2.t()?.contiguous()?,
            fc2_b,
            kernel: window / hidden,
        })
    }

    /// `x + fc2(relu(fc1(unfold(layer_norm(x)))))` for `x` `[frames, hidden]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (frames, hidden) = x.dims2()?;
        let h = candle_nn::ops::layer_norm(x, &self.norm_w, &self.norm_b, LAYER_NORM_EPS as f32)?;
        let half = self.kernel / 2;
        let pad = Tensor::zeros((half, hidden), DType::F32, x.device())?;
        let padded = Tensor::cat(&[&pad, &h, &pad], 0)?;
        let window: Vec<Tensor> = (0..self.kernel)
            .map(|k| padded.narrow(0, k, frames))
            .collect::<candle_core::Result<_>>()?;
        let window = Tensor::cat(&window, 1)?;
        let inner = window
            .matmul(&self.fc1_t)?
            .broadcast_add(&self.fc1_b)?
            .relu()?;
        let out = inner.matmul(&self.fc2_t)?.broadcast_add(&self.fc2_b)?;
        Ok((x + out)?)
    }
}

impl CtcHead {
    /// Reads a head from a safetensors file; `hidden` is the LLM's width.
    pub fn load(path: &Path, hidden: usize, device: &Device) -> Result<Self> {
        let io = |reason: String| LlmError::Io {
            path: path.to_path_buf(),
            reason,
        };
        let bad = |what: String| LlmError::BadWeights(format!("{}: {what}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| io(e.to_string()))?;
        let mut tensors: std::collections::HashMap<String, Tensor> =
            candle_core::safetensors::load_buffer(&bytes, device)
                .map_err(|e| io(e.to_string()))?
                .into_iter()
                .collect();
        let mut values = |name: &str| -> Result<Vec<f32>> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| bad(format!("tensor {name} missing")))?;
            Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let w = values("ctc.blank_w")?;
        let b = values("ctc.blank_b")?;
        if b.len() != 1 {
            return Err(bad(format!(
                "ctc.blank_b has {} values, expected 1",
                b.len()
            )));
        }
        let relabel = |e: LlmError| match e {
            LlmError::BadWeights(m) => bad(m),
            other => other,
        };
        let mut head = Self::from_parts(w, b[0], hidden, device).map_err(relabel)?;
        let mut i = 0;
        while tensors
            .keys()
            .any(|k| k.starts_with(&format!("ctc.blocks.{i}.")))
        {
            head.blocks
                .push(ContextBlock::from_tensors(i, &mut tensors, hidden).map_err(relabel)?);
            i += 1;
        }
        if let Some(extra) = tensors.keys().find(|k| k.starts_with("ctc.blocks.")) {
            return Err(bad(format!(
                "tensor {extra} does not belong to blocks 0..{i}"
            )));
        }
        Ok(head)
    }

    /// Context blocks in front of the scoring (0: the audio is scored as is).
    pub fn context_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// A head from its blank weights.
    pub fn from_parts(
        blank_w: Vec<f32>,
        blank_b: f32,
        hidden: usize,
        device: &Device,
    ) -> Result<Self> {
        if blank_w.len() != hidden {
            return Err(LlmError::BadWeights(format!(
                "ctc.blank_w has {} values, the LLM's width is {hidden}",
                blank_w.len()
            )));
        }
        if !blank_b.is_finite() || blank_w.iter().any(|v| !v.is_finite()) {
            return Err(LlmError::BadWeights(
                "CTC head weights are not finite".into(),
            ));
        }
        Ok(CtcHead {
            blank_w: Tensor::from_vec(blank_w, (hidden, 1), device)?,
            blank_b,
            hidden,
            blocks: Vec::new(),
        })
    }

    /// Log-probabilities `[frames, vocab + 1]` (blank last) of `audio`
    /// `[frames, hidden]` (projected audio, before any context blocks): what
    /// the scorer uses, whole (tests, inspection).
    pub fn log_probs(&self, llm: &Llama, audio: &Tensor) -> Result<Vec<Vec<f32>>> {
        let audio = self.check(llm, audio)?;
        let emb_t = llm.token_embeddings().t()?;
        let logits = audio.matmul(&emb_t)?.to_vec2::<f32>()?;
        let blank = self.blank_logits(&audio)?;
        Ok(logits
            .into_iter()
            .zip(blank)
            .map(|(mut row, b)| {
                row.push(b);
                let lse = log_sum_exp(&row);
                row.iter_mut().for_each(|v| *v -= lse);
                row
            })
            .collect())
    }

    /// The prefix scorer of one utterance's projected audio `[frames, hidden]`.
    pub fn scorer(&self, llm: &Llama, audio: &Tensor) -> Result<CtcPrefixScorer> {
        let audio = self.check(llm, audio)?;
        let frames = audio.dim(0)?;
        let emb_t = llm.token_embeddings().t()?;
        let blank = self.blank_logits(&audio)?;
        let mut lse = Vec::with_capacity(frames);
        for start in (0..frames).step_by(CHUNK) {
            let n = CHUNK.min(frames - start);
            let rows = audio
                .narrow(0, start, n)?
                .matmul(&emb_t)?
                .to_vec2::<f32>()?;
            for (k, mut row) in rows.into_iter().enumerate() {
                row.push(blank[start + k]);
                lse.push(log_sum_exp(&row));
            }
        }
        let blank_lp = blank.iter().zip(&lse).map(|(b, l)| b - l).collect();
        Ok(CtcPrefixScorer {
            audio,
            embeddings: llm.token_embeddings().clone(),
            lse,
            blank_lp,
        })
    }

    fn check(&self, llm: &Llama, audio: &Tensor) -> Result<Tensor> {
        let (frames, hidden) = audio.dims2()?;
        if hidden != self.hidden || hidden != llm.config().hidden_size {
            return Err(LlmError::InvalidInput(format!(
                "audio of width {hidden}; the CTC head has {} and the LLM {}",
                self.hidden,
                llm.config().hidden_size
            )));
        }
        if frames == 0 {
            return Err(LlmError::InvalidInput("no audio frames to score".into()));
        }
        let mut x = audio.to_dtype(DType::F32)?.contiguous()?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(x)
    }

    fn blank_logits(&self, audio: &Tensor) -> Result<Vec<f32>> {
        let b = audio
            .matmul(&self.blank_w)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(b.into_iter().map(|v| v + self.blank_b).collect())
    }
}

/// CTC prefix probabilities over one utterance.
pub struct CtcPrefixScorer {
    /// `[frames, hidden]` f32.
    audio: Tensor,
    /// The LLM's `[vocab, hidden]` token embeddings.
    embeddings: Tensor,
    /// Per frame: log of the softmax normaliser over vocab + blank.
    lse: Vec<f32>,
    blank_lp: Vec<f32>,
}

/// The CTC state of a token prefix: per frame `t`, the log-probabilities
/// that frames `0..=t` read the prefix ending in its last token (`r_n`) or
/// in a blank (`r_b`).
#[derive(Debug, Clone, PartialEq)]
pub struct CtcState {
    r_n: Vec<f32>,
    r_b: Vec<f32>,
    last: Option<u32>,
    /// log P(the labelling starts with this prefix).
    pub prefix: f32,
}

impl CtcPrefixScorer {
    pub fn frames(&self) -> usize {
        self.lse.len()
    }

    /// The state of the empty prefix.
    pub fn initial(&self) -> CtcState {
        let mut acc = 0.0;
        let r_b = self
            .blank_lp
            .iter()
            .map(|lp| {
                acc += lp;
                acc
            })
            .collect();
        CtcState {
            r_n: vec![f32::NEG_INFINITY; self.frames()],
            r_b,
            last: None,
            prefix: 0.0,
        }
    }

    /// The states of `state`'s prefix extended by each of `tokens` (none of
    /// them an end token: see [`CtcPrefixScorer::final_score`]).
    pub fn extend(&self, state: &CtcState, tokens: &[u32]) -> Result<Vec<CtcState>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let frames = self.frames();
        let ids = Tensor::new(tokens, self.audio.device())?;
        let emb = self.embeddings.index_select(&ids, 0)?;
        // [frames, k]: log-probability of each candidate at each frame.
        let cols = self.audio.matmul(&emb.t()?)?.to_vec2::<f32>()?;
        let either: Vec<f32> = state
            .r_n
            .iter()
            .zip(&state.r_b)
            .map(|(&n, &b)| log_add(n, b))
            .collect();
        let mut out = Vec::with_capacity(tokens.len());
        for (k, &token) in tokens.iter().enumerate() {
            let lp = |t: usize| cols[t][k] - self.lse[t];
            // A repeated token needs a blank between the two.
            let phi = if state.last == Some(token) {
                &state.r_b
            } else {
                &either
            };
            let mut r_n = vec![f32::NEG_INFINITY; frames];
            let mut r_b = vec![f32::NEG_INFINITY; frames];
            if state.last.is_none() {
                r_n[0] = lp(0);
            }
            let mut prefix = r_n[0];
            for t in 1..frames {
                let lp_t = lp(t);
                r_n[t] = log_add(r_n[t - 1], phi[t - 1]) + lp_t;
                r_b[t] = log_add(r_n[t - 1], r_b[t - 1]) + self.blank_lp[t];
                prefix = log_add(prefix, phi[t - 1] + lp_t);
            }
            out.push(CtcState {
                r_n,
                r_b,
                last: Some(token),
                prefix,
            });
        }
        Ok(out)
    }

    /// `state` advanced through `tokens` one at a time (a forced prefix).
    pub fn advance(&self, mut state: CtcState, tokens: &[u32]) -> Result<CtcState> {
        for &t in tokens {
            state = self
                .extend(&state, &[t])?
                .pop()
                .expect("one state per token");
        }
        Ok(state)
    }

    /// The most likely CTC path reading exactly `tokens` over the
    /// utterance's frames (forced alignment, Viterbi): for each token, the
    /// first and last frame it holds. `None` when the frames are too few to
    /// read the tokens (each needs a frame, and a repeat a blank between).
    pub fn align(&self, tokens: &[u32]) -> Result<Option<Vec<(usize, usize)>>> {
        let frames = self.frames();
        if tokens.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let repeats = tokens.windows(2).filter(|w| w[0] == w[1]).count();
        if frames < tokens.len() + repeats {
            return Ok(None);
        }
        let ids = Tensor::new(tokens, self.audio.device())?;
        let emb = self.embeddings.index_select(&ids, 0)?;
        let cols = self.audio.matmul(&emb.t()?)?.to_vec2::<f32>()?;
        // States: blank, token 0, blank, token 1, ..., blank.
        let states = 2 * tokens.len() + 1;
        let lp = |t: usize, s: usize| {
            if s.is_multiple_of(2) {
                self.blank_lp[t]
            } else {
                cols[t][s / 2] - self.lse[t]
            }
        };
        let mut score = vec![f32::NEG_INFINITY; states];
        score[0] = lp(0, 0);
        score[1] = lp(0, 1);
        // from[t][s]: how state s was reached at frame t (0 stay, 1 from
        // s - 1, 2 from s - 2).
        let mut from = vec![vec![0u8; states]; frames];
        for (t, from_t) in from.iter_mut().enumerate().skip(1) {
            let mut next = vec![f32::NEG_INFINITY; states];
            for s in 0..states {
                let mut best = (score[s], 0u8);
                if s >= 1 && score[s - 1] > best.0 {
                    best = (score[s - 1], 1);
                }
                // A token may follow the previous token directly unless
                // they are the same token.
                if s >= 2
                    && !s.is_multiple_of(2)
                    && tokens[s / 2] != tokens[s / 2 - 1]
                    && score[s - 2] > best.0
                {
                    best = (score[s - 2], 2);
                }
                if best.0 > f32::NEG_INFINITY {
                    next[s] = best.0 + lp(t, s);
                    from_t[s] = best.1;
                }
            }
            score = next;
        }
        // The path ends in the last token or the blank after it.
        let mut s = if score[states - 1] >= score[states - 2] {
            states - 1
        } else {
            states - 2
        };
        if score[s] == f32::NEG_INFINITY {
            return Ok(None);
        }
        // Walking back: a token's first visit is its last frame, its final
        // visit its first.
        let mut first = vec![0usize; tokens.len()];
        let mut last: Vec<Option<usize>> = vec![None; tokens.len()];
        for t in (0..frames).rev() {
            if !s.is_multiple_of(2) {
                first[s / 2] = t;
                last[s / 2].get_or_insert(t);
            }
            s -= usize::from(from[t][s]);
        }
        Ok(Some(
            first
                .into_iter()
                .zip(last)
                .map(|(f, l)| (f, l.unwrap_or(f)))
                .collect(),
        ))
    }

    /// log P(the whole labelling is exactly `state`'s prefix).
    pub fn final_score(&self, state: &CtcState) -> f32 {
        let last = self.frames() - 1;
        log_add(state.r_n[last], state.r_b[last])
    }
}

fn log_add(a: f32, b: f32) -> f32 {
    if a == f32::NEG_INFINITY {
        return b;
    }
    if b == f32::NEG_INFINITY {
        return a;
    }
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    hi + (lo - hi).exp().ln_1p()
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    max + sum.ln() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scorer over explicit per-frame probabilities of a 2-token vocabulary
    /// plus blank (audio = one-hot frames, embeddings = log-probs).
    fn scorer(probs: &[[f32; 3]]) -> CtcPrefixScorer {
        let dev = Device::Cpu;
        let frames = probs.len();
        // audio row t = log p(t, ·); embeddings = identity over the first two
        // classes; the blank's log-prob is kept apart.
        let mut audio = Vec::new();
        for p in probs {
            audio.extend([p[0].ln(), p[1].ln()]);
        }
        let audio = Tensor::from_vec(audio, (frames, 2), &dev).unwrap();
        let embeddings = Tensor::from_vec(vec![1f32, 0., 0., 1.], (2, 2), &dev).unwrap();
        CtcPrefixScorer {
            audio,
            embeddings,
            lse: vec![0.0; frames],
            blank_lp: probs.iter().map(|p| p[2].ln()).collect(),
        }
    }

    /// Probability of labelling `label` by summing over every alignment.
    fn brute_force(probs: &[[f32; 3]], label: &[u32]) -> f64 {
        let frames = probs.len();
        let mut total = 0.0;
        for code in 0..3usize.pow(frames as u32) {
            let mut c = code;
            let path: Vec<usize> = (0..frames)
                .map(|_| {
                    let v = c % 3;
                    c /= 3;
                    v
                })
                .collect();
            let mut collapsed = Vec::new();
            let mut prev = None;
            for &s in &path {
                if s != 2 && Some(s) != prev {
                    collapsed.push(s as u32);
                }
                prev = Some(s);
            }
            if collapsed == label {
                total += path
                    .iter()
                    .enumerate()
                    .map(|(t, &s)| f64::from(probs[t][s]))
                    .product::<f64>();
            }
        }
        total
    }

    const PROBS: [[f32; 3]; 5] = [
        [0.6, 0.1, 0.3],
        [0.2, 0.3, 0.5],
        [0.1, 0.7, 0.2],
        [0.5, 0.2, 0.3],
        [0.3, 0.3, 0.4],
    ];

    #[test]
    fn final_scores_match_summing_every_alignment() {
        let s = scorer(&PROBS);
        for label in [
            vec![],
            vec![0],
            vec![1],
            vec![0, 1],
            vec![0, 0],
            vec![1, 0, 1],
            vec![0, 1, 0, 1],
        ] {
            let st = s.advance(s.initial(), &label).unwrap();
            let want = brute_force(&PROBS, &label);
            let got = f64::from(s.final_score(&st)).exp();
            assert!((got - want).abs() < 1e-5, "{label:?}: {got} vs {want}");
        }
    }

    #[test]
    fn prefix_scores_sum_the_labellings_that_start_with_the_prefix() {
        let s = scorer(&PROBS);
        // Every labelling of 5 frames has at most 5 tokens.
        let mut all: Vec<Vec<u32>> = vec![vec![]];
        for len in 1..=5 {
            for code in 0..2usize.pow(len) {
                all.push((0..len).map(|i| ((code >> i) & 1) as u32).collect());
            }
        }
        for prefix in [vec![0u32], vec![1], vec![0, 1], vec![1, 1], vec![0, 1, 0]] {
            let want: f64 = all
                .iter()
                .filter(|l| l.starts_with(&prefix))
                .map(|l| brute_force(&PROBS, l))
                .sum();
            let got = f64::from(s.advance(s.initial(), &prefix).unwrap().prefix).exp();
            assert!((got - want).abs() < 1e-5, "{prefix:?}: {got} vs {want}");
        }
    }

    #[test]
    fn a_labelling_longer_than_the_audio_is_impossible() {
        let s = scorer(&PROBS[..2]);
        let st = s.advance(s.initial(), &[0, 1, 0]).unwrap();
        assert_eq!(st.prefix, f32::NEG_INFINITY);
        assert_eq!(s.final_score(&st), f32::NEG_INFINITY);
        // A repeat needs a blank between: two frames cannot read "0 0".
        let st = s.advance(s.initial(), &[0, 0]).unwrap();
        assert_eq!(s.final_score(&st), f32::NEG_INFINITY);
    }

    #[test]
    fn a_blank_head_of_the_wrong_width_is_refused() {
        let err = CtcHead::from_parts(vec![0.0; 3], 0.0, 4, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("3 values"), "{err}");
        let err = CtcHead::from_parts(vec![f32::NAN; 4], 0.0, 4, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }

    /// A block with small seeded weights: `hidden` 3, kernel 3, inner 4.
    fn block_tensors(seed: u32) -> std::collections::HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut state = seed;
        let mut next = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect()
        };
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        let mut m = std::collections::HashMap::new();
        m.insert("ctc.blocks.0.norm.weight".into(), t(next(3), &[3]));
        m.insert("ctc.blocks.0.norm.bias".into(), t(next(3), &[3]));
        m.insert("ctc.blocks.0.fc1.weight".into(), t(next(36), &[4, 9]));
        m.insert("ctc.blocks.0.fc1.bias".into(), t(next(4), &[4]));
        m.insert("ctc.blocks.0.fc2.weight".into(), t(next(12), &[3, 4]));
        m.insert("ctc.blocks.0.fc2.bias".into(), t(next(3), &[3]));
        m
    }

    #[test]
    fn a_context_block_matches_its_definition_computed_by_hand() {
        let tensors = block_tensors(7);
        let get = |n: &str| -> Vec<f32> {
            tensors[&format!("ctc.blocks.0.{n}")]
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (nw, nb, w1, b1, w2, b2) = (
            get("norm.weight"),
            get("norm.bias"),
            get("fc1.weight"),
            get("fc1.bias"),
            get("fc2.weight"),
            get("fc2.bias"),
        );
        let block = ContextBlock::from_tensors(0, &mut tensors.clone(), 3).unwrap();
        assert_eq!(block.kernel, 3);
        let x: Vec<[f32; 3]> = vec![
            [0.5, -1.0, 2.0],
            [1.5, 0.25, -0.5],
            [-2.0, 1.0, 0.0],
            [0.1, 0.2, 0.3],
        ];
        let flat: Vec<f32> = x.iter().flatten().copied().collect();
        let got: Vec<Vec<f32>> = block
            .forward(&Tensor::from_vec(flat, (4, 3), &Device::Cpu).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap();
        // By hand: layer norm per frame, then a window of frames t-1, t, t+1
        // (zeros past the ends), fc1, relu, fc2, plus the input.
        let norm: Vec<[f64; 3]> = x
            .iter()
            .map(|r| {
                let mean = r.iter().map(|&v| f64::from(v)).sum::<f64>() / 3.0;
                let var = r
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / 3.0;
                let mut o = [0.0; 3];
                for j in 0..3 {
                    o[j] = (f64::from(r[j]) - mean) / (var + 1e-5).sqrt() * f64::from(nw[j])
                        + f64::from(nb[j]);
                }
                o
            })
            .collect();
        for t in 0..4 {
            let mut window = [0.0f64; 9];
            for k in 0..3 {
                let s = t as isize + k as isize - 1;
                if (0..4).contains(&s) {
                    window[k * 3..k * 3 + 3].copy_from_slice(&norm[s as usize]);
                }
            }
            let inner: Vec<f64> = (0..4)
                .map(|o| {
                    let v = (0..9)
                        .map(|i| f64::from(w1[o * 9 + i]) * window[i])
                        .sum::<f64>()
                        + f64::from(b1[o]);
                    v.max(0.0)
                })
                .collect();
            for j in 0..3 {
                let want = f64::from(x[t][j])
                    + (0..4)
                        .map(|i| f64::from(w2[j * 4 + i]) * inner[i])
                        .sum::<f64>()
                    + f64::from(b2[j]);
                assert!(
                    (f64::from(got[t][j]) - want).abs() < 1e-5,
                    "frame {t} dim {j}: {} vs {want}",
                    got[t][j]
                );
            }
        }
    }

    #[test]
    fn malformed_context_blocks_are_refused_with_the_tensor_named() {
        let mut missing = block_tensors(1);
        missing.remove("ctc.blocks.0.fc2.bias");
        let err = ContextBlock::from_tensors(0, &mut missing, 3).unwrap_err();
        assert!(
            err.to_string().contains("ctc.blocks.0.fc2.bias missing"),
            "{err}"
        );
        // A window of an even number of frames has no centre.
        let mut even = block_tensors(1);
        even.insert(
            "ctc.blocks.0.fc1.weight".into(),
            Tensor::zeros((4, 6), DType::F32, &Device::Cpu).unwrap(),
        );
        let err = ContextBlock::from_tensors(0, &mut even, 3).unwrap_err();
        assert!(err.to_string().contains("odd number of frames"), "{err}");
        let mut nan = block_tensors(1);
        nan.insert(
            "ctc.blocks.0.norm.bias".into(),
            Tensor::from_vec(vec![0.0f32, f32::NAN, 0.0], 3, &Device::Cpu).unwrap(),
        );
        let err = ContextBlock::from_tensors(0, &mut nan, 3).unwrap_err();
        assert!(err.to_string().contains("not finite"), "{err}");
    }
}
