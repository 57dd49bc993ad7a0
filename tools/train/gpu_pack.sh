#!/usr/bin/env bash
# This machine's side of a GPU training run: everything the GPU machine needs (it has PyTorch
# but no TTS, no models and no network), as one tar split into pieces that each fit one call
# of the device tool (64 MiB per call, the working tree included).
#
#   tools/train/gpu_pack.sh [PACKS_DIR] [INIT]
#
# PACKS_DIR (default .avlm/train/packs) comes from tools/train/audio_packs.py pack. INIT (default
# .avlm/train/ckpt/latest.pt) is the state to start from: a checkpoint (its projector, LoRA, CTC
# head and tuned encoder blocks go as init.pt) or a folder of bundle-format files such as
# weights/default (its *.safetensors go as init/, for train_projector.py --init-from DIR).
# Writes .xfer/p1 .. .xfer/pN (git-ignored, so each call carries only its own: carry
# [".xfer/pN"]). The last piece also holds the wheels the GPU image lacks (gguf, soundfile, cffi,
# pycparser, from $WHEELS, default .avlm/gpu/wheels, or the kit's wheels/ when TTS_KIT is set).
# TTS_KIT=DIR (tools/train/tts_kit.py) carries the speech synthesiser kit in the payload as tts/,
# for train_projector.py --synth on the GPU machine (gpu_run.sh points synth_stream at it).
set -euo pipefail
cd "$(dirname "$0")/../.."
PACKS=${1:-.avlm/train/packs}
INIT=${2:-.avlm/train/ckpt/latest.pt}
TTS_KIT=${TTS_KIT:-}
WHEELS=${WHEELS:-.avlm/gpu/wheels}
if [[ -n $TTS_KIT ]]; then
  [[ -x $TTS_KIT/espeak/espeak-ng && -f $TTS_KIT/sentences.json.gz ]] || {
    echo "gpu_pack: TTS_KIT=$TTS_KIT is not a kit made by tools/train/tts_kit.py" >&2; exit 1; }
  WHEELS=$TTS_KIT/wheels
fi
ls "$WHEELS"/*.whl > /dev/null || { echo "gpu_pack: no wheels in $WHEELS (tools/train/tts_kit.py makes them)" >&2; exit 1; }
# Each call carries the working tree (tracked and untracked-not-ignored files) beside its piece:
# a piece gets what is left of 64 MiB after the tree and the wheels, less 1 MiB to spare.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
wheels=$(cat "$WHEELS"/*.whl | wc -c)
CHUNK_MB=${CHUNK_MB:-$(( (64 * 1048576 - tree - wheels) / 1048576 - 1 ))}
if (( CHUNK_MB < 8 )); then
  echo "gpu_pack: the working tree ($((tree / 1048576)) MiB) leaves only ${CHUNK_MB} MiB per piece" >&2
  exit 1
fi
echo "working tree $((tree / 1048576)) MiB: pieces of ${CHUNK_MB} MiB"
PY=.avlm/venv/bin/python
P=.avlm/gpu/payload
rm -rf "$P" .avlm/gpu/chunk_* .xfer
mkdir -p "$P" .xfer
cp -r "$PACKS" "$P/packs"
$PY -c "import sys; sys.path.insert(0, 'tools/data'); import avlm_features as F; F.mel_filters()"   # the cached bank
cp .avlm/models/SmolLM2-135M-Instruct.Q4_1.gguf .avlm/train/mel_filters_80.npy "$P/"
if [[ -n $TTS_KIT ]]; then
  mkdir -p "$P/tts"
  cp -r "$TTS_KIT/espeak" "$TTS_KIT/sentences.json.gz" "$P/tts/"
  if [[ -d $TTS_KIT/piper ]]; then cp -r "$TTS_KIT/piper" "$P/tts/"; fi
fi
# float16 encoder weights: half the size; the features they give differ from the float32
# ONNX graph's by no more than batching does (whisper_torch.py --check)
$PY -c "
import sys; sys.path.insert(0, 'tools/train')
import whisper_torch as W
W.save_weights(W.onnx_weights('.avlm/models/whisper-tiny.en-encoder.onnx'), '$P/whisper-tiny.en-encoder.f16.safetensors')"
if [[ -d $INIT ]]; then
  [[ -f $INIT/projector.safetensors ]] || { echo "gpu_pack: $INIT has no projector.safetensors" >&2; exit 1; }
  mkdir -p "$P/init"
  for f in projector lora ctc encoder_top; do
    if [[ -f $INIT/$f.safetensors ]]; then cp "$INIT/$f.safetensors" "$P/init/"; fi
  done
else
  $PY -c "
import sys, torch; sys.path.insert(0, 'tools/train')
sys.argv = ['x']
import train_projector as T
torch.save(T.small_state(torch.load('$INIT', weights_only=False, map_location='cpu')), '$P/init.pt')"
fi
tar cf - -C "$P" . | split -b "${CHUNK_MB}M" -d -a 2 - .avlm/gpu/chunk_
i=1
for c in .avlm/gpu/chunk_*; do
    mkdir -p ".xfer/p$i"
    mv "$c" ".xfer/p$i/"
    i=$((i + 1))
done
# the wheels go with the last piece
mkdir -p ".xfer/p$((i - 1))/wheels"
cp "$WHEELS"/*.whl ".xfer/p$((i - 1))/wheels/"
du -sh "$P" .xfer/p*
