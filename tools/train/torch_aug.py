"""On-device ("online") augmentation for training from audio packs: a fresh augmented copy of an
utterance's audio at every draw, turned into Whisper log-mel on the same device.

`train_projector.py --online-aug P` keeps every training utterance's decoded audio on the
device and, for each utterance of a step with probability P, uses `augmented_mel` instead of a
cached feature view.  A cached view is computed once and then seen about once per epoch; with
tens of passes over the data the model learns those exact features (the first GPU run's
held-out loss flattened after ~5 epochs while the training loss kept falling).  Online views
never repeat.

`log_mel` is the server's math (avlm_features.log_mel: Whisper's STFT, 80 mel bins, log10,
max-8 clamp, (x+4)/4, an odd last frame dropped) in torch; `check()` compares it with the numpy
version.  The augmentation draws, in order:
  * speed 0.90-1.10 (steps of 0.01) by band-limited FFT resampling (tempo and pitch, like Kaldi's
    speed perturbation);
  * with probability 0.25, reverberation: an exponentially decaying noise impulse response,
    RT60 0.15-0.7 s, direct-to-reverberant ratio 3-15 dB (the generator's `rir`, on the host);
  * with probability 0.6, noise at 5-30 dB SNR (uniform; `--online-snr` sets the range):
    white (0.25), pink (0.25), or babble (0.5): 3-6 other training utterances summed, each at a
    random offset, so that no single interfering talker is intelligible;
  * a level change of -10..+6 dB, clipped to [-1, 1].
Scalar choices come from the trainer's per-step numpy generator and noise samples from a
torch.Generator it seeds per step: the same seed gives the same views on the same device.
"""
from __future__ import annotations

import math

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import avlm_features as F  # noqa: E402
import make_synth_data as M  # noqa: E402  (rir: the generator's impulse responses)

N_FFT, HOP, SR = 400, 160, 16000
# Every FFT here has a length from a small fixed set, so that cuFFT reuses its cached plans: the
# audio is zero-padded to a multiple of BUCKET samples and the speed factor is one of SPEEDS.
# (With a length per utterance, plan creation made the first online run ~6x slower per step.)
BUCKET = 8192
SPEEDS = [round(0.9 + 0.01 * i, 2) for i in range(21)]


