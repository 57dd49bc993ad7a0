"""A SigLIP vision transformer as an ONNX graph, built from its weights with
numpy and `onnx` (no PyTorch), with the avlm vision contract:

  input  `pixel_values` float32 [N, 3, S, S]  already normalised
  output `patches`      float32 [N, G*G, D]   the post-layernorm hidden states
                                              (`last_hidden_state`), row-major
  output `pooled`       float32 [N, D]        the attention-pooling head's
                                              output (`pooler_output`), if asked

The graph follows transformers' `SiglipVisionTransformer` (the Idefics3 /
SmolVLM vision model is the same network without the head):
  patch embedding: Conv2d(3, D, P, stride P) -> [N, G*G, D] + position embedding
    (position i for patch i: Idefics3's bucketed ids are the identity on a
    full image; transformers 4.55-4.57 compute them shifted by one in float32,
    a regression fixed upstream, so the identity is what the checkpoints were
    trained with)
  each layer: x += out_proj(attention(layer_norm1(x))); x += fc2(act(fc1(layer_norm2(x))))
    (attention: q/k/v projections with bias, softmax(q k^T / sqrt(head_dim)) v)
  post_layernorm -> `patches`
  head: a learned probe attends over `patches` (nn.MultiheadAttention, packed
    in_proj), then x + mlp(layernorm(x)) -> `pooled`
Activations: gelu_pytorch_tanh (SigLIP's) or gelu (exact, erf).
"""

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


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

    def linear(self, x, name, w, b):
        y = self.op("MatMul", [x, self.const(name + ".wT", w.T.astype(np.float32))])
        return self.op("Add", [y, self.const(name + ".b", b.astype(np.float32))]) if b is not None else y

    def layer_norm(self, x, name, w, b, eps):
        return self.op("LayerNormalization", [x, self.const(name + ".w", w), self.const(name + ".b", b)],
                       axis=-1, epsilon=float(eps))

    def act(self, x, kind):
        if kind == "gelu_pytorch_tanh":
            c = self.const(f"gelu_c{self.count}", np.array(math.sqrt(2 / math.pi), np.float32))
            k = self.const(f"gelu_k{self.count}", np.array(0.044715, np.float32))
            half = self.const(f"gelu_h{self.count}", np.array(0.5, np.float32))
            one = self.const(f"gelu_o{self.count}", np.array(1.0, np.float32))
            cube = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Mul", [c, self.op("Add", [x, self.op("Mul", [k, cube])])])
            return self.op("Mul", [self.op("Mul", [half, x]), self.op("Add", [one, self.op("Tanh", [inner])])])
        if kind == "gelu":
            s = self.const(f"gelu_s{self.count}", np.array(1 / math.sqrt(2), np.float32))
            half = self.const(f"gelu_h{self.count}", np.array(0.5, np.float32))
            one = self.const(f"gelu_o{self.count}", np.array(1.0, np.float32))
            erf = self.op("Erf", [self.op("Mul", [x, s])])
            return self.op("Mul", [self.op("Mul", [half, x]), self.op("Add", [one, erf])])
        raise ValueError(f"activation {kind!r} is not supported (gelu_pytorch_tanh, gelu)")

    def shape(self, name, dims):
        return self.const(name, np.array(dims, np.int64))

    def attention(self, q, k, v, heads, hd, tag):
        """q [N|1, Lq, D], k/v [N, L, D] -> [N, Lq, D]."""
        split = self.shape(tag + ".split", [0, -1, heads, hd])
        qh = self.op("Transpose", [self.op("Reshape", [q, split])], perm=[0, 2, 1, 3])
        kt = self.op("Transpose", [self.op("Reshape", [k, split])], perm=[0, 2, 3, 1])
        vh = self.op("Transpose", [self.op("Reshape", [v, split])], perm=[0, 2, 1, 3])
        scale = self.const(tag + ".scale", np.array(hd ** -0.5, np.float32))
        scores = self.op("Mul", [self.op("MatMul", [qh, kt]), scale])
        ctx = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), vh])
        ctx = self.op("Transpose", [ctx], perm=[0, 2, 1, 3])
        return self.op("Reshape", [ctx, self.shape(tag + ".merge", [0, -1, heads * hd])])


