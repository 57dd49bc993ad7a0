#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a state where avlm builds, serves and
# tests: system packages, a project-local Python environment with the
# onnxruntime wheel and the model packages, and the runtime files avlm loads
# (ONNX Runtime library, Silero VAD model) copied under .avlm/.
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
  espeak-ng sox pocketsphinx-testdata python3-venv
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
if ! "$PY" -c "import onnxruntime, numpy, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
  log "installing onnxruntime==$ORT_VERSION and numpy"
  "$PY" -m pip install -q --disable-pip-version-check "onnxruntime==$ORT_VERSION" numpy
fi
# Model packages: only their files are needed, never their heavy dependencies.
for pkg in silero-vad; do
  pip_has "$pkg" || { log "installing $pkg (files only)"; "$PY" -m pip install -q --disable-pip-version-check --no-deps "$pkg"; }
done

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$STATE/lib" "$STATE/models"
copy_if_changed() { cmp -s "$1" "$2" 2>/dev/null || cp -f "$1" "$2"; }
copy_if_changed "$SITE/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$STATE/lib/libonnxruntime.so.$ORT_VERSION"
copy_if_changed "$SITE/silero_vad/data/silero_vad.onnx" "$STATE/models/silero_vad.onnx"

log "ready: ONNX Runtime $STATE/lib/libonnxruntime.so.$ORT_VERSION, VAD $STATE/models/silero_vad.onnx"
