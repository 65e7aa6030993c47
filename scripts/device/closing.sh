#!/usr/bin/env bash
# scripts/device/closing.sh: one call on an H200 that measures ours beside
# torch.compile at 768² and 1024² (scripts/device/compile.sh) and, while
# torch.compile compiles (CPU-bound for minutes, the GPU idle), checks the
# build: the CUDA suites, golden parity and a 1024² profile in the first
# pair's compile, a
# fast path on and off (CLOSING_COMPARE, bench's --compare-off list; default
# ';graphs') in the second's; the PyTorch eager sampling anchor runs after
# the last pair. About 9.5 minutes. CLOSING_EXTRA, a command line, runs in the first idle time too
# (its output in extra.log); CLOSING_PROFILE=0 leaves out the profile.
#
# Build here first and carry .gpu:
#   CGO_ENABLED=0 go test -c -ldflags='-s -w' -o .gpu/cuda.test ./kernels/cuda
#   CGO_ENABLED=0 go build -ldflags='-s -w' -o .gpu/newbie-train ./cmd/newbie-train
#   cp ../shared/anchors/torch_nextdit_lora.py .gpu/
#   mkdir -p .gpu/golden/nextdit .gpu/golden/sampler and copy tiny.golden,
#   tiny.train.golden and tiny.weights (nextdit) and tiny.sample.golden.
#
# Each idle-time job starts only after our bench of that pair has ended and
# must end before torch.compile's run does; the log says when each began
# and ended, beside compile.sh's timestamps.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT/compile"
ROOT=$PWD
ts() { date -u +%H:%M:%S; }
log() { echo "== $(ts) $*" | tee -a "$OUT/closing.log"; }
waitfor() { # pattern: until compile.log shows it (or compile.sh ended)
  while ! grep -q "$1" "$OUT/compile/compile.log" 2>/dev/null; do
    kill -0 "$cp" 2>/dev/null || return 1
    sleep 1
  done
}
# CLOSING_PAIRS: compile.sh's pairs (default "768:off 1024:off"). The idle
# jobs follow the first pair's bench and the second's; with one pair, both
# follow the first (CLOSING_IDLE2=0 skips the second's).
read -r -a pairs <<<"${CLOSING_PAIRS:-768:off 1024:off}"
res1=${pairs[0]%%:*}
res2=${pairs[1]:-${pairs[0]}}
res2=${res2%%:*}
(OUT="$OUT/compile" bash scripts/device/compile.sh "${pairs[@]}" >"$OUT/compile/stdout.txt" 2>&1; echo "rc=$?" >>"$OUT/compile/stdout.txt") &
cp=$!

waitfor "ours --res $res1 ended" && {
  log "idle 1: CUDA suites"
  (cd kernels/cuda && "$ROOT/.gpu/cuda.test" -test.count=1 -test.timeout=120s \
    -test.run 'TestConformance|TestAgainstCPU|TestFaults|TestMemorySteady|TestGraphsMatchPlain|TestGraphsTrainSameBits|TestThinGemm|TestDeviceTimer' \
    >"$OUT/cuda-tests.log" 2>&1; echo "rc=$?" >>"$OUT/cuda-tests.log")
  log "idle 1: parity"
  G=.gpu/golden N=.gpu/golden/nextdit
  {
    .gpu/newbie-train parity --backend cuda --precision bf16 --golden $N/tiny.golden.safetensors --weights $N/tiny.weights.safetensors
    for p in fp32 bf16; do
      .gpu/newbie-train parity --backend cuda --precision $p --trajectory $N/tiny.train.golden.safetensors --weights $N/tiny.weights.safetensors
    done
    .gpu/newbie-train parity --backend cuda --precision fp32 --sampling $G/sampler/tiny.sample.golden.safetensors --weights $N/tiny.weights.safetensors
  } >"$OUT/parity.log" 2>&1
  if [ "${CLOSING_PROFILE:-1}" != 0 ]; then
    log "idle 1: bench --res 1024 --profile"
    timeout 90 .gpu/newbie-train bench --res 1024 --batch 1 --checkpointing off --steps 3 --warmup 2 --profile >"$OUT/profile-1024.log" 2>&1
  fi
  if [ -n "${CLOSING_EXTRA:-}" ]; then
    log "idle 1: $CLOSING_EXTRA"
    bash -c "$CLOSING_EXTRA" >"$OUT/extra.log" 2>&1
  fi
  log "idle 1: done"
}
[ "${CLOSING_IDLE2:-1}" != 0 ] && waitfor "ours --res $res2 ended" && {
  cmp=${CLOSING_COMPARE:-;graphs}
  log "idle 2: --compare-off '$cmp', training and sampling"
  timeout 80 .gpu/newbie-train bench --res 1024 --batch 1 --checkpointing off --steps 4 --warmup 2 --compare-off "$cmp" >"$OUT/ab-train.log" 2>&1
  timeout 60 .gpu/newbie-train bench --res 1024 --infer 8 --warmup 2 --compare-off "$cmp" >"$OUT/ab-infer.log" 2>&1
  log "idle 2: done"
}
wait $cp
# The eager anchor after the compiles, not beside one: with torch.compile
# compiling on the same CPU its launches slowed (0.2649 s against 0.2164 s
# a guided evaluation in the 2026-12-04 20:20 call).
if [ "${CLOSING_IDLE2:-1}" != 0 ]; then
  log "PyTorch eager sampling anchor"
  timeout 60 python3 .gpu/torch_nextdit_lora.py --res 1024 --infer 10 >"$OUT/anchor-infer.log" 2>&1
  log "anchor done"
fi
cat "$OUT/compile/stdout.txt"
grep -E '^\| (all on|off: [a-z,]+|as opened|off|on) ' "$OUT"/ab-*.log
grep -h s_per_eval "$OUT/anchor-infer.log"
grep -hE 'PASS|FAIL|parity failed' "$OUT/parity.log"
grep -E -- '^--- FAIL|^    --- FAIL|^rc=' "$OUT/cuda-tests.log" | head
cat "$OUT/closing.log"
