#!/usr/bin/env bash
# Device side of a GPU training run (see tools/train/README.md, "On a GPU machine").
# The payload made by tools/train/gpu_pack.sh arrives in pieces, one per call, as .xfer/pN/:
#   tools/train/gpu_run.sh stage N              # keep piece N in $STAGE (piece 1 also checks the machine,
#                                               # the last installs the wheels it carries)
#   tools/train/gpu_run.sh train MINUTES [ARGS]  # join the pieces, train for MINUTES, results in $OUT
set -euo pipefail
STAGE=${STAGE:-/tmp/avlm-stage}
PAYLOAD=${PAYLOAD:-/tmp/avlm-payload}
WORK=${WORK:-/tmp/avlm-work}
OUT=${OUT:-$WORK/out}
cd "$(dirname "$0")/../.."

# the wheels in folder $1 into /tmp/site (on PYTHONPATH for the trainer)
install_wheels() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl
}

case "${1:-}" in
stage)
    n=$2
    mkdir -p "$STAGE"
    cp -r ".xfer/p$n/." "$STAGE/"
    ls -la "$STAGE" | tail -n +2
    if [ "$n" = 1 ]; then
        nvidia-smi -L || true
        echo "cpus $(nproc); $(free -g | awk '/Mem/ {print $2 " GiB memory"}'); $(df -h /tmp | awk 'NR==2 {print $4 " free in /tmp"}')"
        python3 -c 'import sys, torch, transformers, scipy, safetensors; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "", "transformers", transformers.__version__)'
    fi
    if [ -d "$STAGE/wheels" ] && [ ! -f /tmp/site/.avlm-wheels ]; then    # the piece that carries them
        install_wheels "$STAGE/wheels" && touch /tmp/site/.avlm-wheels
        PYTHONPATH=/tmp/site python3 -c 'import gguf, soundfile; print("wheels: gguf", gguf.__version__ if hasattr(gguf, "__version__") else "", "libsndfile", soundfile.__libsndfile_version__)'
    fi
    ;;
train)
    minutes=$2
    shift 2
    [ -f /tmp/site/.avlm-wheels ] || { install_wheels "$STAGE/wheels" && touch /tmp/site/.avlm-wheels; }
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    rm -rf "$PAYLOAD"
    mkdir -p "$PAYLOAD" "$WORK" "$OUT" .avlm/models .avlm/train
    t0=$(date +%s)
    cat "$STAGE"/chunk_* | tar x -C "$PAYLOAD"
    echo "payload joined in $(( $(date +%s) - t0 )) s: $(du -sh "$PAYLOAD" | cut -f1)"
    ln -sf "$PAYLOAD/SmolLM2-135M-Instruct.Q4_1.gguf" .avlm/models/SmolLM2-135M-Instruct.Q4_1.gguf
    cp "$PAYLOAD/mel_filters_80.npy" .avlm/train/mel_filters_80.npy
    if [ -d "$PAYLOAD/tts" ]; then               # gpu_pack.sh TTS_KIT: --synth can speak here
        export AVLM_ESPEAK="$PAYLOAD/tts/espeak/espeak-ng" AVLM_ESPEAK_DATA="$PAYLOAD/tts/espeak/espeak-ng-data" \
            AVLM_SENTENCES="$PAYLOAD/tts/sentences.json.gz"
        if [ -d "$PAYLOAD/tts/piper" ]; then install_wheels "$PAYLOAD/tts/piper"; fi
        "$AVLM_ESPEAK" --path="$PAYLOAD/tts/espeak" -q "synthesiser check" && echo "tts kit: espeak-ng runs"
    fi
    init="$PAYLOAD/init.pt"                      # gpu_pack.sh INIT: a checkpoint, or
    [ -d "$PAYLOAD/init" ] && init="$PAYLOAD/init"   # a folder of bundle-format files
    python3 tools/train/train_projector.py --device cuda --work "$WORK" \
        --audio-packs "$PAYLOAD/packs" --encoder "$PAYLOAD/whisper-tiny.en-encoder.f16.safetensors" \
        --init-from "$init" --workers "$(nproc)" --threads 4 \
        --time-schedule --max-minutes "$minutes" --steps 10000000 \
        --export-dir "$OUT" --check-llm "$@"
    ;;
*)
    echo "usage: $0 stage N | train MINUTES [train_projector.py args]" >&2
    exit 2
    ;;
esac
