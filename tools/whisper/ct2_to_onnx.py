#!/usr/bin/env python3
"""Convert the encoder of a CTranslate2 Whisper model to ONNX.

    ct2_to_onnx.py MODEL_DIR OUT.onnx [--dtype float32|float16]

MODEL_DIR is a CTranslate2 Whisper directory (model.bin; config.json is not
needed for the encoder). Only numpy and `onnx` are required: this runs in the
set-up path, where PyTorch and ctranslate2 are not available.

ONNX contract (shared with hf_to_onnx.py):
  input  `mel`      float32 [batch, n_mels, frames]   frames even, 2..3000
  output `features` float32 [batch, frames/2, d_model]

The frame axis is dynamic and the positional table is sliced to frames/2 rows,
so a 4 s window costs a 4 s window instead of Whisper's fixed 30 s.

The graph reproduces CTranslate2's WhisperEncoder (src/layers/whisper.cc):
conv1(k3,p1)+GELU, conv2(k3,s2,p1)+GELU, transpose, + position_encodings[:T],
pre-norm transformer layers (fused QKV projection, queries scaled by
1/sqrt(head_dim) after the bias, softmax attention without mask, GELU MLP,
residuals), final LayerNorm. GELU is the exact erf form, LayerNorm eps 1e-5.

model.bin layout (little endian; see ctranslate2/specs/model_spec.py
`_serialize` and src/models/model.cc `Model::load`):
  u32 binary_version (>= 4 handled here; current converters write 6)
  str spec_name ("WhisperSpec"), u32 spec_revision      (binary_version >= 2)
  u32 num_variables, then per variable:
      str name, u8 rank, u32 dims[rank], u8 dtype, u32 num_bytes, data
      dtype: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
  u32 num_aliases, then per alias: str alias, str target  (binary_version >= 3)
  str = u16 length (including the trailing NUL) + bytes + NUL
Quantized weights `X` (int8/int16) come with `X_scale`; CTranslate2 stores
round(w * scale), so w = q / scale (per output row for int8, scalar for int16).
"""

import argparse
import os
import re
import struct
import sys
import time

import numpy as np

# Order of ctranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: "bfloat16",  # no numpy dtype; widened by hand in _to_float32
}
_DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}

OPSET = 17  # LayerNormalization is opset 17; keep the floor low for older ORT builds.
LN_EPS = 1e-5  # CTranslate2 LayerNorm default, same as torch.nn.LayerNorm in Whisper.
# Above this, the protobuf 2 GiB limit forces external data (large-v3 encoder in f32).
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


class Ct2Model:
    """Index of a CTranslate2 model.bin; variables are read on demand so the
    decoder (most of the file for large vocabularies) is never materialised."""

    def __init__(self, path):
        self.path = path
        self.entries = {}  # name -> (offset, shape, dtype_id, num_bytes)
        self.aliases = {}
        with open(path, "rb") as f:
            self.binary_version = self._u32(f)
            if self.binary_version < 4:
                # Older files store an item size instead of a dtype id; no
                # Whisper conversion ever used them.
                raise ValueError(f"{path}: binary version {self.binary_version} < 4 is not supported")
            self.spec_name = self._str(f)
            self.spec_revision = self._u32(f)
            for _ in range(self._u32(f)):
                name = self._str(f)
                (rank,) = struct.unpack("<B", f.read(1))
                shape = struct.unpack(f"<{rank}I", f.read(4 * rank))
                dtype_id, num_bytes = struct.unpack("<BI", f.read(5))
                if dtype_id not in _CT2_DTYPES:
                    raise ValueError(f"{name}: unknown dtype id {dtype_id}")
                self.entries[name] = (f.tell(), shape, dtype_id, num_bytes)
                f.seek(num_bytes, os.SEEK_CUR)
            alias_count_raw = f.read(4)
            if len(alias_count_raw) == 4:
                for _ in range(struct.unpack("<I", alias_count_raw)[0]):
                    alias = self._str(f)
                    self.aliases[alias] = self._str(f)
            if f.read(1):
                raise ValueError(f"{path}: trailing bytes after the alias table; unknown format")

    @staticmethod
    def _u32(f):
        return struct.unpack("<I", f.read(4))[0]

    @staticmethod
    def _str(f):
        (n,) = struct.unpack("<H", f.read(2))
        return f.read(n)[:-1].decode("utf-8")

    def _resolve(self, name):
        if name in self.entries:
            return name
        if name in self.aliases:
            return self._resolve(self.aliases[name])
        # The C++ loader also aliases the scale of an aliased weight.
        if name.endswith("_scale") and name[: -len("_scale")] in self.aliases:
            return self._resolve(self.aliases[name[: -len("_scale")]] + "_scale")
        return None

    def has(self, name):
        return self._resolve(name) is not None

    def dtype_name(self, name):
        return _DTYPE_NAMES[self.entries[self._resolve(name)][2]]

    def raw(self, name):
        key = self._resolve(name)
        if key is None:
            raise KeyError(f"variable {name!r} not found in {self.path}")
        offset, shape, dtype_id, num_bytes = self.entries[key]
        with open(self.path, "rb") as f:
            f.seek(offset)
            buf = f.read(num_bytes)
        if len(buf) != num_bytes:
            raise ValueError(f"{name}: truncated data")
        dt = np.dtype("<u2") if dtype_id == 5 else _CT2_DTYPES[dtype_id]
        return np.frombuffer(buf, dtype=dt).reshape(shape), dtype_id

    def scalar(self, name, default):
        if not self.has(name):
            return default
        return self.raw(name)[0].item()

    def float32(self, name):
        """Variable as float32, dequantized the way CTranslate2 does when it
        loads a quantized model with a float compute type."""
        arr, dtype_id = self.raw(name)
        if self.has(name + "_zero"):
            raise ValueError(f"{name}: AWQ/GPTQ weights (with zero points) are not supported")
        if dtype_id == 5:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif dtype_id in (1, 2):
            scale = self.float32(name + "_scale")
            if dtype_id == 1:  # per output row (conv weights: per output channel)
                scale = scale.reshape((-1,) + (1,) * (arr.ndim - 1))
            arr = arr.astype(np.float32) / scale
        return np.ascontiguousarray(arr, dtype=np.float32)


