#!/usr/bin/env python3
"""Golden end-to-end TRANSCRIBE chain (audio -> text) for avlm's Rust pipeline.

An independent reference built from the pieces the other goldens already
trust: Whisper's log-mel math (tools/golden/make_mel_golden.py), the Whisper
encoder ONNX run by ONNX Runtime (Python), the bundle's projector in float64
numpy, and the numpy LLaMA reference for the GGUF (tools/llm/reference.py).

The chain, per clip (16-bit 16 kHz mono WAV, samples = int16 / 32768):
  1. mel = log_mel(samples, Whisper's 80-bin filters) at the clip's own length:
     frames = samples // 160; if odd, drop the LAST frame (after the
     log10 / max-8 clamp) so the encoder gets an even count.
  2. features = ORT(encoder)(mel[None]) -> [T, 384], T = frames / 2
     (intra/inter-op threads 1, sequential: deterministic).
  3. stack k=4: G = T // 4 (leftover frames dropped),
     X = features[:4G].reshape(G, 4*384)  (row g = features[4g..4g+3] concatenated).
  4. audio_embeds = relu(X @ W1.T + b1) @ W2.T + b2 -> [G, 576]
     (float64 math on the float32 safetensors weights).
  5. The bundle's prompts.transcribe_audio is split at "{audio}"; prefix and
     suffix are tokenized SEPARATELY with the reference tokenizer (special
     tokens are single ids, no BOS); embeds = token_embd[prefix] ++ audio_embeds
     ++ token_embd[suffix].
  6. Greedy decode with the float64 reference from those embeddings: at most
     32 new tokens, stopping BEFORE emitting a stop id (<|im_end|>=2,
     <|endoftext|>=0, from the bundle's decoding.stop).
  7. With a CTC head (decoding.ctc_head): its float64 log-probabilities over
     [token_embd rows, blank] per audio row, the best class per row, and the
     CTC log-probability of the greedy ids as the whole labelling (textbook
     forward over the blank-extended labels).

Writes (OUT, default tests/golden/transcribe/):
  golden.json
  <clip>.features.bin      float32 LE [T, 384]   encoder output (step 2)
  <clip>.audio_embeds.bin  float32 LE [G, 576]   projector output (step 4)

golden.json layout:
  reference, versions, chain            how it was made
  bundle {dir, manifest_sha256, projector: {file, sha256, metadata},
          encoder: {file, sha256}, llm: {file, sha256}, lora, ctc_head,
          template, prompt_prefix, prompt_suffix, stack_k}
  decoding {max_new_tokens, stop_tokens, stop_ids}
  clips[] {name, wav, wav_sha256, n_samples, mel_frames (even, after the
           fix), mel_frames_dropped (0/1), T, G, features_max_abs,
           features_file, audio_embeds_file, audio_embeds_row0_first8,
           audio_embeds_l2 (of all [G,576]), prefix_ids, suffix_ids,
           prompt_len (= len(prefix)+G+len(suffix)), prompt_last_top5
           [[id, logit], ...], generated_ids (stop id excluded), text,
           stopped_on (stop id or null), margins (top1-top2 per step taken,
           including the final step that chose the stop id), min_margin,
           and with a CTC head: ctc_best_path, ctc_best_margins,
           ctc_best_log_probs (per audio row), ctc_log_prob_generated}

Usage: .avlm/venv/bin/python tools/golden/make_transcribe_golden.py [--bundle DIR] [--out DIR]
The bundle defaults to .avlm/bundles/default and is created with
tools/bundle/make_default_bundle.py if missing.  Re-running gives
byte-identical output.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import sys
import math
import time

# Single-threaded BLAS (see tools/llm/reference.py): fixed summation order, and
# far faster on this shared 2-core box.  Must precede numpy.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools", "llm"))
sys.path.insert(0, os.path.join(ROOT, "tools", "bundle"))
import make_default_bundle as B  # noqa: E402
import make_mel_golden as MEL  # noqa: E402
import reference as R  # noqa: E402

try:
    import tomllib
except ImportError:  # pragma: no cover
    sys.exit("needs Python >= 3.11 (tomllib)")

DATA = "/usr/share/pocketsphinx/test/data"
CLIPS = {
    "cards_001": f"{DATA}/cards/001.wav",
    "librivox_0890": f"{DATA}/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
}
MAX_NEW_TOKENS = 32
AUDIO_SLOT = "{audio}"
DEFAULT_BUNDLE = os.path.join(ROOT, ".avlm", "bundles", "default")


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


def show_path(p):
    """Repo-relative when inside the repo (so the JSON doesn't depend on the checkout)."""
    p = os.path.abspath(p)
    return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p


def write_f32(path, arr):
    np.ascontiguousarray(arr, dtype="<f4").tofile(path)


def even_mel(audio, filters):
    mel = MEL.log_mel(audio, filters)               # [80, samples // 160], float64
    assert mel.shape[1] == len(audio) // MEL.HOP, (mel.shape, len(audio))
    dropped = mel.shape[1] % 2
    if dropped:
        mel = mel[:, :-1]                           # drop the LAST frame, after the clamp
    return mel, dropped


def encoder_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def stack(features, k):
    G = features.shape[0] // k
    return features[:k * G].reshape(G, k * features.shape[1]), G


def token_budget(decoding, seconds):
    """MAX_NEW_TOKENS, further capped like the server's Decoding::token_budget."""
    rate = float(decoding.get("max_tokens_per_audio_s", 0.0))
    budget = min(MAX_NEW_TOKENS, int(decoding.get("max_new_tokens", MAX_NEW_TOKENS)))
    if rate > 0:
        budget = min(budget, 8 + math.ceil(rate * seconds))
    return budget


def project(x, w, prefix):
    W1 = w[f"{prefix}.fc1.weight"].astype(np.float64)
    b1 = w[f"{prefix}.fc1.bias"].astype(np.float64)
    W2 = w[f"{prefix}.fc2.weight"].astype(np.float64)
    b2 = w[f"{prefix}.fc2.bias"].astype(np.float64)
    h = np.maximum(x.astype(np.float64) @ W1.T + b1, 0.0)
    return h @ W2.T + b2


def ctc_context(x, blocks):
    """The CTC head's residual context blocks (tools/train/train_ctc_head.py), float64:
    x + fc2(relu(fc1(window of the layer-normed frames t-k//2 .. t+k//2, zeros past the ends)))."""
    for b in blocks:
        mu = x.mean(1, keepdims=True)
        var = ((x - mu) ** 2).mean(1, keepdims=True)
        h = (x - mu) / np.sqrt(var + 1e-5) * b["norm.weight"] + b["norm.bias"]
        k = b["fc1.weight"].shape[1] // x.shape[1]
        pad = np.zeros((k // 2, x.shape[1]))
        hp = np.concatenate([pad, h, pad], 0)
        win = np.concatenate([hp[i:i + x.shape[0]] for i in range(k)], 1)
        inner = np.maximum(win @ b["fc1.weight"].T + b["fc1.bias"], 0.0)
        x = x + inner @ b["fc2.weight"].T + b["fc2.bias"]
    return x


def ctc_log_probs(audio_embeds, tok_embd, blank_w, blank_b, blocks=()):
    """[G, V+1] float64 log-probabilities of the CTC head (blank last): token logits are dot
    products with the LLM's token embeddings, the blank's is audio . blank_w + blank_b, after
    the head's context blocks (if any)."""
    audio_embeds = ctc_context(audio_embeds, blocks)
    logits = np.concatenate([audio_embeds @ tok_embd.T, (audio_embeds @ blank_w + blank_b)[:, None]], 1)
    mx = logits.max(1, keepdims=True)
    return logits - (mx + np.log(np.exp(logits - mx).sum(1, keepdims=True)))


def ctc_labelling_log_prob(lp, labels):
    """log P(labelling == labels) by the textbook CTC forward over the blank-extended
    label sequence (float64), independent of the server's prefix-score recursion."""
    blank = lp.shape[1] - 1
    ext = [blank]
    for t in labels:
        ext += [int(t), blank]
    S, T = len(ext), lp.shape[0]
    a = np.full(S, -np.inf)
    a[0] = lp[0, ext[0]]
    if S > 1:
        a[1] = lp[0, ext[1]]
    for t in range(1, T):
        prev = a.copy()
        for s in range(S):
            terms = [prev[s]]
            if s >= 1:
                terms.append(prev[s - 1])
            if s >= 2 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(prev[s - 2])
            a[s] = np.logaddexp.reduce(terms) + lp[t, ext[s]]
    return float(np.logaddexp(a[-1], a[-2]) if S > 1 else a[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default=DEFAULT_BUNDLE,
                    help="bundle folder (created with make_default_bundle if avlm.toml is missing)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "golden", "transcribe"))
    args = ap.parse_args(argv)
    t_start = time.time()

    bundle = os.path.abspath(args.bundle)
    manifest_path = os.path.join(bundle, "avlm.toml")
    if not os.path.exists(manifest_path):
        B.make_default_bundle(bundle)
        print(f"created bundle {bundle}")
    with open(manifest_path, "rb") as f:
        man = tomllib.load(f)
    rel = lambda p: os.path.normpath(os.path.join(bundle, p))  # noqa: E731
    enc_path = rel(man["audio"]["encoder"])
    proj_path = rel(man["projector"]["weights"])
    gguf_path = rel(man["llm"]["weights"])
    pa = man["projector"]["audio"]
    comp = pa["compression"]
    # The chain below implements exactly this projector shape; refuse anything else.
    assert comp["kind"] == "stack" and pa["activation"] == "relu" and not pa["layer_norm"], pa
    assert man["audio"]["window"] == "utterance" and man["audio"]["n_mels"] == 80, man["audio"]
    assert man["llm"]["format"] == "gguf" and man["llm"]["tokenizer"] == "gguf", man["llm"]
    k, prefix_name = int(comp["k"]), pa["prefix"]
    template = man["prompts"]["transcribe_audio"]
    assert template.count(AUDIO_SLOT) == 1, template
    p_text, s_text = template.split(AUDIO_SLOT)

    weights, proj_meta = B.read_safetensors(proj_path)

    t0 = time.time()
    filters = MEL.whisper_filters()
    t_filters = time.time() - t0
    sess = encoder_session(enc_path)
    (inp,), outs = sess.get_inputs(), [o.name for o in sess.get_outputs()]
    assert inp.name == "mel" and "features" in outs, (inp.name, outs)

    t0 = time.time()
    m = R.load(gguf_path)
    ti = R.load_tokenizer(gguf_path)
    lora = None
    if man["llm"].get("lora"):
        # Adapters merged into q and v the way the server does: W += scale * B @ A
        # (B rows already in GGUF order), in float64.
        lora_path = rel(man["llm"]["lora"])
        lt, lmeta = B.read_safetensors(lora_path)
        scale = float(lmeta["scale"])
        for i, layer in enumerate(m.layers):
            for proj, attr in (("q_proj", "wq"), ("v_proj", "wv")):
                a, b = lt.get(f"lora.layers.{i}.{proj}.A"), lt.get(f"lora.layers.{i}.{proj}.B")
                if a is not None:
                    w = getattr(layer, attr)
                    setattr(layer, attr, w + scale * (b.astype(np.float64) @ a.astype(np.float64)))
        lora = {"file": man["llm"]["lora"], "sha256": sha256(lora_path), "scale": scale}
    ctc = None
    if man["decoding"].get("ctc_head"):
        ctc_path = rel(man["decoding"]["ctc_head"])
        ct, cmeta = B.read_safetensors(ctc_path)
        ctc_w = ct["ctc.blank_w"].astype(np.float64).reshape(-1)
        ctc_b = float(ct["ctc.blank_b"].reshape(-1)[0])
        ctc_blocks = []
        while f"ctc.blocks.{len(ctc_blocks)}.fc1.weight" in ct:
            i = len(ctc_blocks)
            ctc_blocks.append({n: ct[f"ctc.blocks.{i}.{n}"].astype(np.float64)
                               for n in ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")})
        ctc = {"file": man["decoding"]["ctc_head"], "sha256": sha256(ctc_path), "metadata": cmeta}
    t_load = time.time() - t0
    prefix_ids = R.encode(ti, p_text)
    suffix_ids = R.encode(ti, s_text)
    assert R.decode(ti, prefix_ids) == p_text and R.decode(ti, suffix_ids) == s_text
    stop_tokens = list(man["decoding"]["stop"])
    stop_ids = [ti.special[s] for s in stop_tokens]
    print(f"bundle {bundle}: k={k}, prefix ids {prefix_ids}, suffix ids {suffix_ids}, "
          f"stop {dict(zip(stop_tokens, stop_ids))}")

    os.makedirs(args.out, exist_ok=True)
    clips, timings = [], {}
    for name, wav in CLIPS.items():
        t0 = time.time()
        audio = MEL.read_wav(wav)
        mel, dropped = even_mel(audio, filters)
        feats = sess.run(["features"], {"mel": np.ascontiguousarray(mel[None], dtype=np.float32)})[0]
        assert feats.shape == (1, mel.shape[1] // 2, man["audio"]["hidden"]), feats.shape
        feats = feats[0]
        T = feats.shape[0]
        x, G = stack(feats, k)
        audio_embeds = project(x, weights, prefix_name)               # float64 [G, 576]
        assert audio_embeds.shape == (G, m.d_model)
        t_front = time.time() - t0

        t0 = time.time()
        embeds = np.concatenate([m.tok_embd[prefix_ids], audio_embeds, m.tok_embd[suffix_ids]])
        res = R.greedy_embeds(m, embeds, token_budget(man["decoding"], len(audio) / 16000.0),
                              stop_ids=stop_ids)
        t_llm = time.time() - t0
        lg = res["prompt_last_logits"]
        top5 = np.argsort(-lg, kind="stable")[:5]
        text = R.decode(ti, res["ids"])
        ctc_rec = {}
        if ctc is not None:
            lp = ctc_log_probs(audio_embeds, m.tok_embd, ctc_w, ctc_b, ctc_blocks)
            best = lp.argmax(1)
            srt = np.sort(lp, 1)
            ctc_rec = {
                "ctc_best_path": [int(i) for i in best],
                "ctc_best_margins": [float(v) for v in srt[:, -1] - srt[:, -2]],
                "ctc_best_log_probs": [float(v) for v in srt[:, -1]],
                "ctc_log_prob_generated": ctc_labelling_log_prob(lp, res["ids"]),
            }

        feats_file, emb_file = f"{name}.features.bin", f"{name}.audio_embeds.bin"
        write_f32(os.path.join(args.out, feats_file), feats)
        write_f32(os.path.join(args.out, emb_file), audio_embeds)
        clips.append({
            "name": name,
            "wav": wav,
            "wav_sha256": sha256(wav),
            "n_samples": int(len(audio)),
            "mel_frames": int(mel.shape[1]),
            "mel_frames_dropped": int(dropped),
            "T": int(T),
            "G": int(G),
            "features_max_abs": float(np.abs(feats).max()),
            "features_file": feats_file,
            "audio_embeds_file": emb_file,
            "audio_embeds_row0_first8": [float(v) for v in audio_embeds[0, :8]],
            "audio_embeds_l2": float(np.sqrt(np.sum(audio_embeds * audio_embeds))),
            "prefix_ids": [int(i) for i in prefix_ids],
            "suffix_ids": [int(i) for i in suffix_ids],
            "prompt_len": int(embeds.shape[0]),
            "prompt_last_top5": [[int(i), float(lg[i])] for i in top5],
            "generated_ids": [int(i) for i in res["ids"]],
            "text": text,
            "stopped_on": res["stopped_on"],
            "margins": res["margins"],
            "min_margin": float(min(res["margins"])),
        } | ctc_rec)
        timings[name] = (t_front, t_llm)
        print(f"{name}: samples={len(audio)} mel={mel.shape[1]} (dropped {dropped}) T={T} G={G} "
              f"prompt={embeds.shape[0]} | {len(res['ids'])} tokens, stop={res['stopped_on']}, "
              f"min margin {min(res['margins']):.4f} | top5 {[int(i) for i in top5]} | {text!r} "
              f"[front {t_front:.1f}s, llm {t_llm:.1f}s]")

    meta = {
        "reference": "tools/golden/make_transcribe_golden.py: Whisper log-mel (make_mel_golden.log_mel, "
                     "float64) -> ONNX Runtime encoder (float32) -> stack-k + relu MLP projector "
                     "(float64) -> tools/llm/reference.py greedy_embeds (float64 on f32-dequantized GGUF)",
        "versions": {d: version_of(d) for d in ("numpy", "onnxruntime", "gguf", "tokenizers")}
        | {"whisper_filters": MEL.WHISPER_SDIST},
        "chain": [
            "mel = log_mel(samples) with frames = samples // 160; odd -> drop the last frame",
            "features = encoder(mel[None])[0] -> [T, 384], T = frames / 2",
            "X = features[:k*G].reshape(G, k*384), G = T // k",
            "audio_embeds = relu(X @ fc1.W^T + fc1.b) @ fc2.W^T + fc2.b -> [G, 576]",
            "LoRA (when the bundle has one): W_q += scale * B_q @ A_q, W_v += scale * B_v @ A_v, float64",
            "embeds = token_embd[prefix_ids] ++ audio_embeds ++ token_embd[suffix_ids]",
            "greedy argmax (lowest id on ties), <= min(32, max_new_tokens, 8 + ceil(max_tokens_per_audio_s * seconds)), stop before a stop id",
            "CTC head (when the bundle has one): x = audio_embeds through its context blocks (ctc_context; none: x = audio_embeds), "
            "log_softmax([x @ token_embd^T, x @ blank_w + blank_b]) "
            "-> best path per frame, and log P(labelling == generated_ids) by the standard CTC forward (float64)",
        ],
        "bundle": {
            "dir": show_path(bundle),
            "manifest_sha256": sha256(manifest_path),
            "projector": {"file": man["projector"]["weights"], "sha256": sha256(proj_path),
                          "metadata": proj_meta},
            "encoder": {"file": man["audio"]["encoder"], "sha256": sha256(enc_path)},
            "llm": {"file": man["llm"]["weights"], "sha256": sha256(gguf_path)},
            "lora": lora,
            "ctc_head": ctc,
            "template": template,
            "prompt_prefix": p_text,
            "prompt_suffix": s_text,
            "stack_k": k,
        },
        "decoding": {"max_new_tokens": MAX_NEW_TOKENS, "stop_tokens": stop_tokens, "stop_ids": stop_ids},
        "files": {"features": "float32 LE [T, 384] row-major", "audio_embeds": "float32 LE [G, 576] row-major"},
        "clips": clips,
    }
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}: whisper filters {t_filters:.1f}s, model load {t_load:.1f}s, "
          f"total {time.time() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
