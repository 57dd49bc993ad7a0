#!/usr/bin/env bash
# The main job: starts `avlm serve` with the bundled default model and streams
# the bundled sample clip to it at the clip's own pace, printing speech
# events, partial transcripts and finals live as the server produces them,
# then the clip's reference transcript for comparison. Extra arguments go to
# `avlm stream` (for example --json, or another file instead of the sample:
# --input FILE).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash tools/setup.sh
cargo build --release --locked -p avlm-stream --bin avlm
BIN="$ROOT/target/release/avlm"

INPUT="samples/demo.webm"
ARGS=()
while (($#)); do
  case "$1" in
    --input) INPUT="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

LOG="$(mktemp)"
"$BIN" --log warn serve --listen 127.0.0.1:0 2>"$LOG" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -f "$LOG"' EXIT
URL=""
for _ in $(seq 1 300); do
  URL="$(grep -o 'http://[0-9.:]*' "$LOG" | head -n1 || true)"
  [[ -n $URL ]] && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG" >&2; exit 1; }
  sleep 0.1
done
[[ -n $URL ]] || { echo "server did not start:" >&2; cat "$LOG" >&2; exit 1; }
echo "server: $URL — streaming $INPUT in real time" >&2
"$BIN" stream "$INPUT" --server "$URL" --realtime --task transcribe --partials ${ARGS[@]+"${ARGS[@]}"}
REF="${INPUT%.*}.json"
if [[ -f $REF ]]; then
  echo "reference transcript ($REF):" >&2
  "$ROOT/.avlm/venv/bin/python" - "$REF" >&2 <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["speech"]:
    print(f"  {s['start_s']:8.2f}s  {s['text']}")
PY
fi
