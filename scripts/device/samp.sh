#!/usr/bin/env bash
# GPU checks and timings of `newbie-train sample` (issue 13), for the H200.
#
# Build here (no CUDA needed), from the repository root:
#   mkdir -p .gpu/golden/nextdit .gpu/golden/sampler
#   go test -c -o .gpu/pipeline.test ./sampler/pipeline
#   CGO_ENABLED=0 go build -o .gpu/newbie-train ./cmd/newbie-train
#   cp ../shared/golden/nextdit/tiny.weights.safetensors .gpu/golden/nextdit/
#   cp ../shared/golden/sampler/tiny.sample.golden.safetensors .gpu/golden/sampler/
#   cp ../shared/anchors/torch_nextdit_lora.py .gpu/
# then run `bash scripts/device/samp.sh` on the device machine (carry .gpu).
#
# Usage: bash scripts/device/samp.sh [all|ours|anchor|precision|pipeline]
# (default all; the anchor belongs in the same call as ours, split only if a
# call must be short; precision runs steps 4 and 5 alone, the precision
# table; pipeline runs step 6 alone, the whole `sample` command per
# precision — PIPELINE_PRECISIONS narrows it)
#
# What it does (estimated 5–7 minutes on one H200, most of it the two fp32
# runs; every step has its own timeout, all within the 10-minute call):
#   1. parity --sampling on the GPU in fp32: upstream's midpoint, Euler and
#      DPM-Solver++ runs replayed through our sampler (limit 1e-5).
#   2. sample with the tiny model in bf16 and fp16 (the fp16 overflow watch
#      on CUDA buffers), checking the PNGs come out.
#   3. BenchmarkCFGEvaluation: one guided evaluation (batch 2: cond + uncond,
#      256 caption tokens each) of the full model at 1024², bf16.
#   4. TestInferPrecisions: 50 Euler steps with CFG per precision (bf16,
#      fp32, fp16; INFER_PRECISIONS narrows it), seconds per image and peak
#      GPU memory of the DiT sampling, a FLUX VAE decode (random weights),
#      and the final latent's relative difference of fp16 and bf16 from fp32
#      on the same noise.
#   5. After each precision of 4, the PyTorch anchor in the same call:
#      torch_nextdit_lora.py --infer 50 --precision P.
# INFER_STEPS (default 50) sets the steps of 4 and 5 (fp32 is the slow one).
# Logs: $OUT/samp.log (everything) and $OUT/infer.jsonl (the JSON lines of
# steps 4 and 5) for docs/precision.md and docs/BENCHMARKS.md.
set -u
MODE=${1:-all}
G=.gpu
OUT=${OUT:-/tmp/samp-out}
mkdir -p "$OUT"
LOG="$OUT/samp.log"
JSONL="$OUT/infer.jsonl"
: >"$LOG"; : >"$JSONL"
export NEWBIE_GOLDEN="$PWD/$G/golden"
fail=0
step() { echo "== $*" | tee -a "$LOG"; }

