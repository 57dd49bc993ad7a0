"""AV-HuBERT's video path in PyTorch, as Llama-AVSR runs it: the reference that
tools/avsr/avhubert_onnx.py is checked against (tools/avsr/make_avhubert_golden.py).

Llama-AVSR loads a pre-trained AV-HuBERT (`large_vox_iter5.pt`) with fairseq and calls
`extract_finetune(source={'video': v, 'audio': None})[0]` (models/modeling_AVSRLLM.py,
`encode_video`), so the path is (av_hubert avhubert/hubert.py, resnet.py; fairseq
models/wav2vec/wav2vec2.py):

  video [N, 1, T, 88, 88]
  -> feature_extractor_video.resnet.frontend3D: Conv3d(1, 64, (5, 7, 7), stride (1, 2, 2),
     pad (2, 3, 3), no bias), BatchNorm3d, PReLU(64), MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
  -> every frame through the ResNet-18 trunk (BasicBlocks [2, 2, 2, 2] at 64/128/256/512; conv1,
     bn1, relu1, conv2, bn2, (+ downsample 1x1 conv + BN), relu2; PReLU when resnet_relu_type is
     'prelu', the AV-HuBERT default) and AdaptiveAvgPool2d(1) -> 512 per frame
  -> feature_extractor_video.proj Linear(512, D)
  -> audio features are zeros [N, D, T]; cat([audio, video], channel) -> 2D  (modality_fuse concat)
  -> layer_norm(2D) -> post_extract_proj Linear(2D, D)
  -> encoder: x + GELU(SamePad(pos_conv(x))) with pos_conv a weight-normed (dim=2) Conv1d(D, D,
     128, pad 64, groups 16) whose last output step is dropped; encoder.layer_norm here when
     layer_norm_first is false; the layers (post-LN or pre-LN); encoder.layer_norm at the end when
     layer_norm_first is true (extract_finetune passes no output_layer)
  -> features [N, T, D] at the video rate (25 Hz).

Dropouts are off (eval), BatchNorm uses its running statistics, all LayerNorms have eps 1e-5,
GELU is exact (erf). The optional LoRA is Llama-AVSR's on the video encoder (its vendored fairseq
`MultiheadAttention.forward_lora`): q += s * lora_up_Q(lora_down_Q(x)), v += s * lora_up_V(
lora_down_V(x)), before q is scaled; Llama-AVSR uses rank 64 and s = 2.

State-dict keys equal the released checkpoints' (`feature_extractor_video.resnet.*`,
`encoder.layers.N.*`, ...) less the keys video-only inference does not read: the audio front end
(`feature_extractor_audio.*`) and the pretraining heads (`mask_emb`, `final_proj.*`,
`label_embs_concat`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

BASE = {"encoder_embed_dim": 768, "encoder_layers": 12, "encoder_attention_heads": 12,
        "encoder_ffn_embed_dim": 3072, "layer_norm_first": True}
LARGE = {"encoder_embed_dim": 1024, "encoder_layers": 24, "encoder_attention_heads": 16,
         "encoder_ffn_embed_dim": 4096, "layer_norm_first": True}
DEFAULTS = {"conv_pos": 128, "conv_pos_groups": 16, "resnet_relu_type": "prelu"}


def full_config(cfg: dict) -> dict:
    """`cfg` with AV-HuBERT's defaults for the keys it leaves out."""
    out = dict(DEFAULTS)
    out.update(cfg)
    return out


