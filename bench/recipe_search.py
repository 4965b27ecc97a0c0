"""Recipe search: which optimizer, learning rates, schedule, length and batch reach a validation loss soonest.

A plain training loop over our own model (nanogpt.model.GPT), batches (nanogpt.data.BatchSampler) and
optimizers (nanogpt.optim.build_optimizer), so it measures the recipe and nothing of the engine. Validation
is the mean loss over every non-overlapping window of val.bin (no sampling noise), taken at `--eval-at`
steps and at the end; evaluation time is not counted in the training time.

Every flag that takes several values runs the product of them, one run after another in this process
(one thread pool of `--threads`), appending one JSON line per run to `--out`. Architecture variants of
modded-nanogpt (`--variant`) are built here by patching modules of the model, never in model.py.

    python -m nanogpt prepare /work/shared/data/tinyshakespeare.txt --tokenizer char --out-dir /tmp/recipe_data
    python bench/recipe_search.py --optimizer muon --steps 400 --muon-lr 0.01 0.02 0.04 --seeds 7
    python bench/recipe_search.py --optimizer adamw --steps 2000 --eval-at 500 1000 1500 --seeds 1337
    python bench/recipe_search.py --burst 30            # ms per step, Muon against AdamW
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nanogpt import data
from nanogpt.config import ModelConfig
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer, set_lr


# ----------------------------------------------------------------------------- schedules
def schedule_lr(step: int, *, peak: float, total: int, warmup: int, kind: str, min_ratio: float,
                decay_frac: float) -> float:
    """The schedule's learning rate at step `step` (0-based).

    cosine: nanoGPT's (linear warm-up as (step+1)/(warmup+1), cosine to min_ratio*peak at `total`).
    wsd: the same warm-up, constant, then linear decay to min_ratio*peak over the last decay_frac of the run.
    """
    minimum = peak * min_ratio
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    if kind == "cosine":
        ratio = min(1.0, (step - warmup) / max(1, total - warmup))
        return minimum + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - minimum)
    if kind == "wsd":
        decay_start = total - int(round(decay_frac * total))
        if step < decay_start:
            return peak
        ratio = min(1.0, (step - decay_start + 1) / max(1, total - decay_start))
        return peak + ratio * (minimum - peak)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- architecture variants
def _relu2_mlp(self, x: torch.Tensor) -> torch.Tensor:
    return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))


def _qknorm_attention(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:  # noqa: ANN001
    B, T, C = x.shape
    hs = C // self.n_head
    q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
    q = F.rms_norm(q.view(B, T, self.n_head, hs), (hs,)).transpose(1, 2)  # (B, nh, T, hs)
    k = F.rms_norm(k.view(B, T, self.n_head, hs), (hs,)).transpose(1, 2)
    v = v.view(B, T, self.n_head, hs).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
    return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


def build_model(cfg: ModelConfig, variant: str) -> GPT:
    """Our GPT, with one of modded-nanogpt's changes patched in (training forward only)."""
    model = GPT(cfg)
    for part in variant.split("+"):
        if part == "gpt2":
            continue
        for block in model.transformer.h:
            if part == "relu2":
                block.mlp.forward = types.MethodType(_relu2_mlp, block.mlp)
            elif part == "qknorm":
                block.attn.forward = types.MethodType(_qknorm_attention, block.attn)
            elif part == "zeroinit":
                torch.nn.init.zeros_(block.attn.c_proj.weight)
                torch.nn.init.zeros_(block.mlp.c_proj.weight)
        if part == "untied":
            model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
        elif part not in ("relu2", "qknorm", "zeroinit"):
            raise ValueError(f"unknown variant {part!r}")
    return model


# ----------------------------------------------------------------------------- evaluation
def val_windows(val: np.ndarray, block: int) -> torch.Tensor:
    """Every non-overlapping (block + 1)-token window of the validation split, as one int64 tensor."""
    starts = np.arange(0, len(val) - block - 1, block)
    return torch.from_numpy(val[starts[:, None] + np.arange(block + 1)].astype(np.int64))


