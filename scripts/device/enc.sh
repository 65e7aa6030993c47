#!/usr/bin/env bash
# The text encoders on the H200 (issue 11): golden parity on the CUDA backend,
# then encode throughput and peak memory of full-size Gemma 3 4B and Jina CLIP
# v2 (random bf16 weights) beside PyTorch on the same card, in one call.
#
# Build on the development machine (no CUDA needed), from the repository root:
#
#   go test -c -o .gpu/textenc.test ./models/textenc
#   CGO_ENABLED=0 go build -o .gpu/newbie-train ./cmd/newbie-train
#   rm -rf .gpu/golden && mkdir -p .gpu/golden && cp -r ../shared/golden/gemma3 ../shared/golden/jina ../shared/golden/vae .gpu/golden/
#
# then on the device machine, from the repository root with .gpu carried:
#
#   bash scripts/device/enc.sh
#
# Logs go to $OUT (parity.log, go_throughput.log, torch_gemma3.log,
# torch_jina.log, summary.log). About 3 minutes; each step has its own
# timeout so one hang does not take the rest.
set -u
OUT=${OUT:-/tmp/enc-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/newbie-cache}
G=$PWD/.gpu/golden
export NEWBIE_GOLDEN=$G
status=0

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  git log -1 --format='commit %H' 2>/dev/null || true
} >"$OUT/summary.log" 2>&1

# 1. Golden parity of the three encoders on the GPU, every precision.
for enc in gemma jina vae; do
  case $enc in
    gemma) w=$G/gemma3/gemma_tiny.weights.safetensors; g=$G/gemma3/gemma_tiny.golden.safetensors ;;
    jina) w=$G/jina/jina_tiny.weights.safetensors; g=$G/jina/jina_tiny.golden.safetensors ;;
    vae) w=$G/vae/vae_tiny.weights.safetensors; g=$G/vae/vae_tiny.golden.safetensors ;;
  esac
  for p in fp64 fp32 bf16; do
    if ! timeout 120 .gpu/newbie-train parity --encoder $enc --weights "$w" --golden "$g" --precision $p --backend cuda >>"$OUT/parity.log" 2>&1; then
      echo "parity $enc $p: FAILED" >>"$OUT/summary.log"
      status=1
    fi
  done
done
grep -E "^(encoder parity|PASS|newbie-train:)" "$OUT/parity.log" >>"$OUT/summary.log"

# 2. Our throughput (the Go test prints one line per encoder and shape).
NEWBIE_ENC_BENCH=1 timeout 240 .gpu/textenc.test -test.v -test.run 'TestEncodeThroughputCUDA' >"$OUT/go_throughput.log" 2>&1 || status=1

# 3. PyTorch on the same card: transformers' Gemma3TextModel, and the Jina
#    anchor (checked against the golden on the CPU first).
timeout 240 python3 scripts/torch_gemma3_encode.py >"$OUT/torch_gemma3.log" 2>&1 || status=1
timeout 180 python3 scripts/torch_jina_encode.py --golden "$G/jina" >"$OUT/torch_jina.log" 2>&1 || status=1

grep -hE "tokens/s|rel err|^torch |FAIL|Error|error" "$OUT/go_throughput.log" "$OUT/torch_gemma3.log" "$OUT/torch_jina.log" >>"$OUT/summary.log"
cat "$OUT/summary.log"
exit $status
