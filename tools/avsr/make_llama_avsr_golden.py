"""Writes the whole-chain Llama-AVSR golden: a tiny random checkpoint in the released layout,
converted by convert_llama_avsr.py, and what the PyTorch reference (llama_avsr_reference.py) makes
of fixed mouth crops and speech in each modality.

    /work/.trainvenv/bin/python tools/avsr/make_llama_avsr_golden.py   # needs torch, transformers

The checkpoint is an AVSR one (Whisper + AV-HuBERT + both projectors + a Llama 3-style LLM with
the q/v LoRA), written as a float32 .pth in a temporary folder (never committed) with the keys
AVSR_LLMs.state_dict() has, AV-HuBERT's unused audio front end and pretraining heads included.

tests/golden/llama_avsr/:
  bundle/           the converted bundle, less lip_encoder.onnx (ResNet-18 is 11M weights):
                    rebuild it with the recipe in expected.json (`lip_encoder.command`), which
                    makes the same tensors from lip_config.json and the seed
  lip_config.json   the AV-HuBERT config of the recipe (avhubert_onnx.py --config)
  crops_rgb24.raw   uint8 [T, 96, 96, 3] mouth crops, RGB, 25 fps (row-major, no header), cut
                    from tests/golden/mouth/astronaut.ppm
  speech.wav        16 kHz mono 16-bit PCM speech (espeak-ng), longer than the crops
  expected.json     per modality (audio, video, audio_video): the embedding layout, encoder
                    features, the first step's logits, 32 greedy tokens and their margins
"""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "golden", "llama_avsr")
sys.path.insert(0, HERE)

import avhubert_onnx  # noqa: E402
import convert_llama_avsr  # noqa: E402
from llama_avsr_reference import ADDED, LlamaAvsr  # noqa: E402

STEPS = 32
SEED = 4  # of the seeds tried, the one whose greedy steps have the widest top-2 margins
LIP_SEED = 41
FRAMES = 39            # odd: the video k = 2 cuts one frame
AUDIO_SAMPLES = 37120  # int(37120 / 16000 * 50) = 115, not 37120 // 320 = 116: 28 audio tokens, not 29
LORA_ALPHA, LORA_REDUCTION = 8, 16  # hidden 64 / 16 = rank 4, scale 8 / 16
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=500000.0,
           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
           max_position_embeddings=131072, tie_word_embeddings=False, hidden_act="silu",
           initializer_range=0.15)
WHISPER = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=80,
               max_source_positions=1500)
LIP = {"encoder_embed_dim": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_embed_dim": 64,
       "layer_norm_first": True, "lora_scaling": 2.0, "lora_rank": 4}
K_AUDIO, K_VIDEO, PROJ_HIDDEN = 4, 2, 48
SPEECH = "Seven brown foxes jump over the lazy river before sunrise."
CORPUS = [
    "Transcribe speech to text.", "Transcribe video to text.", "Transcribe speech and video to text.",
    SPEECH.lower(), "the cat sat on the mat and the dog ran to the park",
    "we read lips and listen to speech in noise", "one two three four five six seven eight nine ten",
]


