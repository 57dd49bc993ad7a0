#!/usr/bin/env python3
"""Export the encoder of a local Hugging Face Whisper checkpoint to ONNX.

    hf_to_onnx.py HF_DIR OUT.onnx [--dtype float32|float16] [--no-verify]

HF_DIR is a local folder with config.json + weights (e.g. a download of
openai/whisper-medium.en, the encoder Llama-AVSR uses). Same ONNX contract as
ct2_to_onnx.py, so the server can load either:

  input  `mel`      float32 [batch, n_mels, frames]   frames even, 2..3000
  output `features` float32 [batch, frames/2, d_model]

Needs torch and transformers (plus onnx; onnxruntime for the self-check).
Not run in CI; nothing here downloads anything.

Why not call transformers' WhisperEncoder.forward: it rejects any input that
is not exactly 3000 frames and, depending on the version, routes attention
through SDPA/flash paths whose export differs. The wrapper below re-states
the encoder math on the checkpoint's own modules (conv1/conv2/GELU,
embed_positions sliced to frames/2, pre-norm layers, final LayerNorm), and the
self-check compares it with the stock forward on a full 3000-frame window.
"""

import argparse
import inspect
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17


def _require_torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        sys.exit(f"hf_to_onnx.py needs PyTorch and transformers ({e}). Install them in a separate "
                 f"environment, e.g. `pip install torch transformers onnx onnxruntime`; "
                 f"for CTranslate2 models use ct2_to_onnx.py instead, which needs neither.")
    return torch


