"""AV-HuBERT's video encoder (as Llama-AVSR runs it) as an ONNX graph, built from its weights
with numpy and `onnx` alone (no PyTorch), with the avlm lip-encoder contract:

  input  `video`    float32 [batch, 1, frames, 88, 88]  mouth crops, x/255, grayscale,
                                                        normalised (mean 0.421, std 0.165)
  output `features` float32 [batch, frames, D]          25 Hz, the encoder's last output

The network is the one tools/avsr/avhubert_torch.py spells out in PyTorch (its docstring lists
the reference files): 3D front end and ResNet-18 trunk per frame, `proj` to D, zeros for the
audio half, `layer_norm`, `post_extract_proj`, the convolutional position embedding, the
transformer (post-LN or pre-LN), `encoder.layer_norm`. BatchNorm is folded into the convolution
before it (eval mode), pos_conv's weight norm is resolved, and Llama-AVSR's optional LoRA on q and
v is merged into q_proj / v_proj.

For other Python code (e.g. a Llama-AVSR converter, with a checkpoint's `video_encoder.*`
tensors, prefix stripped):

    build_avhubert_onnx(tensors: dict[str, np.ndarray], config: dict, out_path) -> onnx.ModelProto

`config` holds AV-HuBERT's names: `encoder_attention_heads` and `layer_norm_first` are required
(the weights cannot tell them); `encoder_embed_dim`, `encoder_layers`, `encoder_ffn_embed_dim`
are read from the tensors and checked when given; `conv_pos` (128), `conv_pos_groups` (16),
`resnet_relu_type` ('prelu') default to AV-HuBERT's; `lora_scaling` (Llama-AVSR: 2.0) says the
tensors hold the encoder LoRA (`encoder.layers.N.self_attn.lora_{down,up}_{Q,V}.weight`, every
layer), and without it LoRA tensors are refused as unused. Released AV-HuBERT Base and Large are
pre-LN (`layer_norm_first: true` in every avhubert/conf/pretrain/*.yaml).

The tensors must be exactly the model's: a missing or an unused tensor is refused by name
(`ConversionError`). Ignored, because video-only inference does not read them: the audio front
end `feature_extractor_audio.*`, the pretraining heads `mask_emb`, `final_proj.*`,
`label_embs_concat`, and BatchNorm's `*.num_batches_tracked` counters.

Command line (WEIGHTS a .safetensors file of the encoder's tensors, unprefixed):

    .avlm/venv/bin/python tools/avsr/avhubert_onnx.py WEIGHTS OUT.onnx --config CONFIG.json
    .avlm/venv/bin/python tools/avsr/avhubert_onnx.py --random-seed 7 OUT.onnx --config CONFIG.json

The second form builds from `random_tensors(config, seed)`: a documented recipe on numpy's PCG64
(see there) that tools/avsr/make_avhubert_golden.py and the tests share, so the goldens need not
carry ResNet-18's 11M weights.
"""

import argparse
import hashlib
import json
import math
import os
import re
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vision"))
from hf_checkpoint import ConversionError, SafeTensors, check_names  # noqa: E402

OPSET = 17
SIZE = 88
EPS_BN = 1e-5
EPS_LN = 1e-5
WIDTHS = (64, 128, 256, 512)
IGNORED = (r"feature_extractor_audio\..*", r"mask_emb", r"final_proj\..*", r"label_embs_concat",
           r".*\.num_batches_tracked")
DEFAULTS = {"conv_pos": 128, "conv_pos_groups": 16, "resnet_relu_type": "prelu"}


def _bn(prefix):
    return [prefix + s for s in (".weight", ".bias", ".running_mean", ".running_var")]


def _blocks():
    """(name, in channels, out channels, stride) of the trunk's BasicBlocks."""
    out, cin = [], 64
    for i, w in enumerate(WIDTHS):
        for j in range(2):
            out.append((f"feature_extractor_video.resnet.trunk.layer{i + 1}.{j}", cin, w, 2 if i and not j else 1))
            cin = w
    return out