class GraphBuilder:
    def __init__(self, weight_dtype):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.weight_dtype = weight_dtype
        self.nodes, self.inits = [], []
        self._n = 0

    def _name(self, hint):
        self._n += 1
        return f"{hint}_{self._n}"

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self._name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out + "_node", **attrs))
        return out

    def op_multi(self, op_type, inputs, n_out, hint, **attrs):
        outs = [self._name(f"{hint}{i}") for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=outs[0] + "_node", **attrs))
        return outs

    def const(self, name, arr):
        self.inits.append(self.numpy_helper.from_array(np.asarray(arr), name))
        return name

    def weight(self, name, arr):
        """Float weight. Matrices go f16 + Cast in float16 mode so the file
        halves while arithmetic stays f32 (ORT folds the Cast at load time).
        Vectors stay f32: they are tiny and LayerNorm/bias precision matters."""
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if self.weight_dtype == "float16" and arr.ndim >= 2:
            self.const(name + "_f16", arr.astype(np.float16))
            out = name
            self.nodes.append(self.helper.make_node("Cast", [name + "_f16"], [out], name=out + "_cast",
                                                    to=self.TensorProto.FLOAT))
            return out
        return self.const(name, arr)

    def gelu(self, x):
        # Exact erf GELU, written the way torch exports it so ORT fuses it.
        t = self.op("Div", [x, "c_sqrt2"], "gelu_div")
        t = self.op("Erf", [t], "gelu_erf")
        t = self.op("Add", [t, "c_one"], "gelu_add")
        t = self.op("Mul", [x, t], "gelu_mul")
        return self.op("Mul", [t, "c_half"], "gelu")

    def linear(self, x, w_name, b_name):
        y = self.op("MatMul", [x, w_name], "matmul")
        return self.op("Add", [y, b_name], "linear") if b_name else y

    def layer_norm(self, x, prefix):
        return self.op("LayerNormalization", [x, prefix + "/gamma", prefix + "/beta"], "ln",
                       axis=-1, epsilon=LN_EPS)


