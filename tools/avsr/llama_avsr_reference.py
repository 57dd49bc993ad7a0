"""Llama-AVSR's inference chain in PyTorch, as umbertocappellazzo/Llama-AVSR runs it (the reference
the avlm bundles from convert_llama_avsr.py are checked against). Needs torch and transformers
(/work/.trainvenv); reads only local files.

What it re-states, and where the reference does it:

* video (datamodule/av_dataset.py, transforms.py): 96x96 RGB mouth crops at 25 fps, x / 255,
  CenterCrop(88), Grayscale (torchvision: 0.2989 R + 0.587 G + 0.114 B), Normalize(0.421, 0.165);
  the frames cut to a multiple of the video k before the encoder; AV-HuBERT's
  `extract_finetune(video, audio=None)` (tools/avsr/avhubert_torch.py); k frames stacked.
* audio (av_dataset.py, transforms.py, models/modeling_AVSRLLM.py `encode_audio`): 16 kHz samples
  (torchaudio's x / 32768); for audio+video first cut or zero-padded to video_frames * 640; then
  F.layer_norm over the whole waveform (eps 1e-8); WhisperFeatureExtractor (padded to 30 s);
  transformers' WhisperEncoder; the first max(int(samples / 16000 * 50), 25) frames kept (that
  float expression, not samples // 320); k frames stacked, a partial group dropped.
* projectors: nn.Sequential(Linear, ReLU, Linear[, LayerNorm]).
* the prompt (prepare_inputs, is_trainval False): the BOS embedding, then <audio> A </audio>, then
  <video> V </video>, then the prompt's ids from tokenizer(prompt).input_ids[:, 1:-1] (the tokenizer
  made as models/lightning.py makes it: a BOS $A EOS post-processor and the 5 added tokens).
* the LLM: transformers' LlamaForCausalLM with models/Llama_LoRA.py's LoRA applied, not merged:
  q_proj(x) + s * up_Q(down_Q(x)) and v_proj(x) + s * up_V(down_V(x)) before RoPE, s = alpha /
  reduction_lora.

Deliberate differences from the reference: float32 throughout (the reference runs Lightning's
bf16-true), and greedy decoding for a fixed number of steps (the reference calls generate with
15 beams and the base model's generation_config, which samples).
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from avhubert_torch import AVHubertVideo  # noqa: E402

ADDED = ["<pad>", "<audio>", "</audio>", "<video>", "</video>"]
PROMPTS = {"audio": "Transcribe speech to text.", "video": "Transcribe video to text.",
           "audiovisual": "Transcribe speech and video to text."}
RATE_RATIO = 640  # audio samples per video frame (16 kHz / 25 fps)
AVHUBERT_IGNORED = (r"feature_extractor_audio\..*", r"mask_emb", r"final_proj\..*", r"label_embs_concat")


class LoraLinear(nn.Module):
    """A frozen projection plus Llama_LoRA.py's low-rank update, kept apart."""

    def __init__(self, base: nn.Linear, down: torch.Tensor, up: torch.Tensor, scale: float):
        super().__init__()
        self.base = base
        self.down = nn.Linear(down.shape[1], down.shape[0], bias=False)
        self.up = nn.Linear(up.shape[1], up.shape[0], bias=False)
        with torch.no_grad():
            self.down.weight.copy_(down)
            self.up.weight.copy_(up)
        self.scale = scale

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * self.scale


def _sub(state, prefix):
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _mlp(state, prefix):
    sub = _sub(state, prefix)
    layers = [nn.Linear(sub["0.weight"].shape[1], sub["0.weight"].shape[0]), nn.ReLU(),
              nn.Linear(sub["2.weight"].shape[1], sub["2.weight"].shape[0])]
    if "3.weight" in sub:
        layers.append(nn.LayerNorm(sub["3.weight"].shape[0]))
    m = nn.Sequential(*layers)
    m.load_state_dict(sub, strict=True)
    return m.float().eval()