@torch.no_grad()
def val_loss(model: GPT, windows: torch.Tensor, chunk: int = 256) -> float:
    model.eval()
    total = 0.0
    for w in windows.split(chunk):
        _, loss = model(w[:, :-1], w[:, 1:])
        total += loss.item() * len(w)
    model.train()
    return total / len(windows)


# ----------------------------------------------------------------------------- one run
def run(args: argparse.Namespace, tokens: data.TokenData, windows: torch.Tensor, *, seed: int, optimizer: str,
        steps: int, lr: float, muon_lr: float, schedule: str, warmup: int, decay_frac: float, batch: int,
        variant: str, muon_wd: float) -> dict:
    device = torch.device("cpu")
    cfg = ModelConfig(vocab_size=tokens.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128,
                      dropout=0.0, bias=False)
    torch.manual_seed(seed)
    model = build_model(cfg, variant)
    opt = build_optimizer(model, kind=optimizer, lr=lr, betas=(0.9, 0.99), weight_decay=0.1, device=device,
                          muon_lr=muon_lr, muon_weight_decay=muon_wd, muon_momentum=args.muon_momentum,
                          ns_dtype=getattr(torch, args.ns_dtype))
    if optimizer == "muon":
        opt.optimizers[1].param_groups[0]["ns_steps"] = args.ns_steps
    sampler = data.BatchSampler(tokens.train, block_size=64, batch_size=batch, seed=seed,
                                stream=data.TRAIN_STREAM, device=device)
    eval_at = {s for s in args.eval_at if s < steps} | {steps}
    evals: dict[int, float] = {}
    train_s = 0.0
    for step in range(steps):
        t0 = time.perf_counter()
        set_lr(opt, schedule_lr(step, peak=lr, total=steps, warmup=warmup, kind=schedule,
                                min_ratio=args.min_ratio, decay_frac=decay_frac))
        x, y = sampler.batch(step)
        _, loss = model(x, y)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            evals[step + 1] = float("nan")
            break
        if step + 1 in eval_at:
            evals[step + 1] = round(val_loss(model, windows), 4)
    return {
        "seed": seed, "optimizer": optimizer, "steps": steps, "lr": lr,
        "muon_lr": muon_lr if optimizer == "muon" else None, "muon_wd": muon_wd if optimizer == "muon" else None,
        "schedule": schedule, "warmup": warmup, "decay_frac": decay_frac if schedule == "wsd" else None,
        "min_ratio": args.min_ratio, "batch": batch, "variant": variant, "grad_clip": args.grad_clip,
        "muon_momentum": args.muon_momentum, "ns_steps": args.ns_steps, "ns_dtype": args.ns_dtype,
        "val": evals, "final": evals.get(steps, float("nan")),
        "train_s": round(train_s, 2), "ms_per_step": round(1000 * train_s / steps, 1),
    }