def build_encoder(model, weight_dtype):
    from onnx import TensorProto, helper

    enc = "encoder"
    conv1_w = model.float32(f"{enc}/conv1/weight")
    d_model, n_mels, k1 = conv1_w.shape
    if k1 != 3:
        raise ValueError(f"conv1 kernel {k1} != 3: not a Whisper encoder")
    num_heads = int(model.scalar(f"{enc}/num_heads", 8))  # C++ default is 8 as well
    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} not divisible by num_heads {num_heads}")
    head_dim = d_model // num_heads
    layer_ids = sorted({int(m.group(1)) for n in model.entries
                        if (m := re.match(rf"{enc}/layer_(\d+)/", n))})
    if layer_ids != list(range(len(layer_ids))):
        raise ValueError(f"non-contiguous encoder layers: {layer_ids}")
    num_layers = len(layer_ids)
    if not model.has(f"{enc}/position_encodings/encodings"):
        # CTranslate2 would synthesise its own sinusoids, which differ from
        # Whisper's; every Whisper conversion stores the table, so refuse.
        raise ValueError("encoder/position_encodings/encodings missing")
    pos = model.float32(f"{enc}/position_encodings/encodings")
    max_frames = 2 * pos.shape[0]

    g = GraphBuilder(weight_dtype)
    g.const("c_sqrt2", np.array(np.sqrt(2.0), dtype=np.float32))
    g.const("c_one", np.array(1.0, dtype=np.float32))
    g.const("c_half", np.array(0.5, dtype=np.float32))
    # CTranslate2 multiplies the projected queries (bias included) by this.
    g.const("c_qscale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    g.const("c_heads_shape", np.array([0, 0, num_heads, head_dim], dtype=np.int64))
    g.const("c_model_shape", np.array([0, 0, d_model], dtype=np.int64))
    g.const("c_qkv_split", np.array([d_model] * 3, dtype=np.int64))
    g.const("c_zero1", np.array([0], dtype=np.int64))

    def bias(name):
        return g.const(name, model.float32(name)) if model.has(name) else None

    # Convolutional front end: [B, n_mels, T] -> [B, d, T/2].
    g.weight(f"{enc}/conv1/weight", conv1_w)
    conv_in = ["mel", f"{enc}/conv1/weight"] + ([b] if (b := bias(f"{enc}/conv1/bias")) else [])
    x = g.op("Conv", conv_in, "conv1", kernel_shape=[3], pads=[1, 1], strides=[1])
    x = g.gelu(x)
    g.weight(f"{enc}/conv2/weight", model.float32(f"{enc}/conv2/weight"))
    conv_in = [x, f"{enc}/conv2/weight"] + ([b] if (b := bias(f"{enc}/conv2/bias")) else [])
    x = g.op("Conv", conv_in, "conv2", kernel_shape=[3], pads=[1, 1], strides=[2])
    x = g.gelu(x)
    x = g.op("Transpose", [x], "to_btd", perm=[0, 2, 1])

    # Positional table sliced to the actual number of encoder frames.
    g.weight(f"{enc}/position_encodings/encodings", pos)
    n_frames = g.op("Shape", [x], "enc_len", start=1, end=2)
    pos_t = g.op("Slice", [f"{enc}/position_encodings/encodings", "c_zero1", n_frames, "c_zero1"], "pos")
    x = g.op("Add", [x, pos_t], "x_pos")

    for i in range(num_layers):
        p = f"{enc}/layer_{i}"
        # --- self-attention block (pre-norm, residual) ---
        sa = f"{p}/self_attention"
        for t in ("gamma", "beta"):
            g.const(f"{sa}/layer_norm/{t}", model.float32(f"{sa}/layer_norm/{t}"))
        qkv_w = model.float32(f"{sa}/linear_0/weight")
        if qkv_w.shape != (3 * d_model, d_model):
            raise ValueError(f"{sa}/linear_0/weight has shape {qkv_w.shape}; expected fused QKV")
        g.weight(f"{sa}/linear_0/weight_t", qkv_w.T)
        b_qkv = bias(f"{sa}/linear_0/bias")
        g.weight(f"{sa}/linear_1/weight_t", model.float32(f"{sa}/linear_1/weight").T)
        b_out = bias(f"{sa}/linear_1/bias")

        h = g.layer_norm(x, f"{sa}/layer_norm")
        qkv = g.linear(h, f"{sa}/linear_0/weight_t", b_qkv)
        q, k, v = g.op_multi("Split", [qkv, "c_qkv_split"], 3, "qkv", axis=-1)
        q = g.op("Mul", [q, "c_qscale"], "q_scaled")
        q = g.op("Transpose", [g.op("Reshape", [q, "c_heads_shape"])], "q_bhtd", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, "c_heads_shape"])], "k_bhdt", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, "c_heads_shape"])], "v_bhtd", perm=[0, 2, 1, 3])
        att = g.op("Softmax", [g.op("MatMul", [q, k], "scores")], "probs", axis=-1)
        ctx = g.op("MatMul", [att, v], "ctx")
        ctx = g.op("Transpose", [ctx], "ctx_bthd", perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, "c_model_shape"], "ctx_btd")
        x = g.op("Add", [x, g.linear(ctx, f"{sa}/linear_1/weight_t", b_out)], "res_attn")

        # --- feed-forward block (pre-norm, residual) ---
        ff = f"{p}/ffn"
        for t in ("gamma", "beta"):
            g.const(f"{ff}/layer_norm/{t}", model.float32(f"{ff}/layer_norm/{t}"))
        g.weight(f"{ff}/linear_0/weight_t", model.float32(f"{ff}/linear_0/weight").T)
        b0 = bias(f"{ff}/linear_0/bias")
        g.weight(f"{ff}/linear_1/weight_t", model.float32(f"{ff}/linear_1/weight").T)
        b1 = bias(f"{ff}/linear_1/bias")
        h = g.layer_norm(x, f"{ff}/layer_norm")
        h = g.gelu(g.linear(h, f"{ff}/linear_0/weight_t", b0))
        x = g.op("Add", [x, g.linear(h, f"{ff}/linear_1/weight_t", b1)], "res_ffn")

    for t in ("gamma", "beta"):
        g.const(f"{enc}/layer_norm/{t}", model.float32(f"{enc}/layer_norm/{t}"))
    g.nodes.append(helper.make_node("LayerNormalization",
                                    [x, f"{enc}/layer_norm/gamma", f"{enc}/layer_norm/beta"],
                                    ["features"], name="final_layer_norm", axis=-1, epsilon=LN_EPS))

    graph = helper.make_graph(
        g.nodes, "whisper_encoder",
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["batch", n_mels, "frames"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "enc_frames", d_model])],
        initializer=g.inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="avlm-ct2_to_onnx", producer_version="1")
    # IR 8 = what ORT >= 1.14 reads; the default of a newer onnx package could
    # exceed what an older runtime accepts.
    onnx_model.ir_version = 8
    meta = {
        "d_model": d_model, "n_mels": n_mels, "layers": num_layers, "heads": num_heads,
        "ffn_dim": int(model.entries[model._resolve(f"{enc}/layer_0/ffn/linear_0/weight")][1][0]),
        "max_frames": max_frames,
        "source_dtype": model.dtype_name(f"{enc}/layer_0/self_attention/linear_0/weight"),
        "weight_dtype": weight_dtype,
        "ct2_spec": f"{model.spec_name} rev {model.spec_revision} (binary v{model.binary_version})",
    }
    for k_, v_ in meta.items():
        onnx_model.metadata_props.add(key=k_, value=str(v_))
    return onnx_model, meta


