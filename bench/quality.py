"""Quality, ours against nanoGPT: the same recipe over several seeds, validation loss two ways.

For each seed, ours trains through the real engine (`build_trainer(...).run()`, preset cpu-small by
default) and nanoGPT's unmodified model.py (from ../shared/reference/nanoGPT) trains the way its train.py
does (torch.manual_seed(seed) before the model, `torch.randint` batches, its configure_optimizers, the same
warm-up + cosine schedule, grad clip 1.0). Each run is a child process with one thread; two run at once.

Two validation numbers per run: "logged" is what the trainer itself reports at the last step (ours: the
engine's fixed eval batches; nanoGPT: its estimate_loss over eval_iters random batches), "full" is the mean
loss over every non-overlapping window of val.bin, which has no sampling noise. Compare means over seeds:
one seed's result moves by +-0.015 with the batches it happens to draw.

    python bench/quality.py --seeds 1337 1 2            # ~10 minutes on 2 cores
    python bench/quality.py --seeds 1 --steps 100       # a quick look
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared")) / "reference" / "nanoGPT"


def full_val_loss(model, val, block: int, device) -> float:
    """Mean cross-entropy over every non-overlapping block of the validation tokens."""
    import numpy as np
    import torch

    model.eval()
    starts = np.arange(0, len(val) - block - 1, block)
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in np.array_split(starts, max(1, len(starts) // 64)):
            idx = chunk[:, None] + np.arange(block + 1)
            w = torch.from_numpy(val[idx].astype(np.int64)).to(device)
            _, loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
            total += loss.item() * len(chunk)
            count += len(chunk)
    return total / count


def run_ours(seed: int, steps: int | None, preset: str, data_dir: Path) -> dict:
    import numpy as np

    from nanogpt.train.setup import build_trainer
    from nanogpt.events import EvalDone
    from nanogpt.runtime.machine import training_process

    with tempfile.TemporaryDirectory() as out:
        # nanoGPT's optimizer and schedule on both sides (the preset's default may be Muon): like for like
        overrides = {"seed": seed, "data_dir": str(data_dir), "out_dir": out, "device": "cpu", "optimizer": "adamw"}
        if steps:
            overrides["steps"] = steps
        trainer = build_trainer(overrides, preset=preset)
        evals: list[float] = []
        with training_process(trainer.hardware):  # the process-wide settings the CLI applies
            trainer.run(lambda e: evals.append(e.val_loss) if isinstance(e, EvalDone) else None)
        val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
        full = full_val_loss(trainer.stepper.model, val, trainer.model_cfg.block_size, trainer.hardware.device)
    return {"logged": evals[-1], "full": full}


def run_nanogpt(seed: int, steps: int | None, preset: str, data_dir: Path) -> dict:
    import numpy as np
    import torch

    from nanogpt import presets, schedule

    sys.path.insert(0, str(REFERENCE))
    import model as ng  # nanoGPT's model.py, unmodified

    mc, tc = presets.resolve({"optimizer": "adamw", **({"steps": steps} if steps else {})}, preset=preset)
    vocab = json.loads((data_dir / "vocab.json").read_text())["vocab_size"]
    train = np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    torch.manual_seed(seed)
    model = ng.GPT(ng.GPTConfig(block_size=mc.block_size, vocab_size=vocab, n_layer=mc.n_layer,
                                n_head=mc.n_head, n_embd=mc.n_embd, dropout=mc.dropout, bias=mc.bias))
    opt = model.configure_optimizers(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), "cpu")

    def batch(split):
        ix = torch.randint(len(split) - mc.block_size, (tc.batch_size,))
        x = torch.stack([torch.from_numpy(split[i : i + mc.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(split[i + 1 : i + 1 + mc.block_size].astype(np.int64)) for i in ix])
        return x, y

    for it in range(tc.steps):
        lr = schedule.learning_rate(it, peak=tc.learning_rate, minimum=tc.min_learning_rate,
                                    warmup=tc.warmup_steps, total=tc.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(train)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():  # its estimate_loss: eval_iters random batches
        logged = sum(model(*batch(val))[1].item() for _ in range(tc.eval_iters)) / tc.eval_iters
    return {"logged": logged, "full": full_val_loss(model, val, mc.block_size, "cpu")}


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    fn = run_ours if args.side == "ours" else run_nanogpt
    print(json.dumps(fn(args.seed, args.steps, args.preset, Path(args.data_dir))))


def launch(side: str, seed: int, args: argparse.Namespace, data_dir: Path) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--seed", str(seed), "--preset", args.preset,
           "--data-dir", str(data_dir)] + (["--steps", str(args.steps)] if args.steps else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--data-dir", default=None, help="prepared char data (default: Tiny Shakespeare, prepared)")
    p.add_argument("--side", choices=("ours", "nanogpt"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        child(args)
        return 0
    if not (REFERENCE / "model.py").is_file():
        print(f"nanoGPT reference not found at {REFERENCE}: nothing to compare against", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        if not args.data_dir:
            sys.path.insert(0, str(ROOT / "src"))
            from nanogpt.prepare import prepare

            text = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
            prepare(str(text), tokenizer="char", out_dir=str(data_dir))  # nanoGPT's files, not our default bpe
        jobs = [(side, seed) for seed in args.seeds for side in ("ours", "nanogpt")]
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(jobs, pool.map(lambda j: launch(*j, args, data_dir), jobs)))
    print(f"# quality: preset {args.preset}, steps {args.steps or 'preset'}, validation loss at the last step")
    print("| seed | ours logged | ours full | nanoGPT logged | nanoGPT full |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        o, n = results[("ours", seed)], results[("nanogpt", seed)]
        print(f"| {seed} | {o['logged']:.4f} | {o['full']:.4f} | {n['logged']:.4f} | {n['full']:.4f} |")
    cols = [[results[(s, seed)][k] for seed in args.seeds] for s in ("ours", "nanogpt") for k in ("logged", "full")]
    means = " | ".join(f"{statistics.mean(c):.4f}" for c in cols)
    print(f"| mean | {means} |")
    if len(args.seeds) > 1:
        sd = " | ".join(f"{statistics.stdev(c):.4f}" for c in cols)
        print(f"| std | {sd} |")
    assert all(math.isfinite(v) for c in cols for v in c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
