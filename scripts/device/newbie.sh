#!/usr/bin/env bash
# NewBie-image-Exp0.1 as a pipeline at full size on the H200 (issue 12,
# part 1), with random weights written there in the official Hugging Face
# layout: the folder's size and write time, `newbie-train inspect` on it,
# the generated tokenizers against Hugging Face's own tokenizers library,
# then the cache step's three phases (FLUX VAE, Gemma 3 4B, Jina CLIP v2)
# on 32 generated 1024² images and their XML captions, one phase after the
# other, under a 14 GiB budget (a 16 GB card's): each phase's load and
# encode time, its memory estimate made before it started, and its
# measured peak (the caching allocator's counter, reset per phase).
#
# Build on the development machine (no CUDA needed), from the repository root:
#
#   CGO_ENABLED=0 go build -o .gpu/newbie-train ./cmd/newbie-train
#   go test -c -o .gpu/newbie.test ./models/newbie
#   go test -c -o .gpu/cuda.test ./kernels/cuda
#
# then on the device machine, from the repository root with .gpu carried:
#
#   bash scripts/device/newbie.sh
#
# The model folder goes to $NEWBIE_MODEL_DIR (default /tmp/newbie-exp0.1-random,
# about 16.2 GB: transformer 6.49 GiB, Gemma 3 7.23 GiB, Jina 1.06 GiB, VAE
# 0.31 GiB) and is removed at the end unless NEWBIE_KEEP_MODEL=1.
# NEWBIE_DIFFUSERS=1 also writes and inspects the diffusers layout (another
# 16 GB, about a minute more). Logs go to $OUT (write.log, inspect.txt,
# inspect.json, tokenizers.log, phases.txt, phases.log, gpu_tests.log,
# summary.log). About 4 minutes; each step has its own timeout.
set -u
OUT=${OUT:-/tmp/newbie-out}
mkdir -p "$OUT"
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/newbie-cache}
M=${NEWBIE_MODEL_DIR:-/tmp/newbie-exp0.1-random}
NT=$PWD/.gpu/newbie-train
status=0
S="$OUT/summary.log"

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free --format=csv,noheader
  nproc
  git log -1 --format='commit %H' 2>/dev/null || true
  df -h "$(dirname "$M")" | tail -1
} >"$S" 2>&1

# 1. The full-size random model, official layout.
rm -rf "$M"
start=$(date +%s)
if ! timeout 420 "$NT" dev write-random-model --layout hf --size full --out "$M" >"$OUT/write.log" 2>&1; then
  echo "write-random-model: FAILED" >>"$S"
  cat "$S"
  exit 1
fi
end=$(date +%s)
tail -1 "$OUT/write.log" >>"$S"
echo "wall time writing, fsyncs included: $((end - start)) s; on disk: $(du -sh "$M" | cut -f1)" >>"$S"

# 2. What inspect says of it.
timeout 120 "$NT" inspect "$M" >"$OUT/inspect.txt" 2>&1 || status=1
timeout 120 "$NT" inspect --json "$M" >"$OUT/inspect.json" 2>&1 || status=1
cat "$OUT/inspect.txt" >>"$S"

# 3. The generated tokenizers through Hugging Face's tokenizers library: the
#    same ids as ours on NewBie captions (they are real tokenizer.json files).
cat >"$OUT/texts.jsonl" <<'EOF'
"You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> <character_1><n>girl_3</n><gender>1girl</gender><appearance>blue eyes, long hair, smile</appearance></character_1><general_tags>masterpiece, best quality</general_tags>"
"<character_1><n>girl_0</n><gender>1girl</gender><appearance>blonde hair, twintails, school uniform</appearance><expression>blush</expression></character_1>"
"1girl, solo, looking at viewer, cherry blossoms, night, city"
"éclair ☕ 東京  two  spaces   and  trailing "
""
EOF
for tok in "$M/text_encoder/tokenizer.json" "$M/clip_model/tokenizer.json"; do
  timeout 60 "$NT" tokenize --tokenizer "$tok" --jsonl <"$OUT/texts.jsonl" >"$OUT/ours.$(basename "$(dirname "$tok")").jsonl" 2>>"$OUT/tokenizers.log" || status=1
  # (from $OUT: the repository's tokenizers/ folder would shadow the library)
  (cd "$OUT" && timeout 60 python3 - "$tok" "$OUT/texts.jsonl" "$OUT/ours.$(basename "$(dirname "$tok")").jsonl") >>"$OUT/tokenizers.log" 2>&1 <<'EOF' || status=1
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
ours = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
bad = [i for i, (t, o) in enumerate(zip(texts, ours)) if tok.encode(t, add_special_tokens=True).ids != o]
print(f"{sys.argv[1]}: {len(texts) - len(bad)} of {len(texts)} texts give Hugging Face's ids" + (f"; differ: {bad}" if bad else ""))
sys.exit(1 if bad or len(ours) != len(texts) else 0)
EOF
done
cat "$OUT/tokenizers.log" >>"$S"

# 4. The cache step's phases: 32 generated 1024² images and their captions,
#    under a 16 GB card's 14 GiB budget (a phase above it would be refused
#    before it started).
if ! timeout 600 "$NT" dev encode-phases --model "$M" --backend cuda --images 32 --resolution 1024 \
  --image-batch 4 --text-batch 8 --budget-gib 14 >"$OUT/phases.txt" 2>"$OUT/phases.log"; then
  echo "encode-phases: FAILED" >>"$S"
  tail -5 "$OUT/phases.log" >>"$S"
  status=1
fi
cat "$OUT/phases.txt" >>"$S"

# 5. The GPU tests: the tiny model's phases within their estimates under the
#    caching allocator's size classes; the driver's free memory.
(cd models/newbie && timeout 120 "$OLDPWD/.gpu/newbie.test" -test.v -test.run 'TestPhasesCUDA') >"$OUT/gpu_tests.log" 2>&1 || status=1
(cd kernels/cuda && timeout 120 "$OLDPWD/.gpu/cuda.test" -test.v -test.run 'TestDeviceMemory') >>"$OUT/gpu_tests.log" 2>&1 || status=1
grep -E "^(--- |ok|FAIL|PASS)|peak|free" "$OUT/gpu_tests.log" >>"$S"

# 6. Optionally the diffusers layout at full size: written and inspected.
if [ "${NEWBIE_DIFFUSERS:-0}" = 1 ]; then
  D=$M-diffusers
  rm -rf "$D"
  timeout 420 "$NT" dev write-random-model --layout diffusers --size full --out "$D" >"$OUT/write_diffusers.log" 2>&1 || status=1
  tail -1 "$OUT/write_diffusers.log" >>"$S"
  timeout 120 "$NT" inspect "$D" >>"$S" 2>&1 || status=1
  rm -rf "$D"
fi

[ "${NEWBIE_KEEP_MODEL:-0}" = 1 ] || rm -rf "$M"
cat "$S"
exit $status
