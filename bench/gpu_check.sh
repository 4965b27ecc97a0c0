#!/usr/bin/env bash
# Run on the GPU machine (device tool: carry [".gpu"], command `bash bench/gpu_check.sh`, timeout_s 600),
# after bench/gpu_prepare.sh here. Everything issue 6 asks of a GPU in one pass, under 10 minutes:
# baby-gpt and gpt2-124m against nanoGPT (both compiled) with peak memory and MFU, then the CUDA tests
# (tests/test_cuda.py: bf16, compile, float16 + GradScaler, resume, generation, torchrun over NCCL).
# Logs land in $OUT (the device tool brings them back) or ./gpu-logs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NANOGPT_SHARED=$PWD/.gpu/shared
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site
{
  nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  # the targets first, each stage capped so that one hang cannot eat the whole call (600 s at most)
  echo "== baby-gpt"; timeout 210 python3 bench/train_speed.py --device cuda --preset baby-gpt --steps 200 --skip 50 \
      --json "$OUT/baby-gpt.json"
  echo "== gpt2-124m"; timeout 200 python3 bench/train_speed.py --device cuda --preset gpt2-124m --grad-accum 1 \
      --steps 30 --skip 10 --block 5 --data-dir .gpu/data-gpt2 --json "$OUT/gpt2-124m.json"
  echo "== CUDA tests"; timeout 160 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
} 2>&1 | tee "$OUT/gpu_check.log"
