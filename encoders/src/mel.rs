//! Whisper's log-mel spectrogram for audio of any length.
//!
//! Same math as Whisper's `log_mel_spectrogram`: 16 kHz audio, a 400-point
//! periodic Hann window every 160 samples with the signal reflect-padded by
//! 200 on each side (torch.stft's `center=True`), power spectrum, the
//! Slaney-normalised mel filter bank librosa builds (Whisper ships it as
//! `mel_filters.npz`; we compute it), log10 clamped at 1e-10, values below
//! the window's maximum minus 8 raised to it, then (x + 4) / 4. The last STFT
//! frame is dropped as Whisper does, so N samples give N / 160 frames.
//!
//! Unlike the 30 s windows Whisper pads everything to, this runs on the real
//! length: a 4 s utterance costs a 4 s spectrogram.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// Whisper's STFT size.
pub const N_FFT: usize = 400;
/// Samples between frames (10 ms at 16 kHz).
pub const HOP: usize = 160;
/// Sample rate the front end expects.
pub use crate::SAMPLE_RATE;
const N_BINS: usize = N_FFT / 2 + 1;

/// A log-mel spectrogram: `n_mels` rows of `frames` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct MelSpectrogram {
    pub n_mels: usize,
    pub frames: usize,
    pub data: Vec<f32>,
}

impl MelSpectrogram {
    /// Row `m` (one mel band over time).
    pub fn band(&self, m: usize) -> &[f32] {
        &self.data[m * self.frames..(m + 1) * self.frames]
    }
}

/// The front end, built once and shared.
pub struct LogMel {
    n_mels: usize,
    /// `n_mels` x `N_BINS`, row-major.
    filters: Vec<f32>,
    /// Per band, the range of FFT bins with a non-zero weight.
    support: Vec<(usize, usize)>,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel")
            .field("n_mels", &self.n_mels)
            .finish()
    }
}

impl LogMel {
    /// Whisper's front end with `n_mels` bands (80, or 128 for large-v3).
    pub fn whisper(n_mels: usize) -> Self {
        let filters = slaney_mel_filters(SAMPLE_RATE, N_FFT, n_mels);
        let support = (0..n_mels)
            .map(|m| {
                let row = &filters[m * N_BINS..(m + 1) * N_BINS];
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (first, last.max(first))
            })
            .collect();
        let window = (0..N_FFT)
            .map(|k| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * k as f64 / N_FFT as f64).cos())
            .collect();
        LogMel {
            n_mels,
            filters,
            support,
            window,
            fft: FftPlanner::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The mel filter bank, `n_mels` x 201, row-major.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// Number of frames `samples` samples give.
    pub fn frames_for(samples: usize) -> usize {
        samples / HOP
    }

    /// The log-mel spectrogram of 16 kHz mono `samples`.
    pub fn compute(&self, samples: &[f32]) -> MelSpectrogram {
        let frames = Self::frames_for(samples.len());
        let mut power = vec![0.0f64; frames * N_BINS];
        let padded = reflect_pad(samples, N_FFT / 2);
        let mut buf = vec![Complex::new(0.0f64, 0.0); N_FFT];
        let mut scratch = vec![Complex::new(0.0f64, 0.0); self.fft.get_inplace_scratch_len()];
        for t in 0..frames {
            let start = t * HOP;
            for (k, slot) in buf.iter_mut().enumerate() {
                *slot = Complex::new(f64::from(padded[start + k]) * self.window[k], 0.0);
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            for (f, c) in buf[..N_BINS].iter().enumerate() {
                power[t * N_BINS + f] = c.norm_sqr();
            }
        }
        let mut data = vec![0.0f32; self.n_mels * frames];
        let mut max = f64::NEG_INFINITY;
        let mut logs = vec![0.0f64; self.n_mels * frames];
        for m in 0..self.n_mels {
            let (lo, hi) = self.support[m];
            let weights = &self.filters[m * N_BINS..(m + 1) * N_BINS];
            for t in 0..frames {
                let p = &power[t * N_BINS..(t + 1) * N_BINS];
                let energy: f64 = (lo..hi).map(|f| f64::from(weights[f]) * p[f]).sum();
                let l = energy.max(1e-10).log10();
                max = max.max(l);
                logs[m * frames + t] = l;
            }
        }
        let floor = max - 8.0;
        for (out, &l) in data.iter_mut().zip(&logs) {
            *out = ((l.max(floor) + 4.0) / 4.0) as f32;
        }
        MelSpectrogram {
            n_mels: self.n_mels,
            frames,
            data,
        }
    }
}

/// torch's reflect padding (the edge sample is not repeated). Signals too
/// short to reflect are zero-padded instead.
fn reflect_pad(x: &[f32], pad: usize) -> Vec<f32> {
    let n = x.len();
    let mut out = Vec::with_capacity(n + 2 * pad);
    if n > pad {
        out.extend((1..=pad).rev().map(|i| x[i]));
        out.extend_from_slice(x);
        out.extend((n - pad - 1..n - 1).rev().map(|i| x[i]));
    } else {
        out.extend(std::iter::repeat_n(0.0, pad));
        out.extend_from_slice(x);
        out.extend(std::iter::repeat_n(0.0, pad));
    }
    out
}

/// librosa's Slaney mel scale: linear below 1 kHz (200/3 Hz per mel),
/// logarithmic above (27 mels per factor 6.4).
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// `librosa.filters.mel(sr, n_fft, n_mels)` (Slaney scale and norm, 0 Hz to
/// Nyquist), as Whisper's `mel_filters.npz` holds it.
pub fn slaney_mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let nyquist = f64::from(sample_rate) / 2.0;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|i| nyquist * i as f64 / (n_bins - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(nyquist));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0.0f32; n_mels * n_bins];
    for m in 0..n_mels {
        let (left, centre, right) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let norm = 2.0 / (right - left);
        for (f, &freq) in fft_freqs.iter().enumerate() {
            let lower = (freq - left) / (centre - left);
            let upper = (right - freq) / (right - centre);
            weights[m * n_bins + f] = (lower.min(upper).max(0.0) * norm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_follows_whisper() {
        let mel = LogMel::whisper(80);
        assert_eq!(mel.compute(&vec![0.0; 480_000]).frames, 3000);
        assert_eq!(mel.compute(&vec![0.0; 16_000]).frames, 100);
        assert_eq!(mel.compute(&vec![0.0; 159]).frames, 0);
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        let mel = LogMel::whisper(80).compute(&vec![0.0; 8000]);
        // log10(1e-10) = -10; (−10 + 4) / 4 = −1.5
        assert!(mel.data.iter().all(|&v| (v + 1.5).abs() < 1e-6));
    }

    #[test]
    fn a_tone_lights_up_its_band() {
        let samples: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let mel = LogMel::whisper(80).compute(&samples);
        let energy: Vec<f32> = (0..80).map(|m| mel.band(m)[50]).collect();
        let peak = energy
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        // 1 kHz sits at mel 15 of 45.25 (Slaney), band index ~ 15/45.25*81 - 1.
        assert!((25..=28).contains(&peak), "peak band {peak}");
    }

    #[test]
    fn reflect_pad_matches_torch() {
        assert_eq!(
            reflect_pad(&[1.0, 2.0, 3.0, 4.0, 5.0], 2),
            vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.0, 3.0]
        );
    }
}