# jsonl WHO: the JSON lines of stdin go to infer.jsonl tagged with WHO;
# everything goes to the log.
jsonl() { tee -a "$LOG" | grep '^{' | sed "s/^/{\"who\":\"$1\",\"line\":/; s/\$/}/" >>"$JSONL"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$LOG" 2>&1

if [ "$MODE" = all ] || [ "$MODE" = ours ]; then
step "1. parity --sampling (cuda, fp32)"
timeout 120 "$G/newbie-train" parity --backend cuda --precision fp32 \
  --weights "$G/golden/nextdit/tiny.weights.safetensors" \
  --sampling "$G/golden/sampler/tiny.sample.golden.safetensors" >>"$LOG" 2>&1 || { echo "parity FAILED" | tee -a "$LOG"; fail=1; }

step "2. sample, tiny model, bf16 and fp16 on cuda"
for p in bf16 fp16; do
  timeout 120 "$G/newbie-train" sample --device cuda --precision "$p" \
    --weights "$G/golden/nextdit/tiny.weights.safetensors" \
    --prompt "<character_1><n>girl</n></character_1>" --prompt "blue sky" \
    --width 256 --height 256 --steps 20 --batch-size 2 --out "$OUT/tiny-$p" --grid >>"$LOG" 2>&1 \
    || { echo "sample $p FAILED" | tee -a "$LOG"; fail=1; }
  ls -l "$OUT/tiny-$p" >>"$LOG" 2>&1
done
# keep only the bf16 grid (the file count coming back is limited)
mv "$OUT/tiny-bf16/grid.png" "$OUT/tiny-bf16-grid.png" 2>/dev/null
rm -rf "$OUT/tiny-bf16" "$OUT/tiny-fp16"

step "3. BenchmarkCFGEvaluation (full model, 1024², 256 caption tokens, bf16)"
timeout 180 "$G/pipeline.test" -test.run '^$' -test.bench BenchmarkCFGEvaluation -test.benchtime 10x >>"$LOG" 2>&1 \
  || { echo "benchmark FAILED" | tee -a "$LOG"; fail=1; }

fi

# Steps 4 and 5 per precision, ours then the anchor, each in a process of
# its own with its own timeout: bf16, fp32, then fp16 (its drift needs the
# fp32 latent, which NEWBIE_TRAIN_INFER_LATENTS keeps between processes).
LAT="$OUT/latents"; mkdir -p "$LAT"
for p in ${INFER_PRECISIONS:-bf16 fp32 fp16}; do
  case $p in fp32) tours=240; tanchor=180 ;; *) tours=150; tanchor=90 ;; esac
  if [ "$MODE" != anchor ] && [ "$MODE" != pipeline ]; then
    step "4. TestInferPrecisions $p (${INFER_STEPS:-50} Euler steps with CFG)"
    NEWBIE_TRAIN_INFER_STEPS=${INFER_STEPS:-50} NEWBIE_TRAIN_INFER_PRECISIONS=$p NEWBIE_TRAIN_INFER_LATENTS="$LAT" \
      timeout $tours "$G/pipeline.test" -test.run '^TestInferPrecisions$' -test.v -test.timeout 7m 2>&1 | jsonl newbie-train
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "TestInferPrecisions $p FAILED" | tee -a "$LOG"; fail=1; }
  fi
  if [ "$MODE" = all ] || [ "$MODE" = anchor ] || [ "$MODE" = precision ]; then
    step "5. PyTorch anchor --infer ${INFER_STEPS:-50} --precision $p"
    timeout $tanchor python3 "$G/torch_nextdit_lora.py" --infer "${INFER_STEPS:-50}" --precision "$p" 2>>"$LOG" | jsonl pytorch-eager
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "anchor $p FAILED" | tee -a "$LOG"; fail=1; }
  fi
done
rm -rf "$LAT"

if [ "$MODE" = pipeline ]; then
# 6. The whole pipeline per precision: a full-size random model folder in
# the official layout, then `sample` with one 1024² prompt, 50 Euler steps
# (--steps 51: grid points) with CFG — Gemma 3 and Jina CLIP v2 encode the
# prompt and the empty negative, the DiT samples, the FLUX VAE decodes, the
# PNG is written. Wall time of the command and its phase table.
M=${NEWBIE_MODEL_DIR:-/tmp/newbie-exp0.1-random}
step "6. whole pipeline: write-random-model --layout hf --size full"
rm -rf "$M"
timeout 300 "$G/newbie-train" dev write-random-model --layout hf --size full --out "$M" >>"$LOG" 2>&1 || { echo "write-random-model FAILED" | tee -a "$LOG"; fail=1; }
for p in ${PIPELINE_PRECISIONS:-bf16 fp16 fp32}; do
  step "6. sample --precision $p --sampler euler --steps 51 (50 Euler steps), 1024², CFG 5"
  start=$(date +%s.%N)
  timeout 300 "$G/newbie-train" sample --model "$M" --device cuda --precision "$p" --sampler euler --steps 51 --shift 6 --cfg 5 \
    --prompt "<character_1><n>demo_girl</n><gender>1girl</gender><appearance>red hair</appearance></character_1><general_tags>simple background</general_tags>" \
    --width 1024 --height 1024 --out "$OUT/pipe-$p" >"$OUT/pipe-$p.log" 2>&1 || { echo "sample $p FAILED" | tee -a "$LOG"; fail=1; }
  echo "{\"who\":\"pipeline\",\"precision\":\"$p\",\"wall_s\":$(awk "BEGIN{print $(date +%s.%N) - $start}")}" | tee -a "$LOG" >>"$JSONL"
  grep -E "^(phase|sample:|wrote)|rror|overflow" "$OUT/pipe-$p.log" | tee -a "$LOG" | tail -12
  rm -rf "$OUT/pipe-$p"
done
rm -rf "$M"
fi

step "done (fail=$fail)"
exit $fail