def tiny_tokenizer(folder):
    """A byte-level BPE built like Llama 3's (its split pattern, no normalizer, BOS post-processor),
    <|begin_of_text|> and <|end_of_text|> right after the BPE vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=340, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|end_of_text|>", "model_max_length": 131072}, f, indent=1)
    return tok.get_vocab_size(with_added_tokens=True), bos, tok.token_to_id("<|end_of_text|>")


def tiny_checkpoint(base, whisper_dir):
    """The state dict AVSR_LLMs would save for the tiny model (float32), and the base config."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(SEED)
    vocab, bos, eos = tiny_tokenizer(base)
    cfg = dict(LLM, vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, model_type="llama",
               architectures=["LlamaForCausalLM"])
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    llm = LlamaForCausalLM(LlamaConfig(**cfg))
    llm.resize_token_embeddings(vocab + len(ADDED))  # models/modeling_AVSRLLM.py: len(tokenizer)
    state = {"llm." + k: v for k, v in llm.state_dict().items()}
    rank = round(LLM["hidden_size"] / LORA_REDUCTION)
    kv = LLM["num_key_value_heads"] * LLM["head_dim"]
    for i in range(LLM["num_hidden_layers"]):
        p = f"llm.model.layers.{i}.self_attn."
        state[p + "lora_down_Q.weight"] = torch.randn(rank, 64) * 0.2
        state[p + "lora_up_Q.weight"] = torch.randn(64, rank) * 0.2
        state[p + "lora_down_V.weight"] = torch.randn(rank, 64) * 0.2
        state[p + "lora_up_V.weight"] = torch.randn(kv, rank) * 0.2

    wcfg = WhisperConfig(**WHISPER)
    with open(os.path.join(whisper_dir, "config.json"), "w") as f:
        json.dump(dict(WHISPER, model_type="whisper"), f, indent=1)
    whisper = WhisperEncoder(wcfg)
    state.update({"audio_encoder." + k: v for k, v in whisper.state_dict().items()})

    lip = avhubert_onnx.random_tensors(LIP, LIP_SEED)
    state.update({"video_encoder." + k: torch.from_numpy(v) for k, v in lip.items()})
    d = LIP["encoder_embed_dim"]
    # what the fairseq AVHubertModel also holds, which video-only inference never reads
    state["video_encoder.feature_extractor_audio.proj.weight"] = torch.randn(d, 104) * 0.1
    state["video_encoder.feature_extractor_audio.proj.bias"] = torch.zeros(d)
    state["video_encoder.mask_emb"] = torch.rand(d)
    state["video_encoder.final_proj.weight"] = torch.randn(16, d) * 0.1
    state["video_encoder.final_proj.bias"] = torch.zeros(16)
    state["video_encoder.label_embs_concat"] = torch.randn(10, 16)
    for k in list(lip):
        if k.endswith(".running_var"):
            state["video_encoder." + k[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)

    for module, dim, k in (("audio_proj", WHISPER["d_model"], K_AUDIO), ("video_proj", d, K_VIDEO)):
        mlp = torch.nn.Sequential(torch.nn.Linear(dim * k, PROJ_HIDDEN), torch.nn.ReLU(),
                                  torch.nn.Linear(PROJ_HIDDEN, LLM["hidden_size"]))
        state.update({f"{module}.{n}": v for n, v in mlp.state_dict().items()})
    return {k: v.detach().float().contiguous() if v.is_floating_point() else v for k, v in state.items()}


def speech(path):
    """espeak-ng's voice, resampled to 16 kHz (linear interpolation), cut to AUDIO_SAMPLES."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "s.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "190", "-w", raw, SPEECH], check=True)
        with wave.open(raw) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    t = np.arange(int(len(x) * 16000 / rate)) * rate / 16000
    y = np.interp(t, np.arange(len(x)), x)
    start = int(np.argmax(np.abs(y) > 300))  # from the first sound
    y = y[start:start + AUDIO_SAMPLES]
    y = np.concatenate([y, np.zeros(AUDIO_SAMPLES - len(y))])
    pcm = np.clip(np.round(y * 0.9), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return pcm.astype(np.float32) / 32768.0  # torchaudio.load(normalize=True)


PHOTO = os.path.join(ROOT, "tests", "golden", "mouth", "astronaut.ppm")  # see tests/golden/mouth/README.md
MOUTH = (78.0, 106.0)  # the mouth in the 160x160 photo (BlazeFace's mouth keypoint in tests/golden/mouth)


def read_ppm(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, w, h, top, pixels = data.split(maxsplit=4)
    if magic != b"P6" or top != b"255":
        raise SystemExit(f"{path}: not an 8-bit binary PPM")
    return np.frombuffer(pixels[: int(w) * int(h) * 3], np.uint8).reshape(int(h), int(w), 3)


def mouth_crops():
    """A mouth clip from a real face: 96x96 windows around the mouth of the photo the mouth-crop
    goldens use, drifting and zooming a little from frame to frame as a tracked face does
    (bilinear sampling): uint8 [T, 96, 96, 3]."""
    img = read_ppm(PHOTO).astype(np.float64)
    h, w, _ = img.shape
    grid = (np.arange(96) - 47.5) / 96
    frames = []
    for t in range(FRAMES):
        size = 60 + 6 * math.sin(2 * math.pi * t / 17)
        cx = MOUTH[0] + 3 * math.sin(2 * math.pi * t / 23)
        cy = MOUTH[1] - 2 + 2 * math.cos(2 * math.pi * t / 19)
        ys = np.clip(cy + grid * size, 0, h - 1.001)
        xs = np.clip(cx + grid * size, 0, w - 1.001)
        y0, x0 = ys.astype(int), xs.astype(int)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        a, b = img[y0][:, x0], img[y0][:, x0 + 1]
        c, d = img[y0 + 1][:, x0], img[y0 + 1][:, x0 + 1]
        frame = (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
        frames.append(np.clip(np.round(frame), 0, 255).astype(np.uint8))
    return np.stack(frames)


def template_ids(bundle):
    """Each prompt template of the bundle as avlm tokenises it (the pieces around the placeholders
    on their own, no special tokens added), a placeholder as one -1 (audio) or -2 (video)."""
    import re

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(bundle, "llm", "tokenizer.json"))
    with open(os.path.join(bundle, "avlm.toml")) as f:
        prompts = dict(re.findall(r'^transcribe_(\w+) = "(.*)"$', f.read(), re.M))
    out = {}
    for key, template in prompts.items():
        ids = []
        for piece in re.split(r"(\{audio\}|\{video\})", template):
            if piece in ("{audio}", "{video}"):
                ids.append(-1 if piece == "{audio}" else -2)
            elif piece:
                ids += tok.encode(piece, add_special_tokens=False).ids
        out[key] = ids
    return out


def bundle_check(bundle, lip_onnx, model, samples, crops, results):
    """The converted bundle run with ONNX Runtime, the projector file and the merged LLM (loaded by
    transformers from bundle/llm) must give the reference's tokens: the converter is checked here,
    before the Rust side ever reads the bundle. Returns the largest first-step logit difference."""
    import onnxruntime as ort
    from transformers import LlamaForCausalLM

    sys.path.insert(0, os.path.join(ROOT, "tools", "vision"))
    from hf_checkpoint import SafeTensors

    llm = LlamaForCausalLM.from_pretrained(os.path.join(bundle, "llm"), dtype=torch.float32).eval()
    proj = SafeTensors(os.path.join(bundle, "projector.safetensors"))
    whisper = ort.InferenceSession(os.path.join(bundle, "whisper_encoder.onnx"), providers=["CPUExecutionProvider"])
    lip = ort.InferenceSession(lip_onnx, providers=["CPUExecutionProvider"])

    def project(prefix, x, k):
        t = x.shape[0] // k * k
        x = x[:t].reshape(t // k, -1)
        h = np.maximum(x @ proj.get(f"{prefix}.fc1.weight").T + proj.get(f"{prefix}.fc1.bias"), 0)
        return h @ proj.get(f"{prefix}.fc2.weight").T + proj.get(f"{prefix}.fc2.bias")

    def audio(x):
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-8)
        mel = model.audio_frontend(x[None], return_tensors="np", sampling_rate=16000).input_features
        feats = whisper.run(["features"], {"mel": mel.astype(np.float32)})[0][0]
        return project("audio_proj", feats[: max(int(len(x) / 16000 * 50), 25)], K_AUDIO)

    def video(c):
        v = model.video_transform(c).numpy()
        v = v[: len(v) // K_VIDEO * K_VIDEO]
        return project("video_proj", lip.run(["features"], {"video": v.transpose(1, 0, 2, 3)[None]})[0][0], K_VIDEO)

    worst = 0.0
    for key, template in template_ids(bundle).items():
        rows = []
        for i in template:
            if i == -1:
                rows += list(audio(samples if key == "audio" else LlamaAvsr.cut_or_pad(samples, len(crops) * 640)))
            elif i == -2:
                rows += list(video(crops))
            else:
                rows.append(llm.model.embed_tokens.weight[i].numpy())
        embeds = torch.from_numpy(np.asarray(rows, np.float32))[None]
        out = llm(inputs_embeds=embeds, use_cache=True)
        first, tokens = out.logits[0, -1], []
        worst = max(worst, float((first - torch.tensor(results[key]["first_logits"])).abs().max()))
        logits = first
        for _ in range(STEPS):
            tokens.append(int(logits.argmax()))
            out = llm(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            logits = out.logits[0, -1]
        if tokens != results[key]["tokens"]:
            raise SystemExit(f"{key}: the converted bundle decodes {tokens}, the reference {results[key]['tokens']}")
    return worst


def floats(t):
    return [float(x) for x in np.asarray(t, np.float32).reshape(-1)]


def run_reference(model, bundle):
    """The reference on the golden's inputs (written here) in each modality."""
    crops = mouth_crops()
    crops.tofile(os.path.join(OUT, "crops_rgb24.raw"))
    samples = speech(os.path.join(OUT, "speech.wav"))
    tok = model.tokenizer
    eos = tok.convert_tokens_to_ids("<|end_of_text|>")
    templates = template_ids(bundle)
    results = {}
    for key, modality in (("audio", "audio"), ("video", "video"), ("audio_video", "audiovisual")):
        embeds, layout, extra = model.inputs(modality, samples=samples, crops=crops)
        if templates[key] != [i for n, i in enumerate(layout) if i >= 0 or n == 0 or layout[n - 1] >= 0]:
            raise SystemExit(f"{key}: the bundle's template gives {templates[key]}, the reference {layout}")
        tokens, first, margins = model.greedy(embeds, STEPS)
        r = {"layout": layout, "prompt_length": len(layout), "first_logits": floats(first), "tokens": tokens,
             "margins": [round(m, 6) for m in margins],
             "eos_at": tokens.index(eos) if eos in tokens else None,
             "text": tok.decode(tokens, skip_special_tokens=False)}
        for name in ("audio_features", "video_features", "audio_embeddings", "video_embeddings"):
            if name in extra:
                r[name] = {"shape": list(extra[name].shape[1:]), "data": floats(extra[name][0])}
        results[key] = r
        print(f"{key}: {len(layout)} prompt rows, tokens {tokens[:8]}..., min margin {min(margins):.4f}, "
              f"eos at {r['eos_at']}")

    return crops, samples, results


def main():
    torch.set_grad_enabled(False)
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        base, whisper_dir = os.path.join(tmp, "llama"), os.path.join(tmp, "whisper")
        os.makedirs(base)
        os.makedirs(whisper_dir)
        state = tiny_checkpoint(base, whisper_dir)
        pth = os.path.join(tmp, "AVSR_tiny.pth")
        torch.save(state, pth)

        bundle = os.path.join(OUT, "bundle")
        detector = os.path.join(ROOT, ".avlm", "models", "face_detection_back_256x256.onnx")
        info = convert_llama_avsr.convert(
            pth, bundle, base, whisper=whisper_dir, face_detector=detector, lora_alpha=LORA_ALPHA,
            lora_reduction=LORA_REDUCTION, video_encoder_config={"encoder_attention_heads": 4}, all_prompts=True)
        # The recipe must rebuild the very encoder the converter wrote from the checkpoint.
        lip_config = os.path.join(OUT, "lip_config.json")
        with open(lip_config, "w") as f:
            json.dump(LIP, f, indent=1)
        rebuilt = os.path.join(tmp, "lip_encoder.onnx")
        avhubert_onnx.build_avhubert_onnx(avhubert_onnx.random_tensors(LIP, LIP_SEED), LIP, rebuilt)
        converted = os.path.join(bundle, "lip_encoder.onnx")
        with open(rebuilt, "rb") as a, open(converted, "rb") as b:
            if a.read() != b.read():
                raise SystemExit("the lip encoder recipe does not rebuild the converted lip_encoder.onnx")
        with open(converted, "rb") as f:
            lip_sha = hashlib.sha256(f.read()).hexdigest()
        os.remove(converted)

        model = LlamaAvsr(state, base, LORA_ALPHA, LORA_REDUCTION, whisper_heads=WHISPER["encoder_attention_heads"],
                          avhubert_config={"encoder_attention_heads": 4})
        del state
        crops, samples, results = run_reference(model, bundle)
        worst = bundle_check(bundle, rebuilt, model, samples, crops, results)
        print(f"the converted bundle (ONNX Runtime + merged LLM) gives the same tokens; first logits within {worst:.2e}")
    tok = model.tokenizer

    golden = {
        "about": "tools/avsr/make_llama_avsr_golden.py: PyTorch reference (float32, greedy, no stop) of the "
                 "tiny random Llama-AVSR checkpoint converted into bundle/",
        "bundle": "bundle",
        "inputs": {
            "crops": {"file": "crops_rgb24.raw", "dtype": "uint8", "shape": list(crops.shape), "layout": "THWC RGB",
                      "fps": 25},
            "audio": {"file": "speech.wav", "sample_rate": 16000, "samples": int(len(samples)),
                      "scale": "int16 / 32768"},
        },
        "lip_encoder": {
            "file": "bundle/lip_encoder.onnx", "config": "lip_config.json", "seed": LIP_SEED,
            "command": f".avlm/venv/bin/python tools/avsr/avhubert_onnx.py --random-seed {LIP_SEED} "
                       "OUT/lip_encoder.onnx --config tests/golden/llama_avsr/lip_config.json",
            "weights_sha256": avhubert_onnx.digest(avhubert_onnx.random_tensors(LIP, LIP_SEED)),
            "onnx_sha256": lip_sha,
        },
        "tokens": {t: tok.convert_tokens_to_ids(t) for t in ["<|begin_of_text|>", "<|end_of_text|>", *ADDED]},
        "rules": {
            "audio_frames_kept": "max(int(samples / 16000 * 50), 25) in float64 (Python)",
            "audio_video": "audio cut or zero-padded to video_frames * 640 samples before everything",
            "video_frames": "cut to a multiple of k_video before the lip encoder",
            "waveform": "F.layer_norm over the whole (cut) waveform, eps 1e-8, then Whisper's 30 s log-mel",
            "layout": "token ids; -1 an audio embedding row, -2 a video embedding row",
        },
        "bundle_check": {"about": "the bundle run by ONNX Runtime + transformers on the merged LLM: same tokens",
                         "first_logits_max_abs_diff": worst},
        "k_audio": K_AUDIO, "k_video": K_VIDEO, "steps": STEPS,
        "converter": {"lora_alpha": LORA_ALPHA, "lora_reduction": LORA_REDUCTION, "ids": info["ids"]},
        "modalities": results,
    }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(OUT) for n in ns)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
