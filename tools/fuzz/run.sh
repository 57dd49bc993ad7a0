#!/usr/bin/env bash
# Runs each fuzz target for MINUTES minutes, one after the other, at the
# lowest CPU priority, and keeps every crash, hang or out-of-memory input as
# a reproducer in fuzz/artifacts/<target>/.
#
# usage: tools/fuzz/run.sh MINUTES [--keep] [TARGET...]
#   TARGET   ingest, wav_header, raw_pcm, protocol, session (default: all)
#   --keep   also copy the reproducers into tests/fuzz/regressions/<target>/,
#            which stream/tests/fuzz_regressions.rs replays in `cargo test`
#
# The targets are built with cargo-fuzz on the stable toolchain
# (RUSTC_BOOTSTRAP=1 for its -Z flags) without a sanitizer (`-s none`):
# libFuzzer with SanitizerCoverage, debug assertions and overflow checks.
# The seed corpus comes from tools/fuzz/seeds.py (test media and bad
# inputs). Logs: fuzz/logs/<target>.log; per-run figures:
# fuzz/logs/summary.tsv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

MINUTES="${1:?usage: tools/fuzz/run.sh MINUTES [--keep] [TARGET...]}"
shift
KEEP=0
TARGETS=()
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    *) TARGETS+=("$arg") ;;
  esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(wav_header raw_pcm protocol ingest session)

max_len() {
  case "$1" in
    ingest | session) echo 65536 ;;
    raw_pcm) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

if [[ ${FUZZ_NO_BUILD:-0} != 1 ]]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
  (cd fuzz && RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build -s none)
fi
BIN=fuzz/target/x86_64-unknown-linux-gnu/release
export ORT_DYLIB_PATH="$ROOT/.avlm/lib/libonnxruntime.so.1.31.1"
export AVLM_ROOT="$ROOT"

if [[ ! -d fuzz/corpus ]]; then
  python3 tools/fuzz/seeds.py "$ROOT"
fi
mkdir -p fuzz/logs

for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="fuzz/logs/$t.log"
  deadline=$(($(date +%s) + MINUTES * 60))
  runs=0
  # libFuzzer stops at the first crash: start it again (keeping its
  # corpus) until the time is up.
  while (($(date +%s) < deadline - 5 && runs < 50)); do
    runs=$((runs + 1))
    left=$((deadline - $(date +%s)))
    echo "== $t run $runs, $left s, $(date -u +%FT%TZ)" >>"$log"
    start=$(date +%s)
    set +e
    nice -n 19 "$BIN/$t" "fuzz/corpus/$t" \
      -max_len="$(max_len "$t")" -rss_limit_mb=2048 -timeout=10 \
      -max_total_time="$left" -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" >>"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{print $2}')
    cov=$(grep -aE '^#[0-9]+.*cov: ' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\1\t\2/')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$(($(date +%s) - start))" \
      "${execs:-0}" "${cov:-0	0}" "$rc" >>fuzz/logs/summary.tsv
    # A run that ends early without a reproducer (the target could not
    # start) would only fail again.
    if ((rc != 0)) && ! ls "fuzz/artifacts/$t" | grep -qE '^(crash|timeout|oom|leak)-'; then
      echo "$t: libFuzzer exited $rc without a reproducer; see $log" >&2
      break
    fi
  done
  found=$(ls "fuzz/artifacts/$t" | grep -cE '^(crash|timeout|oom|leak)-' || true)
  echo "$t: $runs run(s), $found reproducer(s) in fuzz/artifacts/$t" >&2
  if ((KEEP && found > 0)); then
    mkdir -p "tests/fuzz/regressions/$t"
    for f in "fuzz/artifacts/$t"/{crash,timeout,oom,leak}-*; do
      [[ -e $f ]] && cp -n "$f" "tests/fuzz/regressions/$t/"
    done
  fi
done
echo "figures: fuzz/logs/summary.tsv (time, target, seconds, executions, cov, ft, exit)" >&2