def burst(args: argparse.Namespace, tokens: data.TokenData) -> None:
    """Milliseconds per training step and per optimizer.step(), Muon against AdamW, interleaved."""
    device = torch.device("cpu")
    cfg = ModelConfig(vocab_size=tokens.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128)
    results: dict[str, list[tuple[float, float]]] = {}
    kinds = [("adamw", None), ("muon", torch.float32), ("muon", torch.bfloat16)]
    for _ in range(args.rounds):
        for kind, ns_dtype in kinds:
            torch.manual_seed(0)
            model = GPT(cfg)
            opt = build_optimizer(model, kind=kind, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=device,
                                  ns_dtype=ns_dtype)
            sampler = data.BatchSampler(tokens.train, block_size=64, batch_size=args.burst_batch, seed=0,
                                        stream=data.TRAIN_STREAM, device=device)
            step_ms, opt_ms = [], []
            for i in range(args.burst + 5):
                t0 = time.perf_counter()
                x, y = sampler.batch(i)
                _, loss = model(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                t1 = time.perf_counter()
                opt.step()
                t2 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                if i >= 5:
                    step_ms.append(1000 * (time.perf_counter() - t0))
                    opt_ms.append(1000 * (t2 - t1))
            name = kind if ns_dtype is None else f"{kind} (NS {str(ns_dtype).removeprefix('torch.')})"
            results.setdefault(name, []).append((float(np.median(step_ms)), float(np.median(opt_ms))))
    print(f"batch {args.burst_batch}, {args.burst} steps x {args.rounds} rounds, {args.threads} threads, medians")
    print(f"{'optimizer':<24} {'step ms':>10} {'opt.step ms':>12}")
    for name, rows in results.items():
        s = "/".join(f"{r[0]:.1f}" for r in rows)
        o = "/".join(f"{r[1]:.2f}" for r in rows)
        print(f"{name:<24} {s:>10} {o:>12}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/tmp/recipe_data")
    p.add_argument("--out", default="/tmp/recipe_search.jsonl", help="JSON lines, one per run (appended)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads (1: on a shared box two OpenMP threads stall whenever a core is busy)")
    p.add_argument("--seeds", type=int, nargs="+", default=[7])
    p.add_argument("--optimizer", nargs="+", default=["muon"], choices=("adamw", "muon"))
    p.add_argument("--steps", type=int, nargs="+", default=[400])
    p.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="AdamW peak learning rate")
    p.add_argument("--muon-lr", type=float, nargs="+", default=[0.02])
    p.add_argument("--muon-wd", type=float, nargs="+", default=[0.0])
    p.add_argument("--schedule", nargs="+", default=["cosine"], choices=("cosine", "wsd"))
    p.add_argument("--warmup", type=int, nargs="+", default=[100])
    p.add_argument("--decay-frac", type=float, nargs="+", default=[0.5], help="wsd: share of steps decaying")
    p.add_argument("--min-ratio", type=float, default=0.1, help="final learning rate / peak (nanoGPT: 0.1)")
    p.add_argument("--batch", type=int, nargs="+", default=[12])
    p.add_argument("--muon-momentum", type=float, default=0.95)
    p.add_argument("--ns-steps", type=int, default=5, help="Newton-Schulz iterations per Muon step")
    p.add_argument("--ns-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="Newton-Schulz dtype (the engine's --dtype auto picks bfloat16 where it is faster)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--variant", nargs="+", default=["gpt2"],
                   help="gpt2, or modded-nanogpt changes joined by +: relu2, qknorm, zeroinit, untied")
    p.add_argument("--eval-at", type=int, nargs="*", default=[])
    p.add_argument("--burst", type=int, default=0, help="instead of training: time this many steps per kind")
    p.add_argument("--burst-batch", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tokens = data.load(args.data_dir)
    if args.burst:
        burst(args, tokens)
        return
    windows = val_windows(np.asarray(tokens.val), 64)
    grid = itertools.product(args.seeds, args.optimizer, args.steps, args.lr, args.muon_lr, args.schedule,
                             args.warmup, args.decay_frac, args.batch, args.variant, args.muon_wd)
    seen = set()
    for seed, optimizer, steps, lr, muon_lr, schedule, warmup, decay_frac, batch, variant, muon_wd in grid:
        key = (seed, optimizer, steps, lr, muon_lr if optimizer == "muon" else None, schedule, warmup,
               decay_frac if schedule == "wsd" else None, batch, variant, muon_wd if optimizer == "muon" else None)
        if key in seen:  # a value that does not apply (muon_lr under adamw) does not repeat a run
            continue
        seen.add(key)
        result = run(args, tokens, windows, seed=seed, optimizer=optimizer, steps=steps, lr=lr, muon_lr=muon_lr,
                     schedule=schedule, warmup=warmup, decay_frac=decay_frac, batch=batch, variant=variant,
                     muon_wd=muon_wd)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(result) + "\n")
        shown = {k: v for k, v in result.items() if v is not None and k not in ("val",)}
        print(json.dumps(shown), " val:", result["val"], flush=True)


if __name__ == "__main__":
    main()