def make_tokenizer(llm_base):
    """The tokenizer as models/lightning.py builds it for Llama 3."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_base, add_bos_token=True, add_eos_token=True, local_files_only=True)
    bos, eos = tok.bos_token, tok.eos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 {bos}:1 $B:1 {eos}:1",
        special_tokens=[(bos, tok.bos_token_id), (eos, tok.eos_token_id)])
    tok.add_special_tokens({"pad_token": ADDED[0], "additional_special_tokens": ADDED[1:]})
    return tok


class LlamaAvsr:
    """The model of a Llama-AVSR state dict (keys as in the released .pth, float tensors)."""

    def __init__(self, state, llm_base, lora_alpha=8.0, lora_reduction=64, whisper_heads=None,
                 avhubert_config=None):
        from transformers import LlamaConfig, LlamaForCausalLM

        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        self.tokenizer = make_tokenizer(llm_base)
        tok = self.tokenizer
        import json
        with open(os.path.join(llm_base, "config.json")) as f:
            cfg = json.load(f)
        cfg["vocab_size"] = state["llm.model.embed_tokens.weight"].shape[0]
        if cfg["vocab_size"] != len(tok):
            raise SystemExit(f"embedding rows {cfg['vocab_size']} != len(tokenizer) {len(tok)}")
        config = LlamaConfig(**cfg)
        config.pad_token_id = tok.convert_tokens_to_ids("<pad>")
        self.llm = LlamaForCausalLM._from_config(config, attn_implementation="eager", dtype=torch.float32)
        llm_state = {k: v for k, v in _sub(state, "llm").items()
                     if ".lora_" not in k and "rotary_emb.inv_freq" not in k}
        self.llm.load_state_dict(llm_state, strict=True)
        scale = lora_alpha / lora_reduction
        for i, layer in enumerate(self.llm.model.layers):
            p = f"llm.model.layers.{i}.self_attn."
            attn = layer.self_attn
            attn.q_proj = LoraLinear(attn.q_proj, state[p + "lora_down_Q.weight"], state[p + "lora_up_Q.weight"], scale)
            attn.v_proj = LoraLinear(attn.v_proj, state[p + "lora_down_V.weight"], state[p + "lora_up_V.weight"], scale)
        self.llm.eval()

        self.audio_encoder = self.audio_proj = None
        if any(k.startswith("audio_proj.") for k in state):
            from transformers import WhisperConfig, WhisperFeatureExtractor
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            sub = _sub(state, "audio_encoder")
            d, n_mels, _ = sub["conv1.weight"].shape
            layers = 1 + max(int(m.group(1)) for k in sub if (m := re.match(r"layers\.(\d+)\.", k)))
            wcfg = WhisperConfig(d_model=d, encoder_layers=layers, encoder_attention_heads=whisper_heads or d // 64,
                                 encoder_ffn_dim=sub["layers.0.fc1.weight"].shape[0], num_mel_bins=n_mels,
                                 max_source_positions=sub["embed_positions.weight"].shape[0])
            self.audio_encoder = WhisperEncoder(wcfg).float().eval()
            self.audio_encoder.load_state_dict(sub, strict=True)
            self.audio_frontend = WhisperFeatureExtractor(feature_size=n_mels)
            self.audio_proj = _mlp(state, "audio_proj")
            self.k_audio = self.audio_proj[0].in_features // d

        self.video_encoder = self.video_proj = None
        if any(k.startswith("video_proj.") for k in state):
            sub = {k: v for k, v in _sub(state, "video_encoder").items()
                   if not any(re.fullmatch(p, k) for p in AVHUBERT_IGNORED)}
            d = sub["post_extract_proj.weight"].shape[0]
            vcfg = {"encoder_embed_dim": d, "encoder_layers": 1 + max(
                int(m.group(1)) for k in sub if (m := re.match(r"encoder\.layers\.(\d+)\.", k))),
                "encoder_ffn_embed_dim": sub["encoder.layers.0.fc1.weight"].shape[0],
                "encoder_attention_heads": d // 64, "layer_norm_first": True}
            if "encoder.layers.0.self_attn.lora_down_Q.weight" in sub:
                vcfg.update(lora_rank=sub["encoder.layers.0.self_attn.lora_down_Q.weight"].shape[0], lora_scaling=2.0)
            vcfg.update(avhubert_config or {})
            self.video_encoder = AVHubertVideo(vcfg).eval()
            own = self.video_encoder.state_dict()
            for k, v in own.items():  # BatchNorm counters: absent from some state dicts, never read
                if k.endswith("num_batches_tracked"):
                    sub.setdefault(k, v)
            self.video_encoder.load_state_dict(sub, strict=True)
            self.video_proj = _mlp(state, "video_proj")
            self.k_video = self.video_proj[0].in_features // d

    # --- inputs ---------------------------------------------------------------------------------

    @staticmethod
    def video_transform(crops):
        """uint8 [T, 96, 96, 3] RGB -> float32 [T, 1, 88, 88] (the test-time VideoTransform)."""
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2) / 255.0
        h, w = x.shape[-2:]
        top, left = int(round((h - 88) / 2.0)), int(round((w - 88) / 2.0))
        x = x[:, :, top:top + 88, left:left + 88]
        r, g, b = x.unbind(dim=-3)
        x = (0.2989 * r + 0.587 * g + 0.114 * b).to(x.dtype).unsqueeze(-3)
        return (x - 0.421) / 0.165

    @staticmethod
    def cut_or_pad(samples, size):
        if len(samples) >= size:
            return samples[:size]
        return np.concatenate([samples, np.zeros(size - len(samples), samples.dtype)])

    # --- encoders -------------------------------------------------------------------------------

    @staticmethod
    def stack(x, k, drop_rest):
        """[1, T, D] -> [1, T // k, k * D]; encode_video's version has no rest to drop (the frames
        were cut before the encoder), encode_audio's drops it."""
        t = x.shape[1]
        if t % k and not drop_rest:
            raise ValueError("video frames not a multiple of k")
        t = t // k * k
        return x[:, :t].reshape(x.shape[0], t // k, k * x.shape[2])

    @torch.no_grad()
    def audio_features(self, samples):
        """float32 samples in [-1, 1] -> (Whisper features kept [1, T, D], projected [1, T / k, H])."""
        x = torch.from_numpy(samples.astype(np.float32)).unsqueeze(-1)
        x = F.layer_norm(x, x.shape, eps=1e-8)
        mel = self.audio_frontend(x.numpy().squeeze(-1)[None], return_tensors="pt",
                                  sampling_rate=16000).input_features
        enc = self.audio_encoder(mel.float()).last_hidden_state
        keep = max(int(len(samples) / 16000 * 50), 25)
        enc = enc[:, :keep]
        return enc, self.audio_proj(self.stack(enc, self.k_audio, drop_rest=True))

    @torch.no_grad()
    def video_features(self, crops):
        """uint8 [T, 96, 96, 3] -> (AV-HuBERT features [1, T', D], projected [1, T' / k, H])."""
        v = self.video_transform(crops)
        v = v[: v.shape[0] // self.k_video * self.k_video]
        enc = self.video_encoder(v.permute(1, 0, 2, 3).unsqueeze(0))  # [1, 1, T, 88, 88]
        return enc, self.video_proj(self.stack(enc, self.k_video, drop_rest=False))

    # --- the LLM --------------------------------------------------------------------------------

    def token_id(self, token):
        return self.tokenizer.convert_tokens_to_ids(token)

    @torch.no_grad()
    def inputs(self, modality, samples=None, crops=None):
        """(inputs_embeds [1, L, H], layout: the ids with -1 for an audio row and -2 for a video row,
        and the encoder outputs). modality: audio | video | audiovisual."""
        embed = self.llm.model.embed_tokens
        ids = lambda seq: torch.tensor([seq])  # noqa: E731
        prompt = self.tokenizer(PROMPTS[modality], return_tensors="pt").input_ids[:, 1:-1]
        bos = self.tokenizer.bos_token_id
        pieces, layout, extra = [embed(ids([bos]))], [bos], {}
        if modality in ("audio", "audiovisual"):
            if modality == "audiovisual":
                samples = self.cut_or_pad(samples, len(crops) * RATE_RATIO)
            enc, a = self.audio_features(samples)
            extra["audio_features"], extra["audio_embeddings"] = enc, a
            pieces += [embed(ids([self.token_id("<audio>")])), a, embed(ids([self.token_id("</audio>")]))]
            layout += [self.token_id("<audio>")] + [-1] * a.shape[1] + [self.token_id("</audio>")]
        if modality in ("video", "audiovisual"):
            enc, v = self.video_features(crops)
            extra["video_features"], extra["video_embeddings"] = enc, v
            pieces += [embed(ids([self.token_id("<video>")])), v, embed(ids([self.token_id("</video>")]))]
            layout += [self.token_id("<video>")] + [-2] * v.shape[1] + [self.token_id("</video>")]
        pieces.append(embed(prompt))
        layout += prompt[0].tolist()
        return torch.cat(pieces, dim=1), layout, extra

    @torch.no_grad()
    def greedy(self, embeds, steps):
        """`steps` argmax tokens (no stopping), the first step's logits, and each step's margin
        between the best and the second-best logit."""
        out = self.llm(inputs_embeds=embeds, use_cache=True)
        first = out.logits[0, -1].clone()
        tokens, margins, logits = [], [], first
        for _ in range(steps):
            top = torch.topk(logits, 2)
            tokens.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            out = self.llm(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values,
                           use_cache=True)
            logits = out.logits[0, -1]
        return tokens, first, margins


def load_state(path):
    """A released-layout state dict (.pth, or a Lightning .ckpt's `state_dict` with `model.`)."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in obj:
        obj = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    return obj
