#!/usr/bin/env bash
# NCCL through purego on the GPU machine: world size 1 on one GPU (a sum and
# a broadcast are the identity, an abort returns), and — where 2 GPUs are
# visible — two ranks in one process against the float64 sum, a stopped
# peer turned into an error within the timeout, and two launched processes
# (dist.Launch, dist.Open) of which one dies and the other fails at once.
# The tests that need 2 GPUs skip on one.
#
# Build here (no CUDA needed), from the repository root:
#   CGO_ENABLED=0 go test -c -o .gpu/cuda.test ./kernels/cuda
#   CGO_ENABLED=0 go test -c -o .gpu/dist.test ./dist
# Run there: bash scripts/device/dist.sh   (logs under $OUT)
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
for b in .gpu/cuda.test .gpu/dist.test; do
  [ -x "$b" ] || { echo "missing $b: build it first (see the header)" | tee "$OUT/dist-summary.txt"; exit 2; }
done
# NVLink multicast stays off on these machines; the program sets it too
# when it is unset, and the log says what NCCL saw.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
{
  date -u
  nvidia-smi -L
  python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())' 2>&1
} >"$OUT/dist-machine.txt" 2>&1

run_nccl() { # $1: log name
  timeout 240 .gpu/cuda.test -test.run 'NCCL' -test.v -test.count=1 -test.timeout 230s >"$OUT/$1" 2>&1
  echo $?
}
rc=$(run_nccl nccl.log)
if grep -q "no NCCL here" "$OUT/nccl.log"; then
  # Our own search did not find libnccl.so.2: say where PyTorch keeps it
  # and run again with that folder on LD_LIBRARY_PATH.
  dir=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null)
  echo "libnccl.so.2 not found by the program's own search; PyTorch's is in ${dir:-?}" >>"$OUT/dist-machine.txt"
  if [ -n "$dir" ]; then
    rc=$(LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" run_nccl nccl-ld-library-path.log)
  fi
fi
timeout 120 .gpu/dist.test -test.v -test.count=1 >"$OUT/dist.log" 2>&1
drc=$?
{
  echo "kernels/cuda NCCL tests: exit $rc"
  grep -E '^(--- |ok|FAIL|PASS)|nccl_test.go' "$OUT"/nccl*.log
  echo "dist tests: exit $drc"
  grep -E '^(--- FAIL|ok|FAIL|PASS)' "$OUT/dist.log"
} | tee "$OUT/dist-summary.txt"
[ "$rc" = 0 ] && [ "$drc" = 0 ]
