#!/usr/bin/env bash
# This machine's side of a GPU training run: everything the GPU machine needs (it has PyTorch
# but no TTS, no models and no network), as one tar split into pieces that each fit one call
# of the device tool (64 MiB of working tree per call).
#
#   tools/train/gpu_pack.sh [PACKS_DIR] [INIT_CKPT]
#
# PACKS_DIR (default .avlm/train/packs) comes from tools/train/audio_packs.py pack; INIT_CKPT
# (default .avlm/train/ckpt/latest.pt) is the projector/LoRA/CTC state to start from.
# Writes .xfer/p1 .. .xfer/pN (git-ignored through .git/info/exclude); piece 1 also holds the
# wheels the GPU image lacks (gguf, soundfile, cffi, pycparser, from .avlm/gpu/wheels) go in the last.
set -euo pipefail
cd "$(dirname "$0")/../.."
PACKS=${1:-.avlm/train/packs}
INIT=${2:-.avlm/train/ckpt/latest.pt}
CHUNK_MB=${CHUNK_MB:-44}   # + the working tree (~19 MB) must stay under the 64 MiB a call carries
PY=.avlm/venv/bin/python
P=.avlm/gpu/payload
rm -rf "$P" .avlm/gpu/chunk_* .xfer
mkdir -p "$P" .xfer
cp -r "$PACKS" "$P/packs"
cp .avlm/models/SmolLM2-135M-Instruct.Q4_1.gguf .avlm/train/mel_filters_80.npy "$P/"
# float16 encoder weights: half the size; the features they give differ from the float32
# ONNX graph's by no more than batching does (whisper_torch.py --check)
$PY -c "
import sys; sys.path.insert(0, 'tools/train')
import whisper_torch as W
W.save_weights(W.onnx_weights('.avlm/models/whisper-tiny.en-encoder.onnx'), '$P/whisper-tiny.en-encoder.f16.safetensors')"
$PY -c "
import sys, torch; sys.path.insert(0, 'tools/train')
sys.argv = ['x']
import train_projector as T
torch.save(T.small_state(torch.load('$INIT', weights_only=False, map_location='cpu')), '$P/init.pt')"
tar cf - -C "$P" . | split -b "${CHUNK_MB}M" -d -a 2 - .avlm/gpu/chunk_
i=1
for c in .avlm/gpu/chunk_*; do
    mkdir -p ".xfer/p$i"
    mv "$c" ".xfer/p$i/"
    i=$((i + 1))
done
# the wheels go with the last piece: the first already carries the most (a piece of CHUNK_MB)
mkdir -p ".xfer/p$((i - 1))/wheels"
cp .avlm/gpu/wheels/*.whl ".xfer/p$((i - 1))/wheels/"
du -sh "$P" .xfer/p*