def tensor_shapes(cfg):
    """Every tensor the model reads, with its shape, for a full config (see `resolve_config`)."""
    d, ffn, k = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["conv_pos"]
    prelu = cfg["resnet_relu_type"] == "prelu"
    fe = "feature_extractor_video."
    s = {fe + "resnet.frontend3D.0.weight": (64, 1, 5, 7, 7)}
    s.update({n: (64,) for n in _bn(fe + "resnet.frontend3D.1")})
    if prelu:
        s[fe + "resnet.frontend3D.2.weight"] = (64,)
    for p, cin, cout, stride in _blocks():
        s[p + ".conv1.weight"] = (cout, cin, 3, 3)
        s[p + ".conv2.weight"] = (cout, cout, 3, 3)
        s.update({n: (cout,) for n in _bn(p + ".bn1") + _bn(p + ".bn2")})
        if prelu:
            s[p + ".relu1.weight"] = s[p + ".relu2.weight"] = (cout,)
        if stride != 1 or cin != cout:
            s[p + ".downsample.0.weight"] = (cout, cin, 1, 1)
            s.update({n: (cout,) for n in _bn(p + ".downsample.1")})
    s[fe + "proj.weight"], s[fe + "proj.bias"] = (d, 512), (d,)
    s["layer_norm.weight"] = s["layer_norm.bias"] = (2 * d,)
    s["post_extract_proj.weight"], s["post_extract_proj.bias"] = (d, 2 * d), (d,)
    s["encoder.pos_conv.0.weight_g"] = (1, 1, k)
    s["encoder.pos_conv.0.weight_v"] = (d, d // cfg["conv_pos_groups"], k)
    s["encoder.pos_conv.0.bias"] = (d,)
    s["encoder.layer_norm.weight"] = s["encoder.layer_norm.bias"] = (d,)
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        for m in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{m}.weight"], s[p + f"self_attn.{m}.bias"] = (d, d), (d,)
        for m in ("self_attn_layer_norm", "final_layer_norm"):
            s[p + m + ".weight"] = s[p + m + ".bias"] = (d,)
        s[p + "fc1.weight"], s[p + "fc1.bias"] = (ffn, d), (ffn,)
        s[p + "fc2.weight"], s[p + "fc2.bias"] = (d, ffn), (d,)
        if "lora_scaling" in cfg:
            r = cfg["lora_rank"]
            for m in ("Q", "V"):
                s[p + f"self_attn.lora_down_{m}.weight"] = (r, d)
                s[p + f"self_attn.lora_up_{m}.weight"] = (d, r)
    return s


def resolve_config(cfg, names=None, shape=None):
    """The full config: defaults filled in, and the sizes the tensors tell (when `names` and
    `shape(name)` are given) checked against those `cfg` states."""
    out = dict(DEFAULTS)
    out.update(cfg)
    for key in ("encoder_attention_heads", "layer_norm_first"):
        if key not in out:
            raise ConversionError(f"config: `{key}` is required (the weights cannot tell it)")
    if out["resnet_relu_type"] not in ("prelu", "relu"):
        raise ConversionError(f"config: resnet_relu_type {out['resnet_relu_type']!r} is not 'prelu' or 'relu'")
    if names is not None:
        told = {}
        if "feature_extractor_video.proj.weight" in names:
            told["encoder_embed_dim"] = shape("feature_extractor_video.proj.weight")[0]
        layers = {int(m.group(1)) for n in names if (m := re.match(r"encoder\.layers\.(\d+)\.", n))}
        told["encoder_layers"] = max(layers) + 1 if layers else 0
        if "encoder.layers.0.fc1.weight" in names:
            told["encoder_ffn_embed_dim"] = shape("encoder.layers.0.fc1.weight")[0]
        if "encoder.layers.0.self_attn.lora_down_Q.weight" in names and "lora_scaling" in out:
            told["lora_rank"] = shape("encoder.layers.0.self_attn.lora_down_Q.weight")[0]
        for key, value in told.items():
            if key in cfg and cfg[key] != value:
                raise ConversionError(f"config says {key} {cfg[key]}, the tensors say {value}")
            out[key] = value
    for key in ("encoder_embed_dim", "encoder_layers", "encoder_ffn_embed_dim"):
        if key not in out:
            raise ConversionError(f"config: `{key}` is not given and the tensors do not tell it")
    if "lora_scaling" in out and not out.get("lora_rank"):
        raise ConversionError("config has lora_scaling but no LoRA rank: neither `lora_rank` nor "
                              "the tensor encoder.layers.0.self_attn.lora_down_Q.weight")
    if "lora_rank" in out and "lora_scaling" not in out:
        raise ConversionError("config has lora_rank but no lora_scaling")
    d, heads = out["encoder_embed_dim"], out["encoder_attention_heads"]
    if d % heads or d % out["conv_pos_groups"]:
        raise ConversionError(f"width {d} is not a multiple of {heads} heads and {out['conv_pos_groups']} groups")
    return out


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, name, value):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type, inputs, **attrs):
        self.count += 1
        out = f"{op_type.lower()}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x, name, w, b, stride, pad, groups=1):
        nd = w.ndim - 2
        strides = list(stride) if isinstance(stride, tuple) else [stride] * nd
        pads = list(pad) * 2 if isinstance(pad, tuple) else [pad] * (2 * nd)
        return self.op("Conv", [x, self.const(name + ".w", w.astype(np.float32)),
                                self.const(name + ".b", b.astype(np.float32))],
                       kernel_shape=list(w.shape[2:]), strides=strides, pads=pads, group=groups)

    def linear(self, x, name, w, b):
        y = self.op("MatMul", [x, self.const(name + ".wT", np.ascontiguousarray(w.T, np.float32))])
        return self.op("Add", [y, self.const(name + ".b", b.astype(np.float32))])

    def layer_norm(self, x, name, w, b):
        return self.op("LayerNormalization", [x, self.const(name + ".w", w), self.const(name + ".b", b)],
                       axis=-1, epsilon=EPS_LN)

    def gelu(self, x):
        s = self.const(f"gelu_s{self.count}", np.array(1 / math.sqrt(2), np.float32))
        half = self.const(f"gelu_h{self.count}", np.array(0.5, np.float32))
        one = self.const(f"gelu_o{self.count}", np.array(1.0, np.float32))
        erf = self.op("Erf", [self.op("Mul", [x, s])])
        return self.op("Mul", [self.op("Mul", [half, x]), self.op("Add", [one, erf])])

    def shape(self, name, dims):
        return self.const(name, np.array(dims, np.int64))


