#!/usr/bin/env bash
# scripts/device/ncu-attn.sh: Nsight Compute on one launch each of the
# Hopper attention forward and backward of a main block at 1024² (4352
# tokens, 24 heads of 96), inside one bench step with graphs off: speed of
# light, occupancy, launch statistics and warp stall reasons, for deciding
# where the attention kernels lose time. The first six attention launches
# are the refiners' (4096 and 256 tokens), so each kernel skips its first
# four (the backward runs in reverse: the main blocks' come first).
# Writes $OUT/ncu-attn-fwd.txt and ncu-attn-bwd.txt; about a minute each.
set -u
OUT=${OUT:-out}
mkdir -p "$OUT"
NCU=${NCU:-/usr/local/cuda/bin/ncu}
for k in fwd:attn_fwd_wg96:4 bwd:attn_bwd_wg96:0; do
  IFS=: read -r tag name skip <<<"$k"
  NEWBIE_TRAIN_CUDA_OFF=graphs timeout 150 "$NCU" --clock-control none --kernel-name "$name" --launch-skip "$skip" --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    --section ComputeWorkloadAnalysis \
    .gpu/newbie-train bench --res 1024 --batch 1 --checkpointing off --steps 1 --warmup 1 >"$OUT/ncu-attn-$tag.txt" 2>&1
  echo "ncu $tag rc=$?"
done
