#!/usr/bin/env bash
# Runs every test of avlm on a fresh Debian 12 machine: installs what is
# missing (tools/setup.sh), makes the test media, then the Python tool tests and `cargo test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash tools/setup.sh

MEDIA=tests/media/generated
if [[ ! -f $MEDIA/speech.json || tools/make_test_media.py -nt $MEDIA/speech.json ]]; then
  echo "[test] making test media in $MEDIA" >&2
  .avlm/venv/bin/python tools/make_test_media.py "$MEDIA"
fi

if [[ ! -f $MEDIA/lrs3/synthetic_ci/speaker1/00002.txt || tools/make_lrs3_sets.py -nt $MEDIA/lrs3/synthetic_ci/speaker1/00002.txt ]]; then
  echo "[test] making LRS3-layout test sets in $MEDIA/lrs3" >&2
  .avlm/venv/bin/python tools/make_lrs3_sets.py "$MEDIA/lrs3"
fi

# the Python tools: the default bundle's tuned encoder writer (fails loudly on bad weights) and the
# training stream's random espeak-ng voices (spoken by the installed espeak-ng); the sentence pool
# a GPU machine reads from a file; the EfficientNet-Lite2 ONNX against its PyTorch golden; the
# VideoLLM-online, SmolVLM and Llama-AVSR converters' merges and refusals; the AV-HuBERT lip
# encoder's ONNX against its PyTorch goldens and its refusals
.avlm/venv/bin/python -m unittest tools/bundle/test_patch_encoder.py tools/data/test_synth_stream.py \
  tools/data/test_text_corpus.py tools/vision/test_efficientnet_onnx.py tools/vision/test_vision_converters.py \
  tools/avsr/test_avhubert_onnx.py tools/avsr/test_convert_llama_avsr.py

cargo test --workspace --locked "$@"
