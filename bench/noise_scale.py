"""The gradient noise scale of a text (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training"): the
batch size, in sequences, beyond which a larger batch stops paying, measured on a prepared text after a short run.

For each text: the real CLI trains the shape for --steps steps at the default recipe, then the saved model's
gradient is taken on --batches small batches of --small sequences; from the mean squared norm of the small
batches' gradients and the squared norm of their mean, B_simple = tr(Sigma) / |G|^2 (their Appendix A). One
estimate per text and seed, noisy; it grows as the loss falls. The texts and their preparation are
bench/time_budget.py's (its --work folder).

    python bench/noise_scale.py --texts code manual --steps 150 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import time_budget  # noqa: E402 - after the path
from nanogpt import data  # noqa: E402
from nanogpt.checkpoint.reading import load_model  # noqa: E402

PICKS = {"code": "2x192", "manual": "2x192", "shakespeare": "4x192", "alice": "4x128"}


def trained(folder: Path, shape: str, steps: int, out: Path, cache: Path) -> Path:
    """The checkpoint stem of a --steps run of `shape` (LAYERSxWIDTH) at the default recipe, block 64 x batch 24."""
    shutil.rmtree(out, ignore_errors=True)
    done = time_budget.cli("train", "--headless", "--data-dir", str(folder), *time_budget.shape_flags(shape),
                           "--block-size", "64", "--batch-size", "24", "--steps", str(steps), "--out-dir", str(out),
                           cache=cache)
    if done.returncode:
        sys.exit(f"train {folder.name} {shape}: {done.stderr.strip()[-300:]}")
    return max(out.glob("*.safetensors"), key=os.path.getmtime).with_suffix("")


def noise_scale(stem: Path, folder: Path, small: int, batches: int, seed: int) -> tuple[float, float, float]:
    """(|G|^2, tr(Sigma), B_simple in sequences) of the model at `stem` on the training tokens of `folder`."""
    model, _ = load_model(stem)
    model.train()
    tokens = np.asarray(data.load(folder).train)
    block = model.config.block_size
    rng = np.random.default_rng(seed)
    grads = []
    for _ in range(batches):
        starts = rng.integers(0, len(tokens) - block - 1, small)
        x = torch.from_numpy(np.stack([tokens[i:i + block] for i in starts]).astype(np.int64))
        y = torch.from_numpy(np.stack([tokens[i + 1:i + block + 1] for i in starts]).astype(np.int64))
        model.zero_grad()
        model(x, y)[1].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    g = torch.stack(grads)
    small_sq, big_sq = (g**2).sum(1).mean().item(), (g.mean(0) ** 2).sum().item()
    b_small, b_big = small, small * batches
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return g2, trace, trace / g2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", nargs="+", default=["code", "manual", "shakespeare", "alice"])
    ap.add_argument("--shapes", nargs="+", default=None,
                    help="LAYERSxWIDTH per text (default: each text's pick at 1 minute on a 2-core CPU, PICKS)")
    ap.add_argument("--steps", nargs="+", type=int, default=[150, 300])
    ap.add_argument("--small", type=int, default=4, help="sequences in a small batch")
    ap.add_argument("--batches", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--code-chars", type=int, default=10_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nanogpt-time-budget"))
    args = ap.parse_args()
    print("| text | shape | steps | |G|^2 | tr(Sigma) | B_simple (sequences of 64) |\n|---|---|---:|---:|---:|---:|")
    for text, shape in zip(args.texts, args.shapes or [PICKS.get(t, "2x192") for t in args.texts]):
        folder = time_budget.prepared(text, args.work, args.code_chars)
        for steps in args.steps:
            out = args.work / f"noise-{text}"
            stem = trained(folder, shape, steps, out, args.work / "cache")
            g2, trace, scale = noise_scale(stem, folder, args.small, args.batches, args.seed)
            print(f"| {text} | {shape} | {steps} | {g2:.4g} | {trace:.4g} | {scale:.0f} |", flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
