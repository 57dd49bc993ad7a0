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

Importable: patch_encoder(base, top, out) -> number of initializers replaced; write_f16(src, out).
Files are read and written with make_default_bundle's read_safetensors / safetensors_bytes.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_default_bundle import read_safetensors, safetensors_bytes  # noqa: E402


def write_f16(src: str, out: str) -> int:
    """A float16 copy of a tensors file (values rounded to nearest; metadata kept): what
    weights/default holds, since the rounding moves the encoder's features far less than the
    float16 encoder the GPU training ran on did."""
    tensors, meta = read_safetensors(src)
    for name, arr in tensors.items():
        if not np.isfinite(arr).all() or np.abs(arr).max(initial=0.0) > 65504.0:
            raise SystemExit(f"{src}: {name} does not fit float16")
    data = safetensors_bytes({k: v.astype(np.float16) for k, v in tensors.items()},
                             dict(meta, dtype="float16 copy of " + os.path.basename(src)))
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, out)
    return len(tensors)


def patch_encoder(base: str, top: str, out: str) -> int:
    import onnx
    from onnx import numpy_helper

    tensors, _ = read_safetensors(top)
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
