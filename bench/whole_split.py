"""Bits per byte of a run's best checkpoint on its whole validation split: the bench's score.

A run's own evaluations read `eval_iters` batches (a few hundred windows) to choose its best checkpoint while it
trains; on a text whose parts differ that sample is off the whole split by a percent or more. A benchmark that
compares runs by a few percent scores each one here instead: every non-overlapping window of the model's context
over val.bin, in float32, all nats over all target bytes (train.Stepper.evaluate's ratio of totals).

    PYTHONPATH=src python bench/whole_split.py RUN_FOLDER [RUN_FOLDER ...]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from nanogpt import checkpoint, data  # noqa: E402 - after the path
from nanogpt.tokenizers import from_meta  # noqa: E402


@torch.no_grad()
def whole_split_bpb(run: Path, batch: int = 64) -> float:
    """The bits per byte of the best checkpoint in run folder `run` (best.json) on its data's whole val.bin."""
    stem = run / json.loads((run / "best.json").read_text())["stem"]
    model, meta = checkpoint.load_model(stem)
    block = model.config.block_size
    val = data.load(Path(meta["train"]["data_dir"])).val
    token_bytes = torch.from_numpy(from_meta(meta["tokenizer"]).token_bytes())
    starts = np.arange(0, len(val) - block, block)  # each window reads block + 1 tokens: inputs and targets
    nats, n_bytes = 0.0, 0
    for i in range(0, len(starts), batch):
        windows = torch.from_numpy(val[starts[i:i + batch, None] + np.arange(block + 1)].astype(np.int64))
        _, loss = model(windows[:, :-1], windows[:, 1:])
        nats += loss.item() * windows[:, 1:].numel()
        n_bytes += int(token_bytes[windows[:, 1:]].sum())
    return nats / math.log(2) / n_bytes


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        print(f"{folder}: {whole_split_bpb(Path(folder)):.4f}")
