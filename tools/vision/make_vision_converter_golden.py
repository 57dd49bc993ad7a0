#!/usr/bin/env python3
"""Tiny random VideoLLM-online and SmolVLM checkpoints, converted, with goldens from PyTorch.

    python tools/vision/make_vision_converter_golden.py [OUT_DIR]
    (needs torch, transformers 4.x, peft and tokenizers; the converters run in
    the project venv, .avlm/venv, without torch; OUT_DIR defaults to tests/golden/vision)

For each model this builds a released-style checkpoint of the reference
architecture with random weights in a temporary folder, runs the converter on
it into OUT_DIR/tiny_videollm_online or OUT_DIR/tiny_smolvlm, and writes there
what the reference code path computes in PyTorch (stream/tests/vision_converters.rs
checks the bundle against it):

  frames.rgb          20 frames, 32x32 RGB24, the encoders' input size (no resize)
  vision_tokens.bin   f32 [20, tokens, hidden]: each frame's LLM-space embeddings
  prompt_logits.bin   f32 [vocab]: the logits after a text prompt
  golden.json         ids, the 32 greedy tokens, the stream's P(separator) and
                      captions per frame, the threshold, tolerances

VideoLLM-online: a Llama-3-architecture base (llama3 RoPE scaling, GQA) with a
tiny byte-level BPE tokenizer; a PEFT LoRA (r 4, alpha 8, VideoLLM-online's
target regex: q/k/v/o/gate/up/down and lm_head) with random non-zero A and B
and the connector (Linear, GELU, Linear) in modules_to_save, saved by PEFT's
own save_pretrained; a SiglipVisionModel (32 px, patch 4: 8x8 grid, width
32, with its pooling head). The reference runs the PeftModel (LoRA added at
run time, not merged) and VideoLLM-online's vision encode (pooler_output,
then adaptive_avg_pool2d 3x3 of the grid) and connector.

SmolVLM: Idefics3ForConditionalGeneration (the same vision size, scale factor
2: 16 tokens of width 128 a frame; a tiny Llama text model). The reference
is get_image_features (vision model, pixel shuffle, modality projection)
with the vision position ids of transformers <= 4.54 (identity on a full
image): 4.55-4.57 shift them by one in float32 (their PR #41371), which is
not what the checkpoints were trained with. golden.json records how far the
shifted ids move the tokens.

The stream: the manifest's caption format, each text piece tokenised alone;
per frame the pending text then the frame's tokens; P(separator) from the
softmax of the last logits; VideoLLM-online's decision (P below the threshold
zeroed, speak when the argmax is not the separator: the same as avlm's
"speak below the threshold" for a threshold above 0.5); a reply is the reply
prompt then greedy tokens until the end token or max_new_tokens; after it,
the end token and frame_open. The separator's lm_head row is nudged toward
the stream's mean final hidden state so that P(separator) sits near 0.75
(a random model would never predict it), and the threshold is a midpoint
between neighbouring P values of a silent pass, chosen so both decisions
occur with a margin.

The bundles are captions only (no [audio] section), as the converters
write them without --audio-encoder/--audio-projector.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROJECT_PY = os.path.join(ROOT, ".avlm", "venv", "bin", "python")
N_FRAMES, SIZE, N_GREEDY, CAPTION_TOKENS = 20, 32, 32, 16
PROMPT = "The video shows a red cup, then a dog."

torch.set_num_threads(1)

# Unicode White_Space, what Rust's str::trim removes (Python's strip also removes \x1c-\x1f).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"

CORPUS = [
    "A multimodal AI assistant is helping users with some activities. Below is their conversation, "
    "interleaved with the list of video frames received by the assistant.",
    "A live video. When something new comes into view, say what it is in one short sentence.",
    "\n[", ",", "]\nAssistant:", "\nUser: What is on the table?", "System: User: Assistant:",
    "The video shows a red cup, then a dog. A cat sits on a mat. The man opens the door.",
    "She puts the bread in the oven and takes a knife from the drawer.",
]


def tiny_tokenizer(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256 + len(specials) + 60, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def frames(seed):
    """Four scenes of five frames each, each frame its scene plus a little noise."""
    rng = np.random.default_rng(seed)
    scenes = [rng.integers(0, 256, (SIZE, SIZE, 3)) for _ in range(4)]
    out = []
    for i in range(N_FRAMES):
        noise = rng.integers(-12, 13, (SIZE, SIZE, 3))
        out.append(np.clip(scenes[i // 5] + noise, 0, 255).astype(np.uint8))
    return np.stack(out)


def pixels(rgb, mean, std):
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


class Stream:
    """The caption loop over a model given as `step(embeds [1, n, d], cache) -> last logits`."""

    def __init__(self, step, embed, encode, fmt):
        self.step, self.embed, self.encode, self.fmt = step, embed, encode, fmt

    def p_separator(self, logits):
        p = torch.softmax(logits.double(), dim=-1)
        return float(p[self.fmt["separator"]])

    def run(self, frame_embeds, threshold, max_new, silent=False):
        from transformers import DynamicCache

        fmt, cache = self.fmt, DynamicCache()
        pending = fmt["system"] + fmt["frame_open"]
        out, hidden = [], []
        for emb in frame_embeds:
            x = torch.cat([self.embed(pending), emb[None]], dim=1)
            logits, h = self.step(x, cache)
            hidden.append(h)
            p = self.p_separator(logits)
            probs = torch.softmax(logits.double(), dim=-1)
            if p < threshold:
                probs[fmt["separator"]] = 0
            speak = not silent and int(probs.argmax()) != fmt["separator"]
            if not speak:
                pending = [fmt["separator"]]
                out.append({"p_separator": p, "caption": None})
                continue
            logits, _ = self.step(self.embed(fmt["reply_prompt"]), cache)
            ids, nxt = [], int(logits.argmax())
            while nxt != fmt["end"] and len(ids) < max_new:
                ids.append(nxt)
                logits, _ = self.step(self.embed([nxt]), cache)
                nxt = int(logits.argmax())
            text = self.decode(ids).strip(WHITE_SPACE)
            out.append({"p_separator": p, "caption": text or None, "ids": ids})
            pending = [fmt["end"]] + fmt["frame_open"]
        return out, torch.stack(hidden)


def pick_threshold(ps):
    """A midpoint between neighbouring values above 0.5 near the median, with its margin."""
    s = sorted(ps)
    gaps = [((s[i] + s[i + 1]) / 2, (s[i + 1] - s[i]) / 2) for i in range(len(s) - 1) if s[i] > 0.5]
    mid = len(s) / 2
    gaps.sort(key=lambda g: (abs(sum(p < g[0] for p in s) - mid), -g[1]))
    return gaps


def tune_separator(stream_for, lm_head_row, embeds, target=0.75):
    """Adds gamma * (mean final hidden state) to the separator's lm_head row so that
    the median P(separator) of a silent pass is near `target`."""
    base = lm_head_row.clone()
    run = lambda: stream_for().run(embeds, 0.0, 0, silent=True)  # noqa: E731
    _, hidden = run()
    u = hidden.mean(0)
    u = u / u.norm()
    lo, hi = 0.0, 1.0
    while True:
        lm_head_row.copy_(base + hi * u)
        if np.median([o["p_separator"] for o in run()[0]]) > target:
            break
        lo, hi = hi, hi * 2
    for _ in range(30):
        g = (lo + hi) / 2
        lm_head_row.copy_(base + g * u)
        if np.median([o["p_separator"] for o in run()[0]]) > target:
            hi = g
        else:
            lo = g
    lm_head_row.copy_(base + hi * u)


def decide(stream_for, embeds, max_new):
    silent, _ = stream_for().run(embeds, 0.0, 0, silent=True)
    for threshold, _ in pick_threshold([o["p_separator"] for o in silent]):
        result, _ = stream_for().run(embeds, threshold, max_new)
        spoke = [o["caption"] is not None or "ids" in o for o in result]
        margin = min(abs(o["p_separator"] - threshold) for o in result)
        if any(spoke) and not all(spoke) and margin > 2e-3 and threshold > 0.5:
            return threshold, margin, result
    raise SystemExit("no threshold gives both decisions with a margin")


def write_outputs(out, rgb, tokens, prompt_ids, logits, greedy, threshold, margin, stream, extra):
    rgb.tofile(os.path.join(out, "frames.rgb"))
    tokens.astype("<f4").tofile(os.path.join(out, "vision_tokens.bin"))
    logits.astype("<f4").tofile(os.path.join(out, "prompt_logits.bin"))
    golden = {
        "frames": {"file": "frames.rgb", "count": N_FRAMES, "width": SIZE, "height": SIZE},
        "vision_tokens": {"file": "vision_tokens.bin", "shape": list(tokens.shape), "tolerance": 1e-4},
        "prompt": {"text": PROMPT, "ids": prompt_ids, "logits_file": "prompt_logits.bin",
                   "tolerance": 1e-4, "greedy": greedy},
        "stream": {"threshold": threshold, "margin": margin, "max_new_tokens": CAPTION_TOKENS,
                   "p_separator_tolerance": 1e-4,
                   "frames": [{"p_separator": o["p_separator"], "caption": o["caption"]} for o in stream]},
        **extra,
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")


def greedy_from(step, embed, ids, n):
    from transformers import DynamicCache

    cache = DynamicCache()
    logits, _ = step(embed(ids), cache)
    first = logits.clone()
    out = []
    for _ in range(n):
        nxt = int(logits.argmax())
        out.append(nxt)
        logits, _ = step(embed([nxt]), cache)
    return first, out


def convert(script, args, out):
    if os.path.isdir(out):
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if os.path.isdir(path):
                for f in os.listdir(path):
                    os.remove(os.path.join(path, f))
                os.rmdir(path)
            else:
                os.remove(path)
    os.makedirs(out, exist_ok=True)
    cmd = [PROJECT_PY, os.path.join(ROOT, "tools", "vision", script), *args.pop("argv"),
           "--dtype", "f32", out]
    subprocess.run(cmd, check=True)


def fmt_ids(encode, toml):
    import tomllib

    with open(toml, "rb") as f:
        cap = tomllib.load(f)["caption"]
    ids = lambda s: encode(s)  # noqa: E731
    one = lambda s: (lambda v: v[0] if len(v) == 1 else sys.exit(f"{s!r} is {len(v)} tokens"))(ids(s))  # noqa: E731
    return {"system": ids(cap["system"]), "frame_open": ids(cap["frame_open"]),
            "separator": one(cap["separator"]), "reply_prompt": ids(cap["reply_prompt"]),
            "end": one(cap["end"])}


def videollm_online(out, tmp):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(20240801)
    base_dir, adapter_dir, vision_dir = (os.path.join(tmp, n) for n in ("base", "adapter", "siglip"))
    tok = tiny_tokenizer(["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    vocab = tok.get_vocab_size()
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096,
        rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64, "rope_type": "llama3"},
        tie_word_embeddings=False, bos_token_id=tok.token_to_id("<|begin_of_text|>"),
        eos_token_id=tok.token_to_id("<|eot_id|>"), attention_bias=False, mlp_bias=False)
    llm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in llm.parameters():  # transformers' init is too small to tell layers apart
            p.normal_(0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    llm.connector = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    base_params = {n: p for n, p in llm.named_parameters() if not n.startswith("connector")}
    vcfg = SiglipVisionConfig(image_size=SIZE, patch_size=4, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4, vision_use_head=True)
    siglip = SiglipVisionModel(vcfg).eval()
    with torch.no_grad():
        for n, p in siglip.named_parameters():
            if "norm" not in n:
                p.normal_(0, 0.1)

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, task_type="CAUSAL_LM", modules_to_save=["connector"],
                      target_modules="model.*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|lm_head$")
    model = get_peft_model(llm, lora).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.2)
    connector = model.base_model.model.connector

    os.makedirs(base_dir)
    tok.save(os.path.join(base_dir, "tokenizer.json"))
    encode = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    rgb = frames(1)
    with torch.no_grad():
        vis = siglip(pixels(rgb, [0.5] * 3, [0.5] * 3))
        grid = vis.last_hidden_state.reshape(N_FRAMES, 8, 8, 32).permute(0, 3, 1, 2)
        spatial = torch.nn.functional.adaptive_avg_pool2d(grid, (3, 3)).flatten(2, 3).permute(0, 2, 1)
        tokens = connector(torch.cat([vis.pooler_output[:, None], spatial], dim=1))

    inner = model.base_model.model

    def step(x, cache):
        o = model(inputs_embeds=x, past_key_values=cache, use_cache=True, output_hidden_states=True)
        return o.logits[0, -1], o.hidden_states[-1][0, -1]

    embed = lambda ids: inner.model.embed_tokens(torch.tensor([ids]))  # noqa: E731
    sep = tok.token_to_id(",")
    fmt = {"system": encode("<|begin_of_text|>" + CORPUS[0] + "\n"), "frame_open": encode("\n["),
           "separator": sep, "reply_prompt": encode("]\nAssistant:"), "end": tok.token_to_id("<|eot_id|>")}

    def stream_for():
        s = Stream(step, embed, encode, fmt)
        s.decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
        return s

    with torch.no_grad():
        tune_separator(stream_for, inner.lm_head.base_layer.weight[sep], tokens)
        threshold, margin, result = decide(stream_for, tokens, CAPTION_TOKENS)
        prompt_ids = encode(PROMPT)
        logits, greedy = greedy_from(step, embed, prompt_ids, N_GREEDY)

    save_file({n: p.detach().contiguous() for n, p in base_params.items()},
              os.path.join(base_dir, "model.safetensors"))
    cfg.save_pretrained(base_dir)
    with open(os.path.join(base_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, f)
    model.save_pretrained(adapter_dir, save_embedding_layers=False)
    siglip.save_pretrained(vision_dir)
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        adapter_cfg = json.load(f)
    from safetensors import safe_open
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        adapter_keys = sorted(f.keys())

    convert("convert_videollm_online.py",
            {"argv": ["--base", base_dir, "--adapter", adapter_dir, "--vision", vision_dir]}, out)
    check = fmt_ids(lambda s: Tokenizer.from_file(os.path.join(out, "llm", "tokenizer.json"))
                    .encode(s, add_special_tokens=False).ids, os.path.join(out, "avlm.toml"))
    assert check == fmt, (check, fmt)
    write_outputs(out, rgb, tokens.numpy(), prompt_ids, logits.numpy(), greedy, threshold, margin, result, {
        "reference": f"PeftModel (LoRA r {adapter_cfg['r']}, alpha {adapter_cfg['lora_alpha']}, not merged), "
                     "SiglipVisionModel pooler_output + adaptive_avg_pool2d 3x3, connector; torch "
                     + torch.__version__,
        "adapter_keys": adapter_keys,
    })


def smolvlm(out, tmp):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3 import modeling_idefics3 as m

    torch.manual_seed(20240802)
    src = os.path.join(tmp, "smolvlm")
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                "<global-img>", "<image>"]
    tok = tiny_tokenizer(specials)
    vocab = tok.get_vocab_size()
    cfg = Idefics3Config(
        vision_config=dict(image_size=SIZE, patch_size=4, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=0),
        scale_factor=2, image_token_id=tok.token_to_id("<image>"), tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" not in n:
                p.normal_(0, 0.08)
    rgb = frames(2)
    px = pixels(rgb, [0.5] * 3, [0.5] * 3)

    def identity_positions(self, pixel_values, patch_attention_mask):
        x = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        return x + self.position_embedding(torch.arange(x.shape[1])[None])

    with torch.no_grad():
        shifted = model.model.get_image_features(px[:, None])
        original = m.Idefics3VisionEmbeddings.forward
        m.Idefics3VisionEmbeddings.forward = identity_positions
        try:
            tokens = model.model.get_image_features(px[:, None])
        finally:
            m.Idefics3VisionEmbeddings.forward = original
    shift_effect = float((tokens - shifted).abs().max())

    def step(x, cache):
        o = model(inputs_embeds=x, past_key_values=cache, use_cache=True, output_hidden_states=True)
        return o.logits[0, -1], o.hidden_states[-1][0, -1]

    embed = lambda ids: model.model.text_model.embed_tokens(torch.tensor([ids]))  # noqa: E731
    encode = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import convert_smolvlm as c
    sep = tok.token_to_id(c.SEPARATOR)
    fmt = {"system": encode(c.SYSTEM), "frame_open": encode(c.FRAME_OPEN), "separator": sep,
           "reply_prompt": encode(c.REPLY_PROMPT), "end": tok.token_to_id(c.END)}

    def stream_for():
        s = Stream(step, embed, encode, fmt)
        s.decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
        return s

    with torch.no_grad():
        tune_separator(stream_for, model.lm_head.weight[sep], tokens)
        threshold, margin, result = decide(stream_for, tokens, CAPTION_TOKENS)
        prompt_ids = encode(PROMPT)
        logits, greedy = greedy_from(step, embed, prompt_ids, N_GREEDY)

    model.save_pretrained(src)
    tok.save(os.path.join(src, "tokenizer.json"))
    with open(os.path.join(src, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}, f)
    convert("convert_smolvlm.py", {"argv": ["--model", src]}, out)
    check = fmt_ids(lambda s: Tokenizer.from_file(os.path.join(out, "llm", "tokenizer.json"))
                    .encode(s, add_special_tokens=False).ids, os.path.join(out, "avlm.toml"))
    assert check == fmt, (check, fmt)
    write_outputs(out, rgb, tokens.numpy(), prompt_ids, logits.numpy(), greedy, threshold, margin, result, {
        "reference": "Idefics3ForConditionalGeneration.get_image_features (identity vision position ids) "
                     "and its language model; torch " + torch.__version__,
        "shifted_position_ids_max_abs_effect": shift_effect,
    })


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "golden", "vision")
    with tempfile.TemporaryDirectory() as tmp:
        videollm_online(os.path.join(out, "tiny_videollm_online"), tmp)
        smolvlm(os.path.join(out, "tiny_smolvlm"), tmp)


if __name__ == "__main__":
    main()