def siglip_tensor_names(cfg, prefix, head):
    """Tensor names of the vision model under `prefix` (e.g. 'vision_model.')."""
    names = [prefix + n for n in (
        "embeddings.patch_embedding.weight", "embeddings.patch_embedding.bias",
        "embeddings.position_embedding.weight", "post_layernorm.weight", "post_layernorm.bias")]
    for i in range(cfg["num_hidden_layers"]):
        p = f"{prefix}encoder.layers.{i}."
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                  "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            names += [p + m + ".weight", p + m + ".bias"]
    if head:
        h = prefix + "head."
        names += [h + "probe", h + "attention.in_proj_weight", h + "attention.in_proj_bias",
                  h + "attention.out_proj.weight", h + "attention.out_proj.bias",
                  h + "layernorm.weight", h + "layernorm.bias",
                  h + "mlp.fc1.weight", h + "mlp.fc1.bias", h + "mlp.fc2.weight", h + "mlp.fc2.bias"]
    return names


def siglip_onnx(get, cfg, prefix, pooled):
    """The ONNX model of the vision tower whose tensors `get(name)` returns."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    size, patch = cfg["image_size"], cfg["patch_size"]
    grid, hd, eps = size // patch, d // heads, cfg.get("layer_norm_eps", 1e-6)
    act = cfg.get("hidden_act", "gelu_pytorch_tanh")
    g = _Graph()
    w = lambda n: get(prefix + n).astype(np.float32)  # noqa: E731

    x = g.op("Conv", ["pixel_values", g.const("patch.w", w("embeddings.patch_embedding.weight")),
                      g.const("patch.b", w("embeddings.patch_embedding.bias"))],
             kernel_shape=[patch, patch], strides=[patch, patch])
    x = g.op("Transpose", [g.op("Reshape", [x, g.shape("patch.flat", [0, d, -1])])], perm=[0, 2, 1])
    pos = w("embeddings.position_embedding.weight")
    if pos.shape != (grid * grid, d):
        raise ValueError(f"position embedding is {list(pos.shape)}, expected [{grid * grid}, {d}]")
    x = g.op("Add", [x, g.const("pos", pos)])

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layers.{i}."
        lin = lambda h, m: g.linear(h, f"l{i}.{m}", w(p + m + ".weight"), w(p + m + ".bias"))  # noqa: E731
        h = g.layer_norm(x, f"l{i}.ln1", w(p + "layer_norm1.weight"), w(p + "layer_norm1.bias"), eps)
        a = g.attention(lin(h, "self_attn.q_proj"), lin(h, "self_attn.k_proj"), lin(h, "self_attn.v_proj"),
                        heads, hd, f"l{i}.attn")
        x = g.op("Add", [x, lin(a, "self_attn.out_proj")])
        h = g.layer_norm(x, f"l{i}.ln2", w(p + "layer_norm2.weight"), w(p + "layer_norm2.bias"), eps)
        x = g.op("Add", [x, lin(g.act(lin(h, "mlp.fc1"), act), "mlp.fc2")])

    last = g.layer_norm(x, "post_ln", w("post_layernorm.weight"), w("post_layernorm.bias"), eps)
    g.nodes.append(helper.make_node("Identity", [last], ["patches"]))
    outputs = [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["batch", grid * grid, d])]

    if pooled:
        in_w, in_b = w("head.attention.in_proj_weight"), w("head.attention.in_proj_bias")
        # The probe's query does not depend on the image: computed here once.
        probe = w("head.probe").reshape(1, 1, d)
        q = probe @ in_w[:d].T + in_b[:d]
        k = g.linear(last, "head.k", in_w[d:2 * d], in_b[d:2 * d])
        v = g.linear(last, "head.v", in_w[2 * d:], in_b[2 * d:])
        a = g.attention(g.const("head.q", q.astype(np.float32)), k, v, heads, hd, "head.attn")
        r = g.linear(a, "head.out", w("head.attention.out_proj.weight"), w("head.attention.out_proj.bias"))
        h = g.layer_norm(r, "head.ln", w("head.layernorm.weight"), w("head.layernorm.bias"), eps)
        h = g.linear(h, "head.fc1", w("head.mlp.fc1.weight"), w("head.mlp.fc1.bias"))
        h = g.linear(g.act(h, act), "head.fc2", w("head.mlp.fc2.weight"), w("head.mlp.fc2.bias"))
        y = g.op("Add", [r, h])
        g.nodes.append(helper.make_node("Reshape", [y, g.shape("head.flat", [-1, d])], ["pooled"]))
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", d]))

    graph = helper.make_graph(
        g.nodes, "siglip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
        outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="avlm")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