def build_wrapper(torch, encoder, num_heads):
    """nn.Module computing the Whisper encoder for any even frame count."""
    nn = torch.nn
    F = torch.nn.functional

    class VariableLengthWhisperEncoder(nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc
            # From the config: attribute names on WhisperAttention vary by version.
            self.num_heads = num_heads
            self.head_dim = enc.conv1.out_channels // num_heads
            # HF multiplies the projected queries by head_dim**-0.5, as CTranslate2 does.
            self.scaling = float(self.head_dim) ** -0.5

        def _attention(self, attn, x):
            b, t = x.shape[0], x.shape[1]
            q = attn.q_proj(x) * self.scaling
            k = attn.k_proj(x)  # Whisper's k_proj has no bias
            v = attn.v_proj(x)
            q = q.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            k = k.reshape(b, t, self.num_heads, self.head_dim).permute(0, 2, 3, 1)
            v = v.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
            # Plain matmul/softmax: exports to standard ops with no mask and no
            # dependence on the transformers attention backend.
            p = torch.softmax(torch.matmul(q, k), dim=-1)
            ctx = torch.matmul(p, v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
            return attn.out_proj(ctx)

        def forward(self, mel):
            enc = self.enc
            x = F.gelu(enc.conv1(mel))  # exact erf GELU, as Whisper
            x = F.gelu(enc.conv2(x))
            x = x.permute(0, 2, 1)
            # Slice the positional table to the actual frame count; this is what
            # makes a 4 s window cost 4 s instead of 30 s.
            x = x + enc.embed_positions.weight[: x.shape[1]]
            for layer in enc.layers:
                x = x + self._attention(layer.self_attn, layer.self_attn_layer_norm(x))
                h = layer.final_layer_norm(x)
                x = x + layer.fc2(F.gelu(layer.fc1(h)))
            return enc.layer_norm(x)

    return VariableLengthWhisperEncoder(encoder).eval()


def load_encoder(torch, hf_dir):
    from transformers import AutoConfig, WhisperModel

    config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    if config.model_type != "whisper":
        sys.exit(f"{hf_dir}: model_type {config.model_type!r} is not whisper")
    act = getattr(config, "activation_function", "gelu")
    if act != "gelu":
        sys.exit(f"{hf_dir}: activation {act!r}; this exporter implements Whisper's exact GELU only")
    model = WhisperModel.from_pretrained(hf_dir, local_files_only=True)
    encoder = model.get_encoder().float().eval()
    del model.decoder  # only the encoder is exported; free the memory early
    return config, encoder


def export(torch, wrapper, config, path):
    n_mels = config.num_mel_bins
    # Trace with a short, non-3000 length so nothing gets specialised to 30 s.
    dummy = torch.zeros(1, n_mels, 200, dtype=torch.float32)
    kwargs = dict(
        input_names=["mel"],
        output_names=["features"],
        dynamic_axes={"mel": {0: "batch", 2: "frames"}, "features": {0: "batch", 1: "enc_frames"}},
        opset_version=OPSET,
        do_constant_folding=True,
    )
    # torch >= 2.9 defaults to the dynamo exporter, which wants torch.export
    # Dims instead of dynamic_axes; the TorchScript exporter handles this
    # graph (dynamic Slice of the positional table) directly.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(wrapper, (dummy,), path, **kwargs)


def finalize(tmp_path, out_path, config, weight_dtype, source):
    """Set metadata like ct2_to_onnx.py, optionally store matrices as f16 + Cast,
    and write atomically (external data when above the protobuf limit)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sys.path.insert(0, HERE)
    import ct2_to_onnx  # shared save(): atomic write, external data when > ~1.8 GB

    model = onnx.load(tmp_path)  # also pulls in external data if torch wrote any
    graph = model.graph
    if weight_dtype == "float16":
        casts, new_inits = [], []
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.ndim >= 2:
                new_inits.append(numpy_helper.from_array(arr.astype(np.float16), init.name + "_f16"))
                casts.append(helper.make_node("Cast", [init.name + "_f16"], [init.name],
                                              name=init.name + "_cast", to=TensorProto.FLOAT))
            else:
                new_inits.append(init)
        del graph.initializer[:]
        graph.initializer.extend(new_inits)
        nodes = casts + list(graph.node)  # Casts first keeps the graph topologically sorted
        del graph.node[:]
        graph.node.extend(nodes)

    d_model = config.d_model
    meta = {
        "d_model": d_model, "n_mels": config.num_mel_bins, "layers": config.encoder_layers,
        "heads": config.encoder_attention_heads, "ffn_dim": config.encoder_ffn_dim,
        "max_frames": 2 * config.max_source_positions, "source_dtype": "hf:" + str(
            getattr(config, "torch_dtype", None) or getattr(config, "dtype", "float32")),
        "weight_dtype": weight_dtype, "source": source,
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    model.producer_name = "avlm-hf_to_onnx"
    if sum(len(t.raw_data) for t in graph.initializer) < ct2_to_onnx._EXTERNAL_DATA_THRESHOLD:
        onnx.checker.check_model(model)  # the in-memory checker cannot take > 2 GB
    ct2_to_onnx.save(model, out_path)
    return meta


def verify(torch, encoder, wrapper, out_path, n_mels):
    """Stock HF forward vs our wrapper (3000 frames) and ORT vs wrapper (3000
    and a short window). Random but seeded input shaped like log-mel."""
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed; skipping the self-check")
        return
    rng = np.random.default_rng(0)
    mel = rng.uniform(-1.0, 1.5, size=(1, n_mels, 3000)).astype(np.float32)
    with torch.no_grad():
        stock = encoder(torch.from_numpy(mel)).last_hidden_state.numpy()
        ours = wrapper(torch.from_numpy(mel)).numpy()
        ours_short = wrapper(torch.from_numpy(mel[:, :, :400])).numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(out_path, so, providers=["CPUExecutionProvider"])
    onnx_full = sess.run(["features"], {"mel": mel})[0]
    onnx_short = sess.run(["features"], {"mel": mel[:, :, :400]})[0]

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    r = {"wrapper vs HF forward (3000)": rel(ours, stock),
         "ONNX vs wrapper (3000)": rel(onnx_full, ours),
         "ONNX vs wrapper (400)": rel(onnx_short, ours_short)}
    for k, v in r.items():
        print(f"  {k}: rel {v:.2e}")
    if onnx_short.shape[1] != 200 or max(r.values()) > 1e-4:
        sys.exit("self-check failed (tolerance rel 1e-4)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hf_dir", help="local Hugging Face Whisper checkpoint folder")
    ap.add_argument("out", help="output .onnx path")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                    help="storage type of weight matrices (computation is always float32)")
    ap.add_argument("--no-verify", action="store_true", help="skip the ORT self-check")
    args = ap.parse_args(argv)

    torch = _require_torch()
    t0 = time.perf_counter()
    config, encoder = load_encoder(torch, args.hf_dir)
    wrapper = build_wrapper(torch, encoder, config.encoder_attention_heads)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "encoder.onnx")
        export(torch, wrapper, config, raw)
        meta = finalize(raw, args.out, config, args.dtype, os.path.abspath(args.hf_dir))
    print(f"d_model={meta['d_model']} layers={meta['layers']} heads={meta['heads']} "
          f"n_mels={meta['n_mels']} ffn={meta['ffn_dim']} weights={args.dtype}")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f} s")
    if not args.no_verify:
        verify(torch, encoder, wrapper, args.out, meta["n_mels"])


if __name__ == "__main__":
    main()
