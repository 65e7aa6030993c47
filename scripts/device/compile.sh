#!/usr/bin/env bash
# Ours beside torch.compile on one H200, in one call (issue 16).
#
# Build here (no CUDA needed), from the repository root, then carry .gpu:
#   CGO_ENABLED=0 go build -ldflags='-s -w' -o .gpu/newbie-train ./cmd/newbie-train
#   cp ../shared/anchors/torch_nextdit_lora.py .gpu/
#
# Usage: bash scripts/device/compile.sh RES:CKPT[:BATCH] [...]
#   e.g. bash scripts/device/compile.sh 768:off 1024:both 1024:off:2
# (CKPT: newbie-train bench's --checkpointing, off, on or both; BATCH
# defaults to 1). COMPILE_BENCH_ARGS are added to our bench's arguments,
# e.g. "--compare-off ;thingemm" to measure a fast path on and off in the
# pair.
#
# torch.compile compiles inside the anchor's first step: 4–6 minutes of CPU
# with the GPU idle. Each pair starts the anchor with --compile in the
# background and, at the same moment, our bench in the foreground; ours ends
# long before torch's first step, so no timed step of one overlaps the
# other's (the log's timestamps show it; a pair where torch ended first is
# flagged). Ours runs beside the compile's CPU load, which can only slow
# it. A pair starts only with 240 s of the call's 585 left.
set -u
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/nt-cache}
OUT=${OUT:-/tmp/compile-out}
mkdir -p "$OUT"
L="$OUT/compile.log"
: >"$L"
ts() { date -u +%H:%M:%S.%N | cut -c1-12; }
status=0
for pair in "$@"; do
  IFS=: read -r res ckpt batch <<<"$pair"
  batch=${batch:-1}
  left=$((585 - SECONDS))
  if [ $left -lt 240 ]; then
    echo "== $(ts) --res $res skipped: $left s of the call left" >>"$L"
    continue
  fi
  echo "== $(ts) torch.compile anchor --res $res --batch $batch started (background, timeout $left s)" >>"$L"
  (
    timeout "$left" python3 .gpu/torch_nextdit_lora.py --res "$res" --batch "$batch" --compile >"$OUT/compile$res-$batch.log" 2>&1
    echo "== $(ts) torch.compile anchor --res $res ended rc=$?" >>"$L"
  ) &
  tp=$!
  echo "== $(ts) ours bench --res $res --batch $batch --checkpointing $ckpt started" >>"$L"
  # shellcheck disable=SC2086 # COMPILE_BENCH_ARGS is a list of words
  timeout 200 .gpu/newbie-train bench --res "$res" --batch "$batch" --checkpointing "$ckpt" --steps 10 --warmup 3 ${COMPILE_BENCH_ARGS:-} >>"$L" 2>&1 || status=1
  echo "== $(ts) ours --res $res ended" >>"$L"
  if ! kill -0 $tp 2>/dev/null; then
    echo "== --res $res: torch ended before ours: the two may have overlapped, do not compare" >>"$L"
    status=1
  fi
  wait $tp || status=1
  grep '^{' "$OUT/compile$res-$batch.log" >>"$L"
done
grep -E '^(==|\| (off|on|all on|off: [a-z,]+) |\{)' "$L"
exit $status
