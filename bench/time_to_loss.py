"""Time to a validation loss, ours against nanoGPT: training seconds until the loss over the whole val.bin
reaches --target (default 1.90), on the cpu-small shapes, the same CPU, one run.

Ours trains through the real engine (`build_trainer(..., preset="cpu-small")`, `Trainer.train_step()`, the
process settings the CLI applies), in a child process of its own, once per --ours-steps and seed; its
default recipe is the preset's (Muon + WSD; `--optimizer adamw` for nanoGPT's). nanoGPT is its unmodified
train.py, run as a subprocess in a temporary copy of ../shared/reference/nanoGPT with nanoGPT's CPU recipe
from its README (config/train_shakespeare_char.py with 4 layers, 4 heads, 128 wide, block 64, batch 12, no
dropout, --max_iters and --lr_decay_iters --nanogpt-steps), on the same prepared data. The two never run at once.

What is timed, on both sides: training steps only, not evaluation.
- Ours: the wall time of each `train_step()`, summed; every --eval-every steps the weights are evaluated on
  every non-overlapping window of val.bin, outside the clock.
- nanoGPT: the per-iteration times train.py prints (`iter N: ... time T ms`, --log_interval=1), summed. An
  iteration at which train.py evaluates and saves (N a multiple of --eval-every, and N = 0) has that work in
  its time, so its time counts as the median of the other iterations. Each checkpoint it saves
  (--always_save_checkpoint=True) is copied aside as it appears and evaluated on the whole val.bin after the
  run, with nanoGPT's own model.py. train.py seeds itself (1337): one run of it is one sample of its time.

    python bench/time_to_loss.py                                    # cpu-small: ours 2000 and 600 steps, nanoGPT 2000
    python bench/time_to_loss.py --seeds 1337 1 2 --ours-steps 600  # 3 seeds of a 600-step WSD schedule
    python bench/time_to_loss.py --ours-steps 20 --nanogpt-steps 20 --eval-every 10 --target 3.5   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared")) / "reference" / "nanoGPT"
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import full_val_loss  # noqa: E402 - bench/ is not a package

ITER_LINE = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms")


# ----------------------------------------------------------------------------- ours (child process)
def run_ours(args: argparse.Namespace) -> dict:
    """Train ours for --steps, evaluating on the whole val.bin every --eval-every steps (off the clock)."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from nanogpt.train.setup import build_trainer
    from nanogpt.runtime.machine import training_process

    data_dir = Path(args.data_dir)
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    overrides = {"seed": args.seed, "data_dir": str(data_dir), "device": "cpu", "steps": args.steps,
                 "out_dir": tempfile.mkdtemp(prefix="ttl-ours-")}
    if args.optimizer:
        overrides["optimizer"] = args.optimizer
    overrides.update(parse_sets(args.set))
    trainer = build_trainer(overrides, preset="cpu-small")
    points, clock = [], 0.0
    with training_process(trainer.hardware):  # threads and allocator, as `nanogpt train` sets them
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            trainer.train_step()
            clock += time.perf_counter() - t0
            if step % args.eval_every == 0 or step == args.steps:
                loss = full_val_loss(trainer.stepper.model, val, trainer.model_cfg.block_size, trainer.hardware.device)
                trainer.stepper.model.train()
                points.append({"step": step, "seconds": clock, "val": loss})
    t = trainer.train_cfg
    recipe = f"{t.optimizer}, {t.lr_schedule}" + (f" {t.decay_fraction:g}" if t.lr_schedule == "wsd" else "")
    recipe += f", batch {t.batch_size}"
    return {"points": points, "recipe": recipe, "dtype": str(trainer.hardware.dtype).removeprefix("torch.")}


