#!/usr/bin/env bash
# Data-parallel training on the GPU machine.
#
# Always (one H200 is enough):
#   - the NCCL bindings' and the dist package's own tests (world size 1; the
#     tests that need 2 GPUs skip on one);
#   - world size 1 through real NCCL equals the plain run: the tiny demo on
#     the cuda backend in fp32 and bf16, as a plain run, as a job of one
#     (RANK=0 WORLD_SIZE=1 …: the data-parallel path, an NCCL communicator of
#     one) and, where torchrun is installed, under `torchrun --no_python
#     --nproc_per_node 1`; the full model (random weights, `bench`) the same
#     way. Their losses must be equal bit for bit.
# Where 2 GPUs are visible (nvidia-h200-x2):
#   - the tiny demo on 2 GPUs (`--gpus 2`, and torchrun) against one GPU with
#     gradient_accumulation 2: every step's loss, bit for bit or the largest
#     relative difference;
#   - the full model (`bench`, random bf16 weights, 1024², no checkpointing):
#     2 GPUs × 1 micro-batch against 1 GPU × 2 micro-batches (losses, which
#     differ only by the order of the gradient sum) and samples/s of 2 GPUs
#     against 1 GPU × 1 micro-batch (the scaling);
#   - two ranks started as torchrun starts them, one killed with SIGKILL
#     mid-run: the other must exit with an error naming it, within seconds.
#
# Build here (no CUDA needed), from the repository root:
#   CGO_ENABLED=0 go build -o .gpu/newbie-train ./cmd/newbie-train
#   CGO_ENABLED=0 go test -c -o .gpu/cuda.test ./kernels/cuda
#   CGO_ENABLED=0 go test -c -o .gpu/dist.test ./dist
# Run there: bash scripts/device/dist.sh   (logs under $OUT; about 3 minutes
# on one GPU, 5 on two)
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.."
for b in .gpu/newbie-train .gpu/cuda.test .gpu/dist.test; do
  [ -x "$b" ] || { echo "missing $b: build it first (see the header)" | tee "$OUT/dist-summary.txt"; exit 2; }
done
BIN=$(pwd)/.gpu/newbie-train
# NVLink multicast stays off on these machines; the program sets it too
# when it is unset, and the log says what NCCL saw.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
{
  date -u
  nvidia-smi -L
  python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version(), "gpus", torch.cuda.device_count())' 2>&1
} >"$OUT/dist-machine.txt" 2>&1
# torchrun, as PyTorch installs it (the underscore spellings of its flags
# are the ones every version takes).
TORCHRUN=()
if command -v torchrun >/dev/null; then
  TORCHRUN=(torchrun)
elif python3 -c 'import torch.distributed.run' 2>/dev/null; then
  TORCHRUN=(python3 -m torch.distributed.run)
fi
echo "torchrun: ${TORCHRUN[*]:-none}" >>"$OUT/dist-machine.txt"

SUMMARY="$OUT/dist-summary.txt"
: >"$SUMMARY"
FAILED=0
say() { echo "$*" | tee -a "$SUMMARY"; }
fail() { say "FAIL: $*"; FAILED=1; }

# --- the bindings' and the package's own tests -----------------------------
run_nccl() { # $1: log name
  timeout 240 .gpu/cuda.test -test.run 'NCCL' -test.v -test.count=1 -test.timeout 230s >"$OUT/$1" 2>&1
  echo $?
}
rc=$(run_nccl nccl.log)
if grep -q "no NCCL here" "$OUT/nccl.log"; then
  # Our own search did not find libnccl.so.2: say where PyTorch keeps it
  # and use that folder from here on.
  dir=$(python3 -c 'import os, nvidia.nccl as n; print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null)
  echo "libnccl.so.2 not found by the program's own search; PyTorch's is in ${dir:-?}" >>"$OUT/dist-machine.txt"
  if [ -n "$dir" ]; then
    export LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    rc=$(run_nccl nccl-ld-library-path.log)
  fi
fi
timeout 120 .gpu/dist.test -test.v -test.count=1 >"$OUT/dist.log" 2>&1
drc=$?
say "kernels/cuda NCCL tests: exit $rc"
grep -E '^(--- |ok|FAIL|PASS)|nccl_test.go' "$OUT"/nccl*.log | tee -a "$SUMMARY"
say "dist tests: exit $drc"
grep -E '^(--- FAIL|ok|FAIL|PASS)' "$OUT/dist.log" | tee -a "$SUMMARY"
[ "$rc" = 0 ] || FAILED=1
[ "$drc" = 0 ] || FAILED=1

# --- helpers ----------------------------------------------------------------
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# job N RANK: the torchrun variables of rank RANK of a job of N on this host.
job() { echo "RANK=$2 WORLD_SIZE=$1 LOCAL_RANK=$2 LOCAL_WORLD_SIZE=$1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$PORT"; }
# same NAME A B: compare two JSONL logs' losses step by step.
same() {
  python3 - "$2" "$3" <<'EOF' >"$OUT/compare-$1.txt" 2>&1
import json, sys
def losses(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(p))}
a, b = losses(sys.argv[1]), losses(sys.argv[2])
if sorted(a) != sorted(b) or not a:
    print(f"steps differ: {sorted(a)} vs {sorted(b)}"); sys.exit(1)
worst = max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-30) for s in a)
equal = all(a[s] == b[s] for s in a)
print(f"{len(a)} steps, " + ("bitwise equal" if equal else f"largest relative difference {worst:.3g}"))
sys.exit(0 if equal else 3)
EOF
  local rc=$?
  say "$1: $(cat "$OUT/compare-$1.txt")"
  return $rc
}
# bench-losses LOG: the losses line of a bench table.
bench_losses() { grep '^losses, checkpointing off:' "$1" | cut -d: -f2; }
bench_sps() { grep '^| off |' "$1" | awk -F'|' '{gsub(/ /, "", $6); print $6}'; }

