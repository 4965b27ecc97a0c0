"""Which tokenizer writes best at equal training time: char, gpt2 and bpe at several sizes, in bits per byte.

For each corpus (the bundled Tiny Shakespeare, and ../shared/data/gutenberg_alice.txt with --strip-gutenberg
when it is there) and each tokenizer, the text is prepared once into a temporary folder (`nanogpt prepare`),
then the default recipe (preset cpu-small: 4 layers, 4 heads, 128 wide, block 64, Muon + WSD) trains through
the real engine (`build_trainer`, `Trainer.train_step()`, the process settings the CLI applies) for about
--seconds of training per seed.

Equal time, with a whole schedule: a few untimed steps, then a probe of about a tenth of the budget measures
this tokenizer's seconds per step; each seed then trains for budget / that many steps (its warm-up and WSD decay
fitted to them), and the table says the steps and the training seconds each run took. Evaluation is off the
clock.

The same validation text for every tokenizer: prepare splits each text at 90% of its characters before it
tokenizes (the bench checks that the val.bin of every tokenizer covers the same UTF-8 bytes). Each model is
evaluated on every non-overlapping block of its val.bin: bits per byte = the summed loss in nats over all
target tokens / ln 2 / the UTF-8 bytes of those targets (GPT-2's <|endoftext|> counts 0 bytes).

    PYTHONPATH=src python bench/tokenizer_choice.py                    # 20 s per run, seeds 1337 1 2 (about 20 min)
    PYTHONPATH=src python bench/tokenizer_choice.py --seconds 60 --vocab-sizes 1024 2048
    PYTHONPATH=src python bench/tokenizer_choice.py --quick             # a smoke run: a few seconds per run, one seed

Prints a markdown table for BENCHMARKS.md: bpb is the mean over seeds +- their sample standard deviation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# Python puts this script's folder first on the path, where this file would shadow Hugging Face's `tokenizers`
# (which prepare --tokenizer bpe imports): take it off
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ALICE = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared")) / "data" / "gutenberg_alice.txt"
sys.path.insert(0, str(ROOT / "src"))

from nanogpt import data  # noqa: E402 - after the path
from nanogpt.prepare import prepare  # noqa: E402
from nanogpt.runtime.machine import training_process  # noqa: E402
from nanogpt.train.setup import build_trainer  # noqa: E402

PRESET = "cpu-small"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="training seconds per run (default 20)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], help="BPE sizes")
    p.add_argument("--tokenizers", nargs="+", default=["char", "gpt2", "bpe"], choices=["char", "gpt2", "bpe"])
    p.add_argument("--corpora", nargs="+", default=["shakespeare", "alice"], choices=["shakespeare", "alice"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s per run, one seed, BPE 512, Shakespeare")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.seeds, args.vocab_sizes, args.corpora = 2.0, [1337], [512], ["shakespeare"]
    return args


def corpora(names: list[str]) -> list[tuple[str, str | None, bool]]:
    """(name, source for prepare (None: the bundled corpus), strip Gutenberg) of the corpora at hand."""
    found = [("shakespeare", None, False)] if "shakespeare" in names else []
    if "alice" in names:
        if ALICE.is_file():
            found.append(("alice", str(ALICE), True))
        else:
            print(f"note: {ALICE} not found: Alice left out", file=sys.stderr)
    return found


def prepared(source: str | None, strip: bool, tokenizer: str, vocab: int | None, folder: Path) -> Path:
    """The text prepared by `nanogpt prepare` into `folder` (its output and progress kept off the table)."""
    settings = {"tokenizer": tokenizer, "out_dir": str(folder), "val_fraction": 0.1, "strip_gutenberg": strip}
    if vocab is not None:
        settings["vocab_size"] = vocab
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        prepare(source, **settings)
    return folder


def trainer_for(data_dir: Path, steps: int, seed: int, device: str, out: str):
    return build_trainer(
        {"data_dir": str(data_dir), "steps": steps, "seed": seed, "device": device, "out_dir": out,
         "validation_interval": 0, "save_interval": 0, "eval_sample_tokens": 0},
        preset=PRESET,
    )


def seconds_per_step(data_dir: Path, budget: float, device: str) -> float:
    """This dataset's training seconds per step on the preset: 5 untimed steps (the allocator warms up), then
    at least 10 and about budget/10 seconds of them timed; their median."""
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(data_dir, 1_000_000, 1337, device, out)
        with training_process(trainer.hardware):
            for _ in range(5):
                trainer.train_step()
            times: list[float] = []
            while len(times) < 10 or sum(times) < budget / 10:
                t0 = time.perf_counter()
                trainer.train_step()
                times.append(time.perf_counter() - t0)
            return statistics.median(times)  # a step slowed by another process moves a median little


def train_and_evaluate(data_dir: Path, steps: int, seed: int, device: str) -> dict:
    """Train `steps` steps (timed, steps only) and evaluate on the whole val.bin (off the clock)."""
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(data_dir, steps, seed, device, out)
        clock = 0.0
        with training_process(trainer.hardware):
            for _ in range(steps):
                t0 = time.perf_counter()
                trainer.train_step()
                clock += time.perf_counter() - t0
            nats, targets, n_bytes = full_validation(trainer)
    params = trainer.stepper.model.num_params()
    return {"seconds": clock, "params": params, "nats": nats, "targets": targets, "bytes": n_bytes}


@torch.no_grad()
def full_validation(trainer) -> tuple[float, int, int]:
    """(summed nats, target tokens, their UTF-8 bytes) over every non-overlapping block of val.bin."""
    model, block, device = trainer.stepper.model, trainer.model_cfg.block_size, trainer.hardware.device
    val, sizes = trainer.tokens.val, trainer.tokens.tokenizer.token_bytes()
    model.eval()
    starts = np.arange(0, len(val) - block, block)
    # windows per forward: logits of at most ~16M floats (GPT-2's 50,257 columns make them large)
    per = max(1, (1 << 24) // (block * model.config.vocab_size))
    nats, targets, n_bytes = 0.0, 0, 0
    for i in range(0, len(starts), per):
        idx = starts[i : i + per, None] + np.arange(block + 1)
        windows = torch.from_numpy(val[idx].astype(np.int64))
        x, y = windows[:, :-1].to(device), windows[:, 1:]
        logits, _ = model(x, y.to(device))
        nats += torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).double(), y.flatten().to(device), reduction="sum"
        ).item()
        targets += y.numel()
        n_bytes += int(sizes[y.numpy()].sum())
    return nats, targets, n_bytes


def val_bytes(data_dir: Path) -> tuple[int, int]:
    """(tokens, UTF-8 bytes) of the whole validation split."""
    tokens = data.load(data_dir)
    return len(tokens.val), int(tokens.tokenizer.token_bytes()[np.asarray(tokens.val)].sum())


def measure(args: argparse.Namespace, name: str, source: str | None, strip: bool, kind: str, vocab: int | None,
            tmp: Path) -> dict:
    """One row: a corpus and tokenizer prepared, timed, trained for every seed and evaluated."""
    label = kind if vocab is None else f"{kind} {vocab}"
    folder = prepared(source, strip, kind, vocab, tmp / f"{name}_{kind}_{vocab}")
    n_val, n_val_bytes = val_bytes(folder)
    per_step = seconds_per_step(folder, args.seconds, args.device)
    steps = max(1, round(args.seconds / per_step))
    print(f"{name} {label}: {per_step * 1000:.1f} ms/step -> {steps} steps", file=sys.stderr, flush=True)
    runs = [train_and_evaluate(folder, steps, seed, args.device) for seed in args.seeds]
    bpb = [r["nats"] / math.log(2) / r["bytes"] for r in runs]
    return {
        "corpus": name, "tokenizer": label, "vocab": data.load(folder).vocab_size, "params": runs[0]["params"],
        "steps": steps, "seconds": statistics.mean(r["seconds"] for r in runs), "val_bytes": n_val_bytes,
        "tokens_per_byte": n_val / n_val_bytes,
        "nats_per_token": statistics.mean(r["nats"] / r["targets"] for r in runs),
        "bpb": statistics.mean(bpb), "spread": statistics.stdev(bpb) if len(bpb) > 1 else 0.0,
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Equal training time: ~{args.seconds:g} s of steps per run on {PRESET} ({args.device}), seeds "
        f"{' '.join(map(str, args.seeds))}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}",
        "",
        "| corpus | tokenizer | vocab | params | steps | train s | val tokens/byte | val nats/token | val bits/byte |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['tokenizer']} | {r['vocab']:,} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
            f"{r['seconds']:.1f} | {r['tokens_per_byte']:.3f} | {r['nats_per_token']:.4f} | "
            f"{r['bpb']:.4f} ± {r['spread']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-tokenizers-") as tmp:
        for name, source, strip in corpora(args.corpora):
            kinds = [(k, None) for k in args.tokenizers if k != "bpe"]
            kinds += [("bpe", v) for v in args.vocab_sizes] if "bpe" in args.tokenizers else []
            for kind, vocab in kinds:
                rows.append(measure(args, name, source, strip, kind, vocab, Path(tmp)))
            sizes = {r["val_bytes"] for r in rows if r["corpus"] == name}
            if len(sizes) > 1:  # prepare splits in characters before tokenizing: this would be a bug
                print(f"warning: {name}'s validation bytes differ between tokenizers: {sorted(sizes)}", file=sys.stderr)
            else:
                print(f"{name}: every tokenizer's validation text is the same {sizes.pop():,} bytes", file=sys.stderr)
    print(table(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