def _act(kind: str, channels: int) -> nn.Module:
    if kind == "prelu":
        return nn.PReLU(num_parameters=channels)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"resnet_relu_type {kind!r} is not 'prelu' or 'relu'")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, relu_type: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = _act(relu_type, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = _act(relu_type, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu2(y + skip)


class Trunk(nn.Module):
    def __init__(self, relu_type: str):
        super().__init__()
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = nn.Sequential(BasicBlock(cin, w, stride, relu_type), BasicBlock(w, w, 1, relu_type))
            setattr(self, f"layer{i + 1}", blocks)
            cin = w

    def forward(self, x):
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class ResEncoder(nn.Module):
    def __init__(self, relu_type: str):
        super().__init__()
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, 64, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
            nn.BatchNorm3d(64),
            _act(relu_type, 64),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
        )
        self.trunk = Trunk(relu_type)

    def forward(self, x):
        """[N, 1, T, H, W] -> [N, T, 512]."""
        x = self.frontend3D(x)
        n, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(n * t, c, h, w)
        return self.trunk(x).view(n, t, -1)


class VideoFrontEnd(nn.Module):
    def __init__(self, dim: int, relu_type: str):
        super().__init__()
        self.resnet = ResEncoder(relu_type)
        self.proj = nn.Linear(512, dim)

    def forward(self, x):
        return self.proj(self.resnet(x))


class WeightNormConv1d(nn.Module):
    """A Conv1d whose weight is g * v / ||v||, the norm taken for each kernel tap (torch's
    weight_norm with dim=2, as fairseq applies it to pos_conv): parameters weight_g [1, 1, K],
    weight_v [C, C / groups, K], bias [C]."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.pad, self.groups = kernel // 2, groups
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * dim)))

    def forward(self, x):
        norm = self.weight_v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
        return F.conv1d(x, self.weight_g * self.weight_v / norm, self.bias, padding=self.pad, groups=self.groups)


class DropLastStep(nn.Module):
    """fairseq's SamePad for an even kernel: the padded convolution is one step too long."""

    def __init__(self, kernel: int):
        super().__init__()
        self.remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : x.shape[2] - self.remove]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, lora_rank: int | None, lora_scaling: float):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.lora_scaling = lora_scaling
        if lora_rank:
            self.lora_down_Q = nn.Linear(dim, lora_rank, bias=False)
            self.lora_up_Q = nn.Linear(lora_rank, dim, bias=False)
            self.lora_down_V = nn.Linear(dim, lora_rank, bias=False)
            self.lora_up_V = nn.Linear(lora_rank, dim, bias=False)

    def forward(self, x):
        n, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if hasattr(self, "lora_down_Q"):
            q = q + self.lora_up_Q(self.lora_down_Q(x)) * self.lora_scaling
            v = v + self.lora_up_V(self.lora_down_V(x)) * self.lora_scaling
        q = q * hd ** -0.5
        split = lambda y: y.view(n, t, self.heads, hd).transpose(1, 2)  # noqa: E731
        w = torch.softmax(split(q) @ split(k).transpose(2, 3), dim=-1)
        ctx = (w @ split(v)).transpose(1, 2).reshape(n, t, d)
        return self.out_proj(ctx)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, ffn = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"]
        self.pre_ln = cfg["layer_norm_first"]
        self.self_attn = SelfAttention(d, cfg["encoder_attention_heads"], cfg.get("lora_rank"),
                                       cfg.get("lora_scaling", 0.0))
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x):
        mlp = lambda h: self.fc2(F.gelu(self.fc1(h)))  # noqa: E731
        if self.pre_ln:
            x = x + self.self_attn(self.self_attn_layer_norm(x))
            return x + mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x + self.self_attn(x))
        return self.final_layer_norm(x + mlp(x))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, k = cfg["encoder_embed_dim"], cfg["conv_pos"]
        self.pre_ln = cfg["layer_norm_first"]
        self.pos_conv = nn.Sequential(WeightNormConv1d(d, k, cfg["conv_pos_groups"]), DropLastStep(k), nn.GELU())
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg["encoder_layers"]))
        self.layer_norm = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x):
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.pre_ln:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x) if self.pre_ln else x


class AVHubertVideo(nn.Module):
    """AV-HuBERT with video input only: [N, 1, T, 88, 88] -> [N, T, D]."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = full_config(cfg)
        d = cfg["encoder_embed_dim"]
        self.feature_extractor_video = VideoFrontEnd(d, cfg["resnet_relu_type"])
        self.layer_norm = nn.LayerNorm(2 * d, eps=1e-5)
        self.post_extract_proj = nn.Linear(2 * d, d)
        self.encoder = TransformerEncoder(cfg)

    def forward(self, video):
        v = self.feature_extractor_video(video)
        x = torch.cat([torch.zeros_like(v), v], dim=-1)
        return self.encoder(self.post_extract_proj(self.layer_norm(x)))