"$BIN" demo --dir "$WORK/demo" --steps 1 --images 8 >"$OUT/demo-setup.log" 2>&1 || fail "demo setup (see demo-setup.log)"
CFG="$WORK/demo/demo.yaml"
tiny() { # NAME [more args]: the tiny demo on the cuda backend into $WORK/NAME
  local name=$1; shift
  echo --config "$CFG" --set device=cuda --set train.max_steps=24 --set train.warmup_steps=2 \
    --set logging.every=1 --set save.every=0 --set save.output="$WORK/$name" "$@"
}
log() { echo "$WORK/$1/demo_lora.jsonl"; }

# --- world size 1 through NCCL = the plain run --------------------------------
for prec in fp32 bf16; do
  timeout 120 "$BIN" $(tiny plain-$prec --set precision=$prec) >"$OUT/tiny-plain-$prec.log" 2>&1 || fail "tiny plain $prec (see tiny-plain-$prec.log)"
  PORT=$(freeport)
  env $(job 1 0) timeout 120 "$BIN" $(tiny nccl1-$prec --set precision=$prec) >"$OUT/tiny-nccl1-$prec.log" 2>&1 || fail "tiny job of one $prec (see tiny-nccl1-$prec.log)"
  grep -q "data parallel: 1 ranks" "$OUT/tiny-nccl1-$prec.log" || fail "the job of one did not run the data-parallel path ($prec)"
  same "tiny $prec: job of one through NCCL vs plain" "$(log nccl1-$prec)" "$(log plain-$prec)" || FAILED=1
  if [ ${#TORCHRUN[@]} -gt 0 ]; then
    timeout 180 "${TORCHRUN[@]}" --no_python --standalone --nproc_per_node 1 "$BIN" $(tiny torchrun1-$prec --set precision=$prec) >"$OUT/tiny-torchrun1-$prec.log" 2>&1 || fail "tiny under torchrun, 1 process, $prec (see tiny-torchrun1-$prec.log)"
    same "tiny $prec: torchrun --nproc-per-node 1 vs plain" "$(log torchrun1-$prec)" "$(log plain-$prec)" || FAILED=1
  fi
done

BENCH="bench --checkpointing off --steps 8 --warmup 2"
timeout 240 "$BIN" $BENCH >"$OUT/bench-1gpu.log" 2>&1 || fail "full model, 1 GPU (see bench-1gpu.log)"
PORT=$(freeport)
env $(job 1 0) timeout 240 "$BIN" $BENCH >"$OUT/bench-nccl1.log" 2>&1 || fail "full model, job of one (see bench-nccl1.log)"
# The full model is not bitwise repeatable on Hopper even on one process:
# the tensor-core attention backward adds dQ with atomics. So the job of one
# is held to the run-to-run spread of the plain run instead: 1e-4 relative
# per step (2026-12-02: the largest difference was 6e-5).
a=$(bench_losses "$OUT/bench-nccl1.log"); b=$(bench_losses "$OUT/bench-1gpu.log")
if [ -n "$b" ] && python3 -c 'import sys; a,b=[list(map(float,x.split())) for x in sys.argv[1:3]]; d=max(abs(x-y)/abs(y) for x,y in zip(a,b)); print(d); sys.exit(0 if len(a)==len(b) and d<=1e-4 else 1)' "$a" "$b" >"$OUT/full-diff.txt"; then
  say "full model: job of one through NCCL vs plain: 8 steps within $(cat "$OUT/full-diff.txt") relative (attention backward not bitwise on Hopper)"
else
  fail "full model: job of one through NCCL vs plain:$a vs$b"
fi
say "full model, 1 GPU × 1 micro-batch: $(bench_sps "$OUT/bench-1gpu.log") samples/s"

if [ "$GPUS" -lt 2 ]; then
  say "only $GPUS GPU visible: the 2-GPU checks did not run"
  [ "$FAILED" = 0 ] && say "PASS (one GPU)"
  exit $FAILED
fi

# --- 2 GPUs --------------------------------------------------------------------
timeout 120 "$BIN" $(tiny accum2 --set train.gradient_accumulation=2) >"$OUT/tiny-accum2.log" 2>&1 || fail "tiny, 1 GPU × 2 (see tiny-accum2.log)"
timeout 180 "$BIN" --gpus 2 $(tiny gpus2) >"$OUT/tiny-gpus2.log" 2>&1 || fail "tiny --gpus 2 (see tiny-gpus2.log)"
grep -q "data parallel: 2 ranks" "$OUT/tiny-gpus2.log" || fail "--gpus 2 did not run a job of 2 ranks (see tiny-gpus2.log)"
# Equal bit for bit unless a kernel's result depends on timing; any other
# difference is reported, not failed (the issue asks for bf16 rounding).
same "tiny: --gpus 2 vs 1 GPU with gradient_accumulation 2" "$(log gpus2)" "$(log accum2)"
[ $? = 1 ] && FAILED=1
if [ ${#TORCHRUN[@]} -gt 0 ]; then
  timeout 180 "${TORCHRUN[@]}" --no_python --standalone --nproc_per_node 2 "$BIN" $(tiny torchrun2) >"$OUT/tiny-torchrun2.log" 2>&1 || fail "tiny under torchrun, 2 processes (see tiny-torchrun2.log)"
  same "tiny: torchrun --nproc-per-node 2 vs 1 GPU with gradient_accumulation 2" "$(log torchrun2)" "$(log accum2)"
  [ $? = 1 ] && FAILED=1
fi

timeout 240 "$BIN" $BENCH --accum 2 >"$OUT/bench-accum2.log" 2>&1 || fail "full model, 1 GPU × 2 (see bench-accum2.log)"
timeout 300 "$BIN" $BENCH --gpus 2 >"$OUT/bench-gpus2.log" 2>&1 || fail "full model, 2 GPUs (see bench-gpus2.log)"
python3 - "$(bench_losses "$OUT/bench-gpus2.log")" "$(bench_losses "$OUT/bench-accum2.log")" <<'EOF' | tee -a "$SUMMARY"
import sys
a, b = [list(map(float, s.split())) for s in sys.argv[1:3]]
if not a or len(a) != len(b):
    print(f"FAIL: full model losses: 2 GPUs {a}, 1 GPU × 2 {b}"); sys.exit()
worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"full model: 2 GPUs × 1 vs 1 GPU × 2: {len(a)} steps, " + ("bitwise equal" if a == b else f"largest relative difference {worst:.3g}"))
EOF
s1=$(bench_sps "$OUT/bench-1gpu.log"); s2=$(bench_sps "$OUT/bench-gpus2.log"); sa=$(bench_sps "$OUT/bench-accum2.log")
say "full model samples/s: 1 GPU × 1 $s1, 1 GPU × 2 $sa, 2 GPUs × 1 $s2 (scaling $(python3 -c "print(f'{$s2/$s1:.2f}')" 2>/dev/null)× of 1 GPU)"

# A rank killed mid-run: the other fails at once, naming it.
PORT=$(freeport)
long=$(tiny killed --set train.max_steps=100000)
env $(job 2 0) "$BIN" $long >"$OUT/killed-rank0.log" 2>&1 &
p0=$!
env $(job 2 1) "$BIN" $long >"$OUT/killed-rank1.log" 2>&1 &
p1=$!
for _ in $(seq 600); do grep -q "step 5/" "$OUT/killed-rank0.log" && break; sleep 0.1; done
if grep -q "step 5/" "$OUT/killed-rank0.log"; then
  kill -9 $p1
  t0=$(date +%s.%N)
  for _ in $(seq 600); do kill -0 $p0 2>/dev/null || break; sleep 0.1; done
  if kill -0 $p0 2>/dev/null; then
    fail "rank 0 still runs 60 s after rank 1 was killed"
    kill -9 $p0
  fi
  wait $p0
  rc0=$?
  dt=$(python3 -c "import time; print(f'{time.time() - $t0:.2f}')")
  if [ "$rc0" -ne 0 ] && grep -q "rank 1" "$OUT/killed-rank0.log"; then
    say "killed rank: rank 0 exited $rc0 ${dt}s after rank 1's SIGKILL: $(tail -1 "$OUT/killed-rank0.log")"
  else
    fail "killed rank: rank 0 exited $rc0 (see killed-rank0.log)"
  fi
else
  fail "the job for the kill test did not reach step 5 (see killed-rank*.log)"
  kill -9 $p0 $p1 2>/dev/null
fi
wait 2>/dev/null

[ "$FAILED" = 0 ] && say "PASS (two GPUs)"
exit $FAILED
