#!/usr/bin/env bash
# scripts/device/vae.sh: the VAE / encode-phase GPU checks and timings of
# branch vae, for one call on an H200 device machine (about 4–5 minutes).
#
# Build here first, from the repository root (the device has no Go), and
# carry .gpu with the call:
#   CGO_ENABLED=0 go test -c -ldflags='-s -w' -o .gpu/cuda.test ./kernels/cuda
#   CGO_ENABLED=0 go test -c -ldflags='-s -w' -o .gpu/vae.test ./models/vae
#   mkdir -p .gpu/golden/vae && cp ../shared/golden/vae/vae_tiny.*.safetensors .gpu/golden/vae/
# (.gpu is then about 16 MB: carry [".gpu"].)
#
# It runs, each logging under $OUT:
#   1. the CUDA backend's suites: conformance, the CPU cross-checks (the new
#      Conv2D/vae/*, GroupNorm/fast/*, Attention/bf16/d64/jina-keylens and
#      Attention/bf16/d256/* cases among them), faults; NVRTC compile of the
#      new kernel files for sm_90a with ptxas's register report; then
#      compute-sanitizer memcheck and racecheck over the new kernels' cases;
#   2. the tiny golden VAE on the GPU (fp32, bf16, bf16 under autocast);
#   3. the full-width FLUX VAE: GPU bf16 against CPU fp32 at 64², and fast
#      paths on against off (NEWBIE_TRAIN_CUDA_OFF) at 256²;
#   4. timings: our encode 1024² / decode 128² latent in bf16, then the
#      PyTorch anchor (scripts/vae_anchor.py) in the same call, and the
#      anchor's float64 reproduction of the golden VAE;
# and prints a summary last. A fast path that fails can be set aside for a
# rerun with NEWBIE_TRAIN_CUDA_OFF=conv,groupnorm,attn256 (any subset).
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
export NEWBIE_GOLDEN="$PWD/.gpu/golden"
export NEWBIE_TRAIN_NVRTC_VERBOSE=1
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/nt-cache} # the NVRTC kernel cache
. "$(dirname "$0")/lib.sh" # step, status
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step "cuda conformance+cross-checks" cuda-tests.log .gpu/cuda.test -test.v -test.count=1 -test.timeout=200s \
  -test.run 'TestConformance|TestAgainstCPU|TestFaults|TestMemorySteady'
step "nvrtc compile of the new files" cuda-compile.log .gpu/cuda.test -test.v -test.count=1 -test.timeout=120s \
  -test.run 'TestKernelSourcesCompile/sm_90a/(conv_tc|groupnorm_fast|attention_tc).cu'
# compute-sanitizer over the cross-check cases of the new kernels: memcheck
# (out-of-bounds and misaligned accesses) on all of them, racecheck (shared
# memory hazards) on one small case of each.
step "memcheck new kernels" sanitizer-memcheck.log timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 \
  .gpu/cuda.test -test.count=1 -test.run 'TestAgainstCPU/(Conv2D/vae|GroupNorm/fast|Attention/bf16/d256|Attention/bf16/d64/jina)'
step "racecheck new kernels" sanitizer-racecheck.log timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 \
  .gpu/cuda.test -test.count=1 -test.run 'TestAgainstCPU/(Conv2D/vae/odd-plane-cout64|GroupNorm/fast/bf16-f32/no-affine|Attention/bf16/d256/bidirectional)$'
step "vae golden on cuda" vae-golden.log .gpu/vae.test -test.v -test.count=1 -test.run 'TestGoldenCUDA'
NEWBIE_VAE_FULL=1 step "flux vae fast paths" vae-full.log .gpu/vae.test -test.v -test.count=1 -test.timeout=120s \
  -test.run 'TestFLUXFastPathsCUDA'
NEWBIE_VAE_BENCH=1 step "flux vae timing (ours)" vae-speed.log .gpu/vae.test -test.v -test.count=1 -test.timeout=120s \
  -test.run 'TestFLUXSpeedCUDA'
step "flux vae timing (pytorch anchor)" anchor.log python3 scripts/vae_anchor.py --repeat 10 --json "$OUT/anchor.json"
step "anchor = golden vae (fp64)" anchor-golden.log python3 scripts/vae_anchor.py --check-golden .gpu/golden/vae

{
  echo "== failures"
  grep -hE -- '--- FAIL|^FAIL|panic:' "$OUT"/cuda-tests.log "$OUT"/cuda-compile.log "$OUT"/vae-*.log | head -40
  grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT"/sanitizer-*.log
  echo "== new kernels: registers / spills (sm_90a)"
  tr -d '\000' <"$OUT/cuda-compile.log" | grep -aA3 -E "entry function '(conv_tc|gn_|attn_fwd_tc256)" |
    grep -aE "entry function|spill|Used" | sed -n 1,60p
  echo "== accuracy"
  grep -hE 'rel err' "$OUT"/vae-full.log "$OUT"/anchor-golden.log
  echo "== timings"
  grep -hE '^\s+device_test.go:[0-9]+: (vae |cuda)' "$OUT/vae-speed.log"
  grep -hE '^\| |^#' "$OUT/anchor.log"
  cat "$OUT/summary.txt"
} | tee "$OUT/report.txt"
exit $status
