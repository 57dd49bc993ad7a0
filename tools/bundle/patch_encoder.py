#!/usr/bin/env python3
"""Write a copy of an encoder ONNX graph with some of its initializers replaced.

    patch_encoder.py BASE.onnx TOP.safetensors OUT.onnx
    patch_encoder.py --f16 TOP.safetensors OUT.safetensors   # a float16 copy (half the bytes)

TOP.safetensors holds tensors named like the graph's initializers (for the Whisper encoders
that tools/whisper/ct2_to_onnx.py writes: `encoder/layer_3/ffn/linear_0/weight_t`, ...), F32 or
F16; each replaces the initializer of that name, stored as float32. It is what
`tools/train/train_projector.py --tune-encoder-top K` writes as `encoder_top.safetensors`: the
top K blocks and the final layer norm of the Whisper encoder, tuned with the projector.

Every tensor must name an existing float32 initializer of the same shape, and all values must
be finite; anything else is refused with the tensor named, and OUT is not written. The graph
itself (nodes, inputs, outputs, opset) is unchanged, so the server runs the patched encoder
exactly as it runs the base one.

Importable: patch_encoder(base, top, out) -> number of initializers replaced.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np


def read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A safetensors file of F32/F16 tensors -> name -> float32 array, and its metadata."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise SystemExit(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise SystemExit(f"{path}: header length {n} runs past the end of the file")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise SystemExit(f"{path}: header is not JSON ({e})")
    if not isinstance(header, dict):
        raise SystemExit(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", {}) or {}
    base, out = 8 + n, {}
    for name, info in header.items():
        try:
            dtype, shape, (s, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise SystemExit(f"{path}: {name} lacks a dtype, shape or data_offsets")
        dt = {"F32": "<f4", "F16": "<f2"}.get(dtype)
        if dt is None:
            raise SystemExit(f"{path}: {name} has dtype {dtype}; only F32 and F16 are read")
        size = np.dtype(dt).itemsize
        if not (0 <= s <= e <= len(data) - base) or (e - s) % size:
            raise SystemExit(f"{path}: {name} has data offsets [{s}, {e}] outside the data or not whole values")
        arr = np.frombuffer(data[base + s:base + e], dtype=dt)
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise SystemExit(f"{path}: {name} holds {arr.size} values for shape {shape}")
        out[name] = arr.reshape(shape).astype(np.float32)
    return out, meta


def write_f16(src: str, out: str) -> int:
    """A float16 copy of a tensors file (values rounded to nearest; metadata kept): what
    weights/default holds, since the rounding moves the encoder's features far less than the
    float16 encoder the GPU training ran on did."""
    tensors, meta = read_tensors(src)
    header: dict = {"__metadata__": dict(meta, dtype="float16 copy of " + os.path.basename(src))}
    blobs, off = [], 0
    for name, arr in tensors.items():
        if not np.isfinite(arr).all() or np.abs(arr).max(initial=0.0) > 65504.0:
            raise SystemExit(f"{src}: {name} does not fit float16")
        b = np.ascontiguousarray(arr.astype("<f2")).tobytes()
        header[name] = {"dtype": "F16", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, out)
    return len(tensors)


def patch_encoder(base: str, top: str, out: str) -> int:
    import onnx
    from onnx import numpy_helper

    tensors, _ = read_tensors(top)
    if not tensors:
        raise SystemExit(f"{top}: no tensors")
    model = onnx.load(base)
    inits = {t.name: t for t in model.graph.initializer}
    for name, arr in tensors.items():
        t = inits.get(name)
        if t is None:
            raise SystemExit(f"{top}: {name} is not an initializer of {base}")
        if t.data_type != onnx.TensorProto.FLOAT:
            raise SystemExit(f"{top}: {name} is not float32 in {base}")
        if tuple(t.dims) != arr.shape:
            raise SystemExit(f"{top}: {name} has shape {list(arr.shape)}, {base} has {list(t.dims)}")
        if not np.isfinite(arr).all():
            raise SystemExit(f"{top}: {name} holds non-finite values")
    for name, arr in tensors.items():
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
    model.doc_string = (model.doc_string + "\n" if model.doc_string else "") + (
        f"avlm: {len(tensors)} initializers replaced from {os.path.basename(top)} (tools/bundle/patch_encoder.py)")
    tmp = out + ".tmp"
    onnx.save(model, tmp)
    os.replace(tmp, out)
    return len(tensors)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--f16":
        n = write_f16(argv[1], argv[2])
        print(f"wrote {argv[2]}: {n} tensors as float16")
        return 0
    if len(argv) != 3 or any(a.startswith("-") for a in argv):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    n = patch_encoder(*argv)
    print(f"wrote {argv[2]}: {n} initializers replaced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