def save(onnx_model, out_path):
    import onnx

    # Write to a temp file then rename so a crash never leaves a half model
    # where the server would pick it up.
    tmp = out_path + ".tmp"
    data_name = os.path.basename(out_path) + ".data"
    # Sum tensor bytes rather than ByteSize(): protobuf refuses to size >2 GiB.
    external = sum(len(t.raw_data) for t in onnx_model.graph.initializer) > _EXTERNAL_DATA_THRESHOLD
    if external:
        # `location` is relative to the model file; tmp sits next to out_path,
        # so the data file lands under its final name directly.
        onnx.save_model(onnx_model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    else:
        onnx.save_model(onnx_model, tmp)
        stale = os.path.join(os.path.dirname(out_path) or ".", data_name)
        if os.path.exists(stale):
            os.remove(stale)
    os.replace(tmp, out_path)
    return external


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="CTranslate2 Whisper model directory (contains model.bin)")
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                    help="storage type of weight matrices (computation is always float32)")
    args = ap.parse_args(argv)

    try:
        import onnx  # noqa: F401
    except ImportError:
        sys.exit("ct2_to_onnx.py needs the `onnx` package (pip install onnx)")

    t0 = time.perf_counter()
    model = Ct2Model(os.path.join(args.model_dir, "model.bin"))
    if model.spec_name != "WhisperSpec":
        sys.exit(f"{args.model_dir}: spec {model.spec_name!r} is not WhisperSpec")
    onnx_model, meta = build_encoder(model, args.dtype)
    if args.dtype == "float16" and meta["source_dtype"] not in ("float16",):
        print(f"note: source weights are {meta['source_dtype']}; float16 storage rounds them",
              file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    external = save(onnx_model, args.out)
    dt = time.perf_counter() - t0

    size = os.path.getsize(args.out)
    if external:
        size += os.path.getsize(os.path.join(os.path.dirname(args.out) or ".",
                                             os.path.basename(args.out) + ".data"))
    print(f"d_model={meta['d_model']} layers={meta['layers']} heads={meta['heads']} "
          f"n_mels={meta['n_mels']} ffn={meta['ffn_dim']} max_frames={meta['max_frames']} "
          f"source_dtype={meta['source_dtype']} weights={args.dtype}")
    print(f"wrote {args.out} ({size / 1e6:.1f} MB{', external data' if external else ''}) "
          f"in {dt:.2f} s")


if __name__ == "__main__":
    main()
