#!/usr/bin/env bash
# All GPU measurement in one run of at most 8 minutes (GPU time comes in 15-minute rentals, start-up included).
# Run on the GPU machine after bench/gpu_prepare.sh here (device tool: carry [".gpu"], command
# `bash bench/gpu_check.sh`, timeout_s 540). Stages, each capped with `timeout` and by what is left of BUDGET:
#   1. ours, the default CUDA run (`nanogpt train`: baby-gpt, Muon + WSD; on char data), and 2. nanoGPT's train.py with
#      config/train_shakespeare_char.py, one after the other (each alone on the card, so neither's wall time
#      is the other's), each log stamped with seconds from launch -> the best validation loss, when it came,
#      and when ours reached nanoGPT's best (bench/time_to_best.py). nanoGPT stops at NANOGPT_ITERS (3000) of
#      its 5000: its config fixes lr_decay_iters=5000, so its curve up to there is the full run's, and its best
#      came at 1750 (issue 21); only the time to the best is compared.
#   3. generation tokens/s, baby-gpt shape, batch 1 and --num-samples 64 (bench/generate_speed.py)
#   4. gpt2-124m MFU, ours (bench/train_speed.py --grad-accum 1)
#   5. the default CUDA run's step (baby-gpt, Muon) under each --compile-mode: default against reduce-overhead
#      (CUDA graphs), short per-step timings (bench/train_speed.py --compile-mode); max-autotune's kernel search
#      takes minutes, more than a rental has: COMPILE_MODES="default reduce-overhead max-autotune" to add it
#   6. tests/test_cuda.py
# Every table is written to $OUT as soon as it is made ($OUT: the device tool brings it back; else gpu-logs);
# $OUT/summary.md lists each stage's exit code and seconds. DRY=1 runs the same stages on CPU at toy sizes
# (no .gpu/ wheel needed): a check of the script's plumbing on a machine without a GPU, not a measurement.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
DRY=${DRY:-0}
BUDGET=${BUDGET:-470}  # seconds for all stages; with start-up and the wheel install, under 8 minutes
NANOGPT_ITERS=${NANOGPT_ITERS:-3000}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NANOGPT_SHARED=$PWD/.gpu/shared
if [ "$DRY" = 1 ]; then
  export PYTHONPATH=$PWD/src
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpu/whl/*.whl
  export PYTHONPATH=$PWD/src:/tmp/site
fi
WORK=$(mktemp -d)
STARTED=$SECONDS
echo "| stage | exit | seconds |" > "$OUT/summary.md"
echo "|---|---|---|" >> "$OUT/summary.md"

# cap NAME WANTED: the seconds a stage may run (WANTED, or less when the budget is nearly spent); 0 = skip it
cap() {
  local left=$((BUDGET - (SECONDS - STARTED)))
  if ((left < 20)); then echo "| $1 | skipped: ${left} s of the budget left | 0 |" >> "$OUT/summary.md"; echo 0; return; fi
  echo $((left < $2 ? left : $2))
}

# stage NAME WANTED CMD...: CMD under timeout, its output to $OUT/NAME.log (and the terminal), one summary row
stage() {
  local name=$1 limit t0=$SECONDS rc
  limit=$(cap "$1" "$2"); shift 2
  ((limit == 0)) && return 0
  echo "== $name (up to ${limit} s)"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT/summary.md"
}

# trained NAME WANTED DIR CMD...: a training run in DIR, its lines stamped with seconds from launch
trained() {
  local name=$1 limit t0=$SECONDS rc dir=$3
  limit=$(cap "$1" "$2"); shift 3
  ((limit == 0)) && return 0
  echo "== $name (up to ${limit} s)"
  (cd "$dir" && timeout -k 5 "$limit" "$@") 2>&1 | python3 bench/time_to_best.py stamp | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT/summary.md"
}

{
  if [ "$DRY" = 1 ]; then lscpu | head -15; else nvidia-smi -L; fi
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1-2. ours against nanoGPT's train.py to the best validation loss
cp -r "$NANOGPT_SHARED/reference/nanoGPT" "$WORK/nanoGPT"
mkdir -p "$WORK/ours"
if [ "$DRY" = 1 ]; then
  OURS=(--device cpu --preset cpu-small --steps 30 --validation-interval 10 --eval-iters 2 --eval-sample-tokens 0)
  THEIRS=(--device=cpu --compile=False --max_iters=30 --eval_interval=10 --eval_iters=2 --n_layer=2 --n_head=2
          --n_embd=64 --block_size=32 --batch_size=4 --dtype=float32)
else
  OURS=()
  THEIRS=(--max_iters="$NANOGPT_ITERS")
fi
# nanoGPT trains on characters: ours on the same files (the bundled default run would be a learned BPE)
python3 -m nanogpt prepare --tokenizer char --out-dir "$WORK/char" > /dev/null 2>&1
OURS+=(--data-dir "$WORK/char")
trained ours_train 130 "$WORK/ours" python3 -m nanogpt train --headless --out-dir "$WORK/ours/out" "${OURS[@]}"
trained nanogpt_train 140 "$WORK/nanoGPT" python3 train.py config/train_shakespeare_char.py "${THEIRS[@]}"
python3 bench/time_to_best.py table "$OUT/ours_train.log" "$OUT/nanogpt_train.log" \
    --json "$OUT/train_vs_nanogpt.json" > "$OUT/train_vs_nanogpt.md"
cat "$OUT/train_vs_nanogpt.md"

# 3. generation tokens/s
if [ "$DRY" = 1 ]; then GEN=(--device cpu --shape cpu-small --tokens 30 --rounds 1); N=4
else GEN=(--device cuda --shape baby-gpt --tokens 500 --rounds 3); N=64; fi
stage generate_batch1 50 python3 bench/generate_speed.py "${GEN[@]}" --slides default --json "$OUT/generate_batch1.json"
stage generate_samples$N 60 python3 bench/generate_speed.py "${GEN[@]}" --num-samples $N --slides default \
    --json "$OUT/generate_samples$N.json"

# 4. gpt2-124m MFU (ours; the reference side would double the compile time)
if [ "$DRY" = 1 ]; then
  stage train_speed 60 python3 bench/train_speed.py --preset cpu-small --steps 6 --skip 2 --block 2 \
      --no-reference --no-memory --json "$OUT/train_speed.json"
else
  stage gpt2-124m 110 python3 bench/train_speed.py --device cuda --preset gpt2-124m --grad-accum 1 --steps 30 \
      --skip 10 --block 5 --data-dir .gpu/data-gpt2 --no-reference --no-memory --json "$OUT/gpt2-124m.json"
fi

# 5. the step under each torch.compile mode (the default stays default until this has measured the others)
for MODE in ${COMPILE_MODES:-default reduce-overhead}; do
  if [ "$DRY" = 1 ]; then
    stage "compile_$MODE" 40 python3 bench/train_speed.py --preset cpu-small --compile off --compile-mode "$MODE" \
        --steps 6 --skip 2 --block 2 --no-reference --no-memory --json "$OUT/compile_$MODE.json"
  else
    stage "compile_$MODE" 60 python3 bench/train_speed.py --device cuda --preset baby-gpt --optimizer muon \
        --compile-mode "$MODE" --steps 60 --skip 20 --block 10 --no-reference --no-memory --json "$OUT/compile_$MODE.json"
  fi
done

# 6. the CUDA tests (on CPU in a dry run: the generation ones, NANOGPT_TEST_DEVICE=cpu)
if [ "$DRY" = 1 ]; then
  stage test_cuda 120 env NANOGPT_TEST_DEVICE=cpu python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
      -k "graph or num_samples"
else
  stage test_cuda 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
fi

echo "total $((SECONDS - STARTED)) s of a ${BUDGET} s budget" >> "$OUT/summary.md"
cat "$OUT/summary.md"
rm -rf "$WORK"
