"""Lip encoder throughput: milliseconds of ONNX Runtime CPU time per second of video (25 frames
of 88x88 mouth crops) for AV-HuBERT Base- and Large-sized models with random weights, built by
avhubert_onnx.py into a temporary folder (nothing is kept). The front end (3D conv + ResNet-18)
is the same in every size, so it is also timed alone (no transformer layers).

    .avlm/venv/bin/python tools/avsr/bench_avhubert.py [--threads 2] [--seconds 1 3] [--repeats 5]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import avhubert_onnx as av  # noqa: E402

SIZES = {
    "front end only": {"encoder_embed_dim": 1024, "encoder_layers": 0, "encoder_attention_heads": 16,
                       "encoder_ffn_embed_dim": 4096, "layer_norm_first": True},
    "Base": {"encoder_embed_dim": 768, "encoder_layers": 12, "encoder_attention_heads": 12,
             "encoder_ffn_embed_dim": 3072, "layer_norm_first": True},
    "Large": {"encoder_embed_dim": 1024, "encoder_layers": 24, "encoder_attention_heads": 16,
              "encoder_ffn_embed_dim": 4096, "layer_norm_first": True},
}
FPS = 25


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, nargs="+", default=[1.0, 3.0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, {args.threads} intra-op threads, {os.cpu_count()} CPUs; "
          f"{args.repeats} runs after one warm-up: fastest (the least disturbed by other work) and median")
    for name in args.sizes:
        cfg = SIZES[name]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "lip.onnx")
            tensors = av.random_tensors(cfg, 1)
            params = sum(t.size for t in tensors.values())
            av.build_avhubert_onnx(tensors, cfg, path)
            del tensors
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = args.threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        for seconds in args.seconds:
            frames = max(1, round(seconds * FPS))
            video = rng.standard_normal((1, 1, frames, 88, 88)).astype(np.float32)
            sess.run(["features"], {"video": video})
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                sess.run(["features"], {"video": video})
                times.append(time.perf_counter() - t0)
            fastest, median = (float(f(times)) * 1000 / (frames / FPS) for f in (np.min, np.median))
            print(f"{name:15s} {params / 1e6:6.1f}M params  {frames:4d} frames: {fastest:7.1f} ms per second of "
                  f"video (median {median:7.1f}; real-time factor {fastest / 1000:.2f})")
        del sess


if __name__ == "__main__":
    main()
