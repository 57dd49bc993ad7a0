#!/usr/bin/env python3
"""Check an ONNX Whisper encoder (from ct2_to_onnx.py) against CTranslate2.

    check_encoder.py MODEL_DIR ENCODER.onnx [--clips WAV ...] [--bench]

For each clip (16 kHz mono 16-bit WAV; default: Debian pocketsphinx-testdata
librivox + cards), log-mel features come from faster-whisper's numpy
FeatureExtractor, zero-padded to the 3000-frame window the way faster-whisper's
`pad_or_trim` does. Then:

  (a) full window: ONNX(mel[3000]) vs CTranslate2 encode(mel[3000]); asserted.
  (b) short window (clip length rounded down to even frames):
      - ONNX(mel[:T]) vs CTranslate2 encode(mel[:T]); asserted. CTranslate2
        4.8.5 accepts any frames <= 3000 (older releases demanded exactly 3000)
        and slices its positional table the same way, so this checks the
        variable-length path against the reference directly.
      - ONNX(mel[:T]) vs the first T/2 rows of CTranslate2's 30 s output;
        reported only. Attention sees the padding frames in the 30 s case, so
        these legitimately differ; the number says by how much.
  (c) batch: both a 2-clip batch and single runs agree (ONNX only).

Errors are max |a-b| and relative L2 ||a-b|| / ||b||, with b = CTranslate2.
CTranslate2 runs with compute_type=float32 on CPU: the weights in model.bin
are widened to f32 exactly as ct2_to_onnx.py widens them, so the remaining
difference is f32 rounding (GEMM order, erf/exp approximations) and the
tolerance can be tight regardless of the stored dtype (f16 or int8 weights
are dequantized identically on both sides).

Needs: numpy, onnxruntime, ctranslate2 (CPU wheel, no torch), and
faster-whisper installed with --no-deps (only its numpy feature extractor is
loaded, by file path, so av/tokenizers/huggingface_hub are not required).
"""

import argparse
import glob
import importlib.util
import os
import sys
import time
import wave

import numpy as np

N_FRAMES = 3000  # Whisper's 30 s window at a 10 ms hop
SAMPLE_RATE = 16000
# Asserted tolerances (all must hold). Measured on tiny.en / base with f16
# weights: global rel ~2-4e-6; single rows reach ~1e-4 (a padded frame of one
# clip where f32 rounding differences get amplified), and max |a-b| reaches
# ~1.5e-3 where |ref| is ~10 (tiny) or ~100s (base). So: tight on the global
# error, looser per row/element so rare benign outliers do not fail the run,
# while a real bug (wrong positional slice, head split, GELU) is >= 1e-2.
REL_TOL = 1e-4  # ||a-b|| / ||b|| over the whole output
ROW_REL_TOL = 1e-3  # worst per-frame ||a-b|| / ||b||
ABS_TOL_FRACTION = 1e-3  # max |a-b| <= this * max |b|

DEFAULT_CLIPS = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav")) + sorted(
    glob.glob("/usr/share/pocketsphinx/test/data/cards/*.wav"))


def load_wav(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
            raise ValueError(f"{path}: need 16 kHz 16-bit PCM, got {w.getframerate()} Hz "
                             f"{8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        if w.getnchannels() > 1:
            pcm = pcm.reshape(-1, w.getnchannels())[:, 0]
    return pcm.astype(np.float32) / 32768.0


_FE = None


def feature_extractor(n_mels):
    """faster-whisper's FeatureExtractor, loaded from its file: importing the
    package runs faster_whisper/__init__.py, which pulls in av, tokenizers
    and ctranslate2's transcriber that a --no-deps install lacks."""
    global _FE
    if _FE is None or _FE[0] != n_mels:
        spec = importlib.util.find_spec("faster_whisper")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("faster-whisper not installed: pip install --no-deps faster-whisper==1.2.1")
        path = os.path.join(list(spec.submodule_search_locations)[0], "feature_extractor.py")
        mod_spec = importlib.util.spec_from_file_location("_fw_feature_extractor", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
        _FE = (n_mels, mod.FeatureExtractor(feature_size=n_mels))
    return _FE[1]


def log_mel(audio, n_mels):
    """Returns (window [n_mels, 3000] float32, number of real frames)."""
    mel = feature_extractor(n_mels)(audio)  # [n_mels, len//160 + 1]
    n = min(mel.shape[1], N_FRAMES)
    window = np.zeros((n_mels, N_FRAMES), dtype=np.float32)
    window[:, :n] = mel[:, :n]
    return window, n


def ct2_model(model_dir, threads):
    try:
        import ctranslate2
    except ImportError:
        sys.exit("ctranslate2 not installed: pip install ctranslate2==4.8.5")
    return ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32",
                                      intra_threads=threads)


def ct2_encode(model, mel):
    import ctranslate2

    sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel, dtype=np.float32))
    return np.array(model.encode(sv, to_cpu=True), dtype=np.float32)


