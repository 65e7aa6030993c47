#!/usr/bin/env bash
# scripts/device/profile.sh: where the device time of a training step and of
# a guided evaluation goes, for one call on an H200 (about 5 minutes), with
# the CUDA suites first so that the profiled build is a checked one.
#
# Build here first, from the repository root, and carry .gpu:
#   CGO_ENABLED=0 go test -c -ldflags='-s -w' -o .gpu/cuda.test ./kernels/cuda
#   CGO_ENABLED=0 go build -ldflags='-s -w' -o .gpu/newbie-train ./cmd/newbie-train
#
# Each profile is `bench --profile`: a counting step, then a step with device
# events around every op (kernels.DeviceTimer; graphs off for that step), so
# the per-kind times are device time, not op + wait. PROFILE_RES lists the
# training buckets (default "1024 768"); PROFILE_SUITES=0 skips the suites.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/nt-cache}
ROOT=$PWD
. "$(dirname "$0")/lib.sh" # step, status
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
if [ "${PROFILE_SUITES:-1}" != 0 ]; then
  cd kernels/cuda
  step "cuda suites" cuda-tests.log "$ROOT/.gpu/cuda.test" -test.v -test.count=1 -test.timeout=240s \
    -test.run 'TestConformance|TestAgainstCPU|TestFaults|TestMemorySteady|TestGraphsMatchPlain|TestGraphsTrainSameBits|TestThinGemm|TestDeviceTimer'
  cd "$ROOT"
fi
for res in ${PROFILE_RES:-1024 768}; do
  ckpt=off
  [ "$res" = 1024 ] && ckpt=both
  step "bench --res $res --profile" "bench-$res.log" timeout 150 .gpu/newbie-train bench --res "$res" --batch 1 \
    --checkpointing "$ckpt" --steps 5 --warmup 3 --profile
done
step "bench --infer --profile" bench-infer.log timeout 100 .gpu/newbie-train bench --res 1024 --infer 10 --warmup 3 --profile
{
  echo "== failures"
  grep -hE -- '--- FAIL|^FAIL|panic:|failed:' "$OUT"/*.log | head -40
  grep -hE -- 'timer_test.go' "$OUT"/cuda-tests.log 2>/dev/null
  for f in "$OUT"/bench-*.log; do echo "== $f"; grep -E '^\| |^profile|graphs:' "$f" | head -60; done
  cat "$OUT/summary.txt"
} >"$OUT/report.txt"
tail -c 11000 "$OUT/report.txt"
exit $status
