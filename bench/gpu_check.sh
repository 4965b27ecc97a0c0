#!/usr/bin/env bash
# Run on the GPU machine (device tool: carry [".gpu"], command `bash bench/gpu_check.sh`, timeout_s 600),
# after bench/gpu_prepare.sh here. Everything issue 6 asks of a GPU in one pass, ~5-7 minutes on an H100:
# the CUDA tests (tests/test_cuda.py: bf16, compile, float16 + GradScaler, resume, generation, torchrun
# over NCCL), then baby-gpt and gpt2-124m against nanoGPT (both compiled) with peak memory and MFU.
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
  echo "== CUDA tests"; python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
  echo "== baby-gpt"; python3 bench/train_speed.py --device cuda --preset baby-gpt --steps 200 --skip 50 --json "$OUT/baby-gpt.json"
  echo "== gpt2-124m"; python3 bench/train_speed.py --device cuda --preset gpt2-124m --grad-accum 1 --steps 40 --skip 15 \
      --block 5 --data-dir .gpu/data-gpt2 --json "$OUT/gpt2-124m.json"
} 2>&1 | tee "$OUT/gpu_check.log"