def _fold_bn(w, get, bn):
    """Conv weight `w` (no bias) followed by eval-mode BatchNorm `bn` -> one conv's (w, b)."""
    scale = get(bn + ".weight") / np.sqrt(get(bn + ".running_var") + EPS_BN)
    shift = get(bn + ".bias") - get(bn + ".running_mean") * scale
    return w * scale.reshape((-1,) + (1,) * (w.ndim - 1)), shift


def _graph(get, cfg):
    g = _Graph()
    d, heads = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"]
    hd, prelu = d // heads, cfg["resnet_relu_type"] == "prelu"
    fe = "feature_extractor_video.resnet."

    def act(x, name, spatial):
        if not prelu:
            return g.op("Relu", [x])
        slope = get(name + ".weight").reshape((-1,) + (1,) * spatial)
        return g.op("PRelu", [x, g.const(name + ".slope", slope)])

    def conv_bn(x, conv, bn, stride, pad):
        w, b = _fold_bn(get(conv + ".weight"), get, bn)
        return g.conv(x, conv, w, b, stride, pad)

    x = conv_bn("video", fe + "frontend3D.0", fe + "frontend3D.1", (1, 2, 2), (2, 3, 3))
    x = act(x, fe + "frontend3D.2", 3)
    x = g.op("MaxPool", [x], kernel_shape=[1, 3, 3], strides=[1, 2, 2], pads=[0, 1, 1, 0, 1, 1])
    # every frame through the 2D trunk: [N, 64, T, h, w] -> [N * T, 64, h, w]
    side = SIZE // 4
    x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 1, 3, 4]), g.shape("frames.flat", [-1, 64, side, side])])
    for p, cin, cout, stride in _blocks():
        y = act(conv_bn(x, p + ".conv1", p + ".bn1", stride, 1), p + ".relu1", 2)
        y = conv_bn(y, p + ".conv2", p + ".bn2", 1, 1)
        skip = conv_bn(x, p + ".downsample.0", p + ".downsample.1", stride, 0) if (stride != 1 or cin != cout) else x
        x = act(g.op("Add", [y, skip]), p + ".relu2", 2)
    x = g.op("GlobalAveragePool", [x])
    batch_frames = g.op("Gather", [g.op("Shape", ["video"]), g.shape("batch_frames.idx", [0, 2])], axis=0)
    x = g.op("Reshape", [x, g.op("Concat", [batch_frames, g.shape("width512", [512])], axis=0)])
    v = g.linear(x, "video.proj", get("feature_extractor_video.proj.weight"), get("feature_extractor_video.proj.bias"))

    # the absent audio branch: zeros first, then the video features (modality_fuse 'concat')
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    zeros = g.op("ConstantOfShape", [g.op("Shape", [v])], value=zero)
    x = g.op("Concat", [zeros, v], axis=-1)
    x = g.layer_norm(x, "layer_norm", get("layer_norm.weight"), get("layer_norm.bias"))
    x = g.linear(x, "post_extract_proj", get("post_extract_proj.weight"), get("post_extract_proj.bias"))

    wv, wg = get("encoder.pos_conv.0.weight_v"), get("encoder.pos_conv.0.weight_g")
    w = wg * wv / np.sqrt((wv.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True)).astype(np.float32)
    k = cfg["conv_pos"]
    c = g.conv(g.op("Transpose", [x], perm=[0, 2, 1]), "pos_conv", w, get("encoder.pos_conv.0.bias"), 1, k // 2,
               groups=cfg["conv_pos_groups"])
    if k % 2 == 0:  # fairseq's SamePad: an even kernel makes one step too many
        c = g.op("Slice", [c, g.shape("same_pad.start", [0]), g.shape("same_pad.end", [-1]),
                           g.shape("same_pad.axis", [2])])
    x = g.op("Add", [x, g.op("Transpose", [g.gelu(c)], perm=[0, 2, 1])])

    pre_ln = bool(cfg["layer_norm_first"])
    final_ln = lambda h: g.layer_norm(h, "encoder.layer_norm", get("encoder.layer_norm.weight"),  # noqa: E731
                                      get("encoder.layer_norm.bias"))
    if not pre_ln:
        x = final_ln(x)
    if cfg["encoder_layers"]:
        split = g.shape("attn.split", [0, -1, heads, hd])
        merge = g.shape("attn.merge", [0, -1, d])
        scale = g.const("attn.scale", np.array(hd ** -0.5, np.float32))
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        wq, wk, wvv = (get(p + f"self_attn.{m}_proj.weight") for m in "qkv")
        if "lora_scaling" in cfg:
            s = np.float32(cfg["lora_scaling"])
            wq = wq + s * (get(p + "self_attn.lora_up_Q.weight") @ get(p + "self_attn.lora_down_Q.weight"))
            wvv = wvv + s * (get(p + "self_attn.lora_up_V.weight") @ get(p + "self_attn.lora_down_V.weight"))

        def attention(h):
            q = g.linear(h, f"l{i}.q", wq, get(p + "self_attn.q_proj.bias"))
            kk = g.linear(h, f"l{i}.k", wk, get(p + "self_attn.k_proj.bias"))
            vv = g.linear(h, f"l{i}.v", wvv, get(p + "self_attn.v_proj.bias"))
            qh = g.op("Transpose", [g.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
            kt = g.op("Transpose", [g.op("Reshape", [kk, split])], perm=[0, 2, 3, 1])
            vh = g.op("Transpose", [g.op("Reshape", [vv, split])], perm=[0, 2, 1, 3])
            scores = g.op("MatMul", [g.op("Mul", [qh, scale]), kt])
            ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])
            ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge])
            return g.linear(ctx, f"l{i}.out", get(p + "self_attn.out_proj.weight"), get(p + "self_attn.out_proj.bias"))

        def mlp(h):
            h = g.gelu(g.linear(h, f"l{i}.fc1", get(p + "fc1.weight"), get(p + "fc1.bias")))
            return g.linear(h, f"l{i}.fc2", get(p + "fc2.weight"), get(p + "fc2.bias"))

        ln = lambda h, m: g.layer_norm(h, f"l{i}.{m}", get(p + m + ".weight"), get(p + m + ".bias"))  # noqa: E731
        if pre_ln:
            x = g.op("Add", [x, attention(ln(x, "self_attn_layer_norm"))])
            x = g.op("Add", [x, mlp(ln(x, "final_layer_norm"))])
        else:
            x = ln(g.op("Add", [x, attention(x)]), "self_attn_layer_norm")
            x = ln(g.op("Add", [x, mlp(x)]), "final_layer_norm")
    if pre_ln:
        x = final_ln(x)
    g.nodes.append(helper.make_node("Identity", [x], ["features"]))

    graph = helper.make_graph(
        g.nodes, "avhubert_video",
        [helper.make_tensor_value_info("video", TensorProto.FLOAT, ["batch", 1, "frames", SIZE, SIZE])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", d])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="avlm")
    model.ir_version = 8
    return model


def check_tensors(names, shape, config):
    """The full config for tensors `names` (shapes from `shape(name)`), refusing any missing,
    unused or misshapen tensor by name."""
    cfg = resolve_config(config, names, shape)
    expected = tensor_shapes(cfg)
    check_names("the AV-HuBERT video encoder's tensors", names, expected, IGNORED)
    bad = [f"{n} {list(shape(n))} (expected {list(s)})" for n, s in expected.items() if tuple(shape(n)) != s]
    if bad:
        raise ConversionError("tensors of the wrong shape: " + ", ".join(bad))
    return cfg


def build_avhubert_onnx(tensors, config, out_path=None):
    """The ONNX model of the encoder whose tensors are `tensors` (name -> array), written to
    `out_path` when given. Raises ConversionError naming missing, unused or misshapen tensors."""
    cfg = check_tensors(set(tensors), lambda n: np.shape(tensors[n]), config)
    model = _graph(lambda n: np.asarray(tensors[n], dtype=np.float32), cfg)
    if out_path is not None:
        save(model, out_path)
    return model


def save(model, out_path):
    # the checker and a single protobuf file both stop at 2 GB; AV-HuBERT Large is 1.3 GB
    onnx.checker.check_model(model)
    onnx.save_model(model, out_path)


# --- random weights from a seed, shared by the golden maker, the tests and the bench ----------

def _uniform(seed, name, shape, lo, hi):
    """PCG64 seeded with SeedSequence([seed, crc32(name)]): its raw 64-bit outputs r give
    u = (r >> 11) * 2**-53 in [0, 1) (float64), then lo + (hi - lo) * u, rounded to float32."""
    bits = np.random.PCG64(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))
    u = (bits.random_raw(int(np.prod(shape, dtype=np.int64))) >> np.uint64(11)) * (2.0 ** -53)
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def _range(name, shape):
    """The uniform range of a random tensor: weights scaled by fan-in (He-like for convolutions,
    so activations keep their size through the trunk), norms near 1, small biases and shifts."""
    last = name.rsplit(".", 1)[-1]
    if last == "running_var":
        return 0.5, 2.0
    if last in ("bias", "running_mean"):
        return -0.1, 0.1
    if last == "weight_g":
        return 0.5, 1.5
    if len(shape) == 1:  # BatchNorm / LayerNorm scale, PReLU slope
        return (0.1, 0.4) if re.search(r"relu|frontend3D\.2", name) else (0.7, 1.3)
    fan_in = int(np.prod(shape[1:]))
    a = math.sqrt((6.0 if len(shape) > 2 else 3.0) / fan_in)
    return -a, a


def random_tensors(config, seed):
    """Random tensors for every name `config` (a full config: all sizes given) needs."""
    cfg = resolve_config(config)
    return {n: _uniform(seed, n, s, *_range(n, s)) for n, s in sorted(tensor_shapes(cfg).items())}


def digest(tensors):
    """sha256 over the tensors in name order (float32, little-endian): the golden records it, so
    a change in numpy's random stream is told apart from a change in the graph."""
    h = hashlib.sha256()
    for n in sorted(tensors):
        h.update(n.encode())
        h.update(np.ascontiguousarray(tensors[n], "<f4").tobytes())
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="WEIGHTS OUT.onnx",
                   help="the encoder's .safetensors and the ONNX file to write (OUT.onnx alone with --random-seed)")
    p.add_argument("--config", required=True, help="JSON with AV-HuBERT's config names (see the module docs)")
    p.add_argument("--random-seed", type=int, help="build from random_tensors(config, seed) instead of WEIGHTS")
    args = p.parse_args()
    with open(args.config) as f:
        config = json.load(f)
    try:
        if args.random_seed is not None:
            if len(args.paths) != 1:
                p.error("with --random-seed give only OUT.onnx")
            tensors, out = random_tensors(config, args.random_seed), args.paths[0]
        else:
            if len(args.paths) != 2:
                p.error("give WEIGHTS and OUT.onnx")
            st = SafeTensors(args.paths[0])
            tensors, out = {n: st.get(n) for n in st.names()}, args.paths[1]
        build_avhubert_onnx(tensors, config, out)
    except ConversionError as e:
        sys.exit(f"avhubert_onnx: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