def parse_sets(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as training overrides, VALUE read as a number where it is one (batch_size=36)."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        for kind in (int, float):
            with contextlib.suppress(ValueError):
                out[key] = kind(value)
                break
        else:
            out[key] = value
    return out


def launch_ours(args: argparse.Namespace, data_dir: Path, steps: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--data-dir", str(data_dir), "--steps", str(steps),
           "--seed", str(seed), "--eval-every", str(args.eval_every)]
    cmd += ["--optimizer", args.optimizer] if args.optimizer else []
    cmd += [x for kv in args.set for x in ("--set", kv)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"ours failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- nanoGPT (its train.py)
def nanogpt_copy(tmp: Path, data_dir: Path) -> Path:
    """A copy of nanoGPT's folder with our prepared data where its train.py looks (data/shakespeare_char)."""
    folder = tmp / "nanoGPT"
    shutil.copytree(REFERENCE, folder, ignore=shutil.ignore_patterns(".git", "out*"))
    target = folder / "data" / "shakespeare_char"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("train.bin", "val.bin"):
        shutil.copyfile(data_dir / name, target / name)
    vocab = json.loads((data_dir / "vocab.json").read_text())
    itos = dict(enumerate(vocab["itos"]))
    with open(target / "meta.pkl", "wb") as f:  # what its prepare.py writes; train.py reads vocab_size
        pickle.dump({"vocab_size": vocab["vocab_size"], "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)
    return folder


def run_nanogpt(args: argparse.Namespace, folder: Path, saved: Path) -> dict:
    """Run train.py, copying each checkpoint aside as it appears; its per-iteration times, with eval ones out."""
    steps, every = args.nanogpt_steps, args.eval_every
    cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--n_layer=4", "--n_head=4", "--n_embd=128", "--block_size=64", "--batch_size=12", "--dropout=0.0",
           f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={every}", "--eval_iters=1",
           "--log_interval=1", "--always_save_checkpoint=True", "--out_dir=out"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines as they come: a checkpoint is copied in time
    times: dict[int, float] = {}
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
            m = ITER_LINE.match(line)
            if not m:
                continue
            it, ms = int(m.group(1)), float(m.group(2))
            times[it] = ms / 1000.0
            # "iter N" comes after the step that follows the evaluation at N: the checkpoint is on disk
            if it and it % every == 0:
                shutil.copyfile(folder / "out" / "ckpt.pt", saved / f"ckpt_{it}.pt")
    if proc.returncode:
        raise SystemExit("nanoGPT's train.py failed:\n" + "".join(tail))
    evals = {i for i in times if i % every == 0}
    median = statistics.median(t for i, t in times.items() if i not in evals)
    clock = [times[i] if i not in evals else median for i in range(steps)]
    return {"clock": clock, "checkpoints": sorted(int(p.stem.split("_")[1]) for p in saved.glob("ckpt_*.pt"))}


def nanogpt_points(folder: Path, saved: Path, result: dict, data_dir: Path, target: float) -> list[dict]:
    """Whole-val.bin losses of nanoGPT's checkpoints (up to the first at or below target, and the last)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(folder))
    from model import GPT, GPTConfig  # nanoGPT's model.py, from the copy

    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")
    points, reached = [], False
    steps = result["checkpoints"]
    for it in steps:
        if reached and it != steps[-1]:
            continue
        ckpt = torch.load(saved / f"ckpt_{it}.pt", map_location="cpu", weights_only=True)
        with contextlib.redirect_stdout(sys.stderr):  # it prints its parameter count
            model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
        loss = full_val_loss(model, val, ckpt["model_args"]["block_size"], "cpu")
        points.append({"step": it, "seconds": sum(result["clock"][:it]), "val": loss})
        reached = reached or loss <= target
    return points


# ----------------------------------------------------------------------------- the table
def first_at(points: list[dict], target: float) -> dict | None:
    return next((p for p in points if p["val"] <= target), None)


def row(side: str, recipe: str, seed: str, points: list[dict], total: float, steps: int, target: float) -> str:
    hit = first_at(points, target)
    reached = f"{hit['seconds']:.1f} | {hit['step']}" if hit else "not reached | -"
    return (f"| {side} | {recipe} | {seed} | {steps} | {reached} | {total:.1f} | {points[-1]['val']:.4f} | "
            f"{1000 * total / steps:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, default=1.90, help="validation loss over the whole val.bin")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument("--ours-steps", type=int, nargs="+", default=[2000, 600], help="one run of ours per value")
    p.add_argument("--optimizer", choices=("adamw", "muon"), help="ours (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ours: a training setting over the preset's (batch_size=36, muon_learning_rate=0.03)")
    p.add_argument("--nanogpt-steps", type=int, default=2000)
    p.add_argument("--nanogpt-seconds", type=float,
                   help="don't run nanoGPT: compare against this time of its run (measured earlier, same box)")
    p.add_argument("--eval-every", type=int, default=50, help="steps between whole-val.bin evaluations")
    p.add_argument("--data-dir", help="prepared char data (default: Tiny Shakespeare, prepared here)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # child: one run of ours
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_ours(args)))
        return 0
    if not (REFERENCE / "train.py").is_file():
        print(f"nanoGPT reference not found at {REFERENCE}: nothing to compare against", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="time_to_loss-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        if not args.data_dir:
            sys.path.insert(0, str(ROOT / "src"))
            from nanogpt.prepare import prepare

            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table
                prepare(str(TEXT), tokenizer="char", out_dir=str(data_dir))  # nanoGPT's files, not our default bpe
        rows = []
        for steps in args.ours_steps:
            for seed in args.seeds:
                print(f"ours: {steps} steps, seed {seed} ...", file=sys.stderr, flush=True)
                r = launch_ours(args, data_dir, steps, seed)
                total = r["points"][-1]["seconds"]
                rows.append(("ours", f"{r['recipe']} ({r['dtype']})", str(seed), r["points"], total, steps))
        if args.nanogpt_seconds:  # a search among our recipes: nanoGPT's time from an earlier run of this script
            reference = args.nanogpt_seconds
        else:
            print(f"nanoGPT: {args.nanogpt_steps} iterations ...", file=sys.stderr, flush=True)
            saved = Path(tmp) / "checkpoints"
            saved.mkdir()
            folder = nanogpt_copy(Path(tmp), data_dir)
            result = run_nanogpt(args, folder, saved)
            points = nanogpt_points(folder, saved, result, data_dir, args.target)
            reference = sum(result["clock"])
            rows.append(("nanoGPT train.py", "adamw, cosine (float32)", "1337", points, reference,
                         args.nanogpt_steps))
    sys.path.insert(0, str(ROOT / "src"))
    from nanogpt.runtime.dtype_probe import cpu_model  # the name the dtype probe keys its verdicts by

    print(f"# time to validation loss <= {args.target} (whole val.bin, every {args.eval_every} steps); "
          f"{cpu_model()}, {os.cpu_count()} logical CPUs; training seconds, evaluation excluded")
    print("| side | recipe | seed | steps | seconds to target | at step | seconds, all steps | val at the end "
          "| ms/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(row(*r, args.target))
    for side, _, seed, pts, _, steps in rows:
        if side != "ours":
            continue
        hit = first_at(pts, args.target)
        if hit:
            print(f"ours ({steps} steps, seed {seed}) to {args.target}: {hit['seconds'] / reference:.3f}x "
                  f"nanoGPT's {args.nanogpt_steps}-iteration run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