def ort_session(onnx_path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])


def ort_encode(sess, mel):
    return sess.run(["features"], {"mel": np.ascontiguousarray(mel, dtype=np.float32)})[0]


def errors(a, b):
    """(max |a-b|, global relative L2, worst per-frame relative L2); frames
    are the second-to-last axis."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    d = a - b
    row = np.linalg.norm(d, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-30)
    return float(np.abs(d).max()), float(np.linalg.norm(d) / np.linalg.norm(b)), float(row.max())


def within(a, b):
    max_abs, rel, row_rel = errors(a, b)
    return (rel <= REL_TOL and row_rel <= ROW_REL_TOL
            and max_abs <= ABS_TOL_FRACTION * float(np.abs(b).max()))


def bench(fn, repeats):
    fn()  # warm-up: first run pays allocation / kernel selection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("onnx")
    ap.add_argument("--clips", nargs="+", default=DEFAULT_CLIPS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bench", action="store_true",
                    help="also time ORT on 4 s vs 30 s windows and CTranslate2 on 30 s")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    if not args.clips:
        sys.exit("no clips (install pocketsphinx-testdata or pass --clips)")

    sess = ort_session(args.onnx, args.threads)
    n_mels = sess.get_inputs()[0].shape[1]
    ct2 = ct2_model(args.model_dir, args.threads)

    failures = 0
    worst_full = worst_short = np.zeros(3)
    windows = []
    print(f"{'clip':<44} {'T':>4} | {'full max|d|':>11} {'rel':>8} {'row rel':>8} | "
          f"{'short max|d|':>12} {'rel':>8} {'row rel':>8} | {'vs 30s rows rel':>15}")
    for path in args.clips:
        window, n_real = log_mel(load_wav(path), n_mels)
        windows.append(window)
        mel = window[None]

        ref_full = ct2_encode(ct2, mel)
        got_full = ort_encode(sess, mel)
        assert got_full.shape == ref_full.shape, (got_full.shape, ref_full.shape)
        e_full = errors(got_full, ref_full)
        ok = within(got_full, ref_full)

        t = max(2, n_real - n_real % 2)
        ref_short = ct2_encode(ct2, mel[:, :, :t])
        got_short = ort_encode(sess, mel[:, :, :t])
        assert got_short.shape == (1, t // 2, ref_full.shape[2]), got_short.shape
        e_short = errors(got_short, ref_short)
        ok &= within(got_short, ref_short)
        e_vs30 = errors(got_short, ref_full[:, : t // 2])

        worst_full = np.maximum(worst_full, e_full)
        worst_short = np.maximum(worst_short, e_short)
        failures += not ok
        name = os.path.relpath(path, "/usr/share/pocketsphinx/test/data").replace(
            "sense_and_sensibility_01_austen_64kb-", "")
        print(f"{name:<44} {t:>4} | {e_full[0]:>11.3e} {e_full[1]:>8.2e} {e_full[2]:>8.2e} | "
              f"{e_short[0]:>12.3e} {e_short[1]:>8.2e} {e_short[2]:>8.2e} | "
              f"{e_vs30[1]:>15.3e}{'' if ok else '  FAIL'}")

    if len(windows) >= 2:
        batch = np.stack(windows[:2])
        got_b = ort_encode(sess, batch)
        singles = np.concatenate([ort_encode(sess, w[None]) for w in windows[:2]])
        e_b = errors(got_b, singles)
        print(f"batch of 2 vs single runs: max|d|={e_b[0]:.3e} rel={e_b[1]:.2e}")
        failures += not within(got_b, singles)

    for label, w in (("full", worst_full), ("short", worst_short)):
        print(f"worst {label}-window: max|d|={w[0]:.2e} rel={w[1]:.2e} row rel={w[2]:.2e}")
    print(f"tolerance: rel<={REL_TOL:g}, row rel<={ROW_REL_TOL:g}, "
          f"max|d|<={ABS_TOL_FRACTION:g}*max|ref|")

    if args.bench:
        w = windows[0][None]
        t4 = bench(lambda: ort_encode(sess, w[:, :, :400]), args.repeats)
        t30 = bench(lambda: ort_encode(sess, w), args.repeats)
        tc = bench(lambda: ct2_encode(ct2, w), max(1, args.repeats // 2))
        print(f"timing ({args.threads} threads, median of {args.repeats}): "
              f"ORT 4 s window {t4 * 1e3:.1f} ms, ORT 30 s window {t30 * 1e3:.1f} ms, "
              f"CTranslate2 30 s window {tc * 1e3:.1f} ms")

    if failures:
        sys.exit(f"{failures} comparison(s) outside tolerance")
    print("OK")


if __name__ == "__main__":
    main()