def log_mel(x: torch.Tensor, filters: torch.Tensor, frames: int | None = None) -> torch.Tensor:
    """x [n] float32 audio -> [80, frames] log-mel (frames even), as avlm_features.log_mel.
    `frames`: keep only the first frames (x is zero-padded past them) before the per-utterance
    normalisation."""
    win = torch.hann_window(N_FFT, periodic=True, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, N_FFT, HOP, window=win, center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs().pow(2)[:, :-1]                    # Whisper drops the last frame
    if frames is not None:
        power = power[:, :frames]
    mel = filters @ power
    lg = torch.log10(mel.clamp_min(1e-10))
    lg = torch.maximum(lg, lg.max() - 8.0)
    lg = (lg + 4.0) / 4.0
    if lg.shape[1] % 2:
        lg = lg[:, :-1]
    return lg


def resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Speed change by `factor` (> 1: faster and higher): band-limited resampling in the
    frequency domain to round(n / factor) samples."""
    n = x.shape[0]
    m = max(N_FFT, int(round(n / factor)))
    X = torch.fft.rfft(x)
    k = m // 2 + 1
    if k <= X.shape[0]:
        X = X[:k]
    else:
        X = torch.cat([X, X.new_zeros(k - X.shape[0])])
    return torch.fft.irfft(X, n=m) * (m / n)


def _pink(n: int, g: torch.Generator, device) -> torch.Tensor:
    w = torch.randn(n, generator=g, device=device)
    S = torch.fft.rfft(w)
    f = torch.arange(S.shape[0], device=device, dtype=torch.float32)
    S = S / f.clamp_min(1.0).sqrt()
    S[0] = 0
    y = torch.fft.irfft(S, n=n)
    return y / (y.std() + 1e-12)


def _fftconv(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    n = x.shape[0] + h.shape[0] - 1
    L = 1 << (n - 1).bit_length()
    return torch.fft.irfft(torch.fft.rfft(x, L) * torch.fft.rfft(h, L), L)[: x.shape[0]]


def augment(x: torch.Tensor, rng: np.random.Generator, g: torch.Generator, others: list[torch.Tensor],
            bucket: int = BUCKET, snr_range: tuple[float, float] = (5.0, 30.0)) -> tuple[torch.Tensor, int]:
    """One fresh augmented copy of x [n] float32 (see the module docstring), zero-padded to a
    length from a fixed set, and the number of its samples that hold the utterance.  `others`
    are other utterances' audio for babble.  Scalar choices come from `rng` (no device syncs),
    noise samples from the device generator `g`.  bucket=1: no padding, any speed (slow on CUDA)."""
    dev = x.device
    u = rng.random(7).tolist()
    n0 = x.shape[0]
    x = torch.nn.functional.pad(x, (0, -(-n0 // bucket) * bucket - n0))
    factor = SPEEDS[min(len(SPEEDS) - 1, int(u[0] * len(SPEEDS)))] if bucket > 1 else 0.9 + 0.2 * u[0]
    x = resample(x, factor)
    valid = min(x.shape[0], int(round(n0 / factor)))
    if u[1] < 0.25:
        h, _ = M.rir(rng, rt60_s=(0.15, 0.7), drr_range_db=(3.0, 15.0))
        x = _fftconv(x, torch.from_numpy(h).to(dev))
    if u[2] < 0.6 and valid > 0:
        n = x.shape[0]
        if u[3] < 0.25:
            nz = torch.randn(n, generator=g, device=dev)
        elif u[3] < 0.5 or len(others) < 3:
            nz = _pink(n, g, dev)
        else:
            k = 3 + int(u[4] * 4)
            nz = torch.zeros(n, device=dev)
            for j in rng.permutation(len(others))[:k]:
                o = others[j].float()
                o = o / (o.std() + 1e-9)
                off = int(rng.integers(0, max(1, o.shape[0])))
                reps = o.roll(-off).repeat(n // max(1, o.shape[0]) + 1)[:n]
                nz = nz + reps * float(rng.uniform(0.5, 1.0))
        snr = snr_range[0] + (snr_range[1] - snr_range[0]) * u[5]
        ps = x[:valid].pow(2).mean() + 1e-12
        pn = nz[:valid].pow(2).mean() + 1e-12
        x = x + nz * torch.sqrt(ps / (pn * 10 ** (snr / 10)))
    x = x * 10 ** ((-10 + 16 * u[6]) / 20)
    return x.clamp(-1.0, 1.0), valid


def augmented_mel(x: torch.Tensor, filters: torch.Tensor, rng: np.random.Generator, g: torch.Generator,
                  others: list[torch.Tensor], bucket: int = BUCKET,
                  snr_range: tuple[float, float] = (5.0, 30.0)) -> torch.Tensor:
    y, valid = augment(x.float(), rng, g, others, bucket, snr_range)
    return log_mel(y, filters, valid // HOP)


def bench(device: str, n: int = 128, rounds: int = 4) -> None:
    """Time augmented_mel on n utterances of random length (1-8 s), bucketed vs bucket=1."""
    import time

    filt = torch.rand(80, N_FFT // 2 + 1, device=device)
    rng = np.random.default_rng(0)
    utts = [torch.randn(int(rng.integers(SR, 8 * SR)), device=device) * 0.1 for _ in range(n)]
    for bucket in (1, BUCKET, 1, BUCKET):
        g = torch.Generator(device=device).manual_seed(0)
        for r in range(rounds):
            t = time.time()
            for x in utts:
                augmented_mel(x, filt, rng, g, utts[:8], bucket)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.time() - t
        print(f"bucket {bucket}: {1000 * dt / n:.2f} ms per utterance (round {rounds}, {device})", flush=True)


def check(device: str = "cpu") -> None:
    """torch log_mel vs avlm_features.log_mel (numpy float64) on real and synthetic clips."""
    import glob

    filt = F.mel_filters()
    ft = torch.from_numpy(filt.astype(np.float32)).to(device)
    wavs = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))[:3]
    wavs += sorted(glob.glob(os.path.join(F.TRAIN_DIR, "data", "wav", "*.wav")))[:3]
    worst = 0.0
    for p in wavs:
        a = F.read_wav(p)
        ref = F.log_mel(a, filt)
        got = log_mel(torch.from_numpy(a).to(device), ft).cpu().numpy()
        if got.shape != ref.shape:
            raise SystemExit(f"{p}: shape {got.shape} vs {ref.shape}")
        d = float(np.abs(got - ref).max())
        worst = max(worst, d)
        print(f"{os.path.basename(p)}: frames {ref.shape[1]}  max |torch - numpy| {d:.2e}")
    print(f"worst {worst:.2e}")
    if worst > 1e-3:
        raise SystemExit("torch log-mel disagrees with avlm_features.log_mel")
    g = torch.Generator(device=device).manual_seed(1)
    a = torch.from_numpy(F.read_wav(wavs[0])).to(device)
    m1 = augmented_mel(a, ft, np.random.default_rng(1), g, [a, a, a])
    # padding to a bucket changes only the last frame or two (reflection vs zeros at the end)
    pad = torch.nn.functional.pad(a, (0, BUCKET - a.shape[0] % BUCKET))
    ref = log_mel(a, ft)
    got = log_mel(pad, ft, a.shape[0] // HOP)
    d = float((got[:, :-2] - ref[:, :-2]).abs().max())
    print(f"padded to a bucket: shape {tuple(got.shape)} vs {tuple(ref.shape)}, max diff before the last 2 frames {d:.2e}")
    if got.shape != ref.shape or d > 1e-3:
        raise SystemExit("bucketed log-mel disagrees")
    r = resample(a, 1.1)
    print(f"augmented mel {tuple(m1.shape)}; resample 1.1: {a.shape[0]} -> {r.shape[0]} samples "
          f"(rms {float(a.pow(2).mean().sqrt()):.4f} -> {float(r.pow(2).mean().sqrt()):.4f})")
    assert math.isfinite(float(m1.sum()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        bench(sys.argv[2] if len(sys.argv) > 2 else ("cuda" if torch.cuda.is_available() else "cpu"))
    else:
        check()
