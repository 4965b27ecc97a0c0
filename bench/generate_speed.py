"""Generation speed, ours against nanoGPT's sample.py, side by side in one process on the same weights.

Both sample 500 tokens (sample.py's defaults: temperature 0.8, top-k 200, start "\\n") from a model of
the cpu-small shape (4 layers, 4 heads, 128 wide, block 64, char vocabulary of 65), random weights unless
--checkpoint gives a trained one; nanoGPT gets the very same weights (the parameter names match). nanoGPT
is the unmodified reference at ../shared/reference/nanoGPT: its model.py is imported from there and its
`GPT.generate` is called as sample.py calls it (under torch.no_grad); that column is skipped when the
reference is absent. Ours is `generate.generate_rows` (what `nanogpt generate` runs), once with nanoGPT's
exact crop (slide 1) and once per other window slide asked for. The runs alternate, so a shared machine's
noise falls on all alike: compare the ratios, not bare times across runs.

`--num-samples N` samples N continuations in one batch on both sides (nanoGPT's generate takes a batch of
prompts); tokens/s counts all N rows. `--device cuda --shape baby-gpt` is the GPU measurement (ours then runs
its CUDA-graph decode step, as `nanogpt generate` does there); each generation is timed to its last token on
the host, so a GPU's queued work is inside the time.

    PYTHONPATH=src python bench/generate_speed.py                 # 500 tokens, 7 rounds
    PYTHONPATH=src python bench/generate_speed.py --threads 2 --profile
    PYTHONPATH=src python bench/generate_speed.py --device cuda --shape baby-gpt --num-samples 64 --slides default
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared")) / "reference" / "nanoGPT"
sys.path.insert(0, str(ROOT / "src"))

from nanogpt.config import ModelConfig  # noqa: E402 - after the sys.path line above
from nanogpt.generate import default_slide, generate_rows, generate_tokens  # noqa: E402
from nanogpt.model import GPT  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=500, help="tokens per generation (default: 500)")
    p.add_argument("--rounds", type=int, default=7, help="generations per column (default: 7)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every column (default: 1)")
    p.add_argument("--slides", default="default,16",
                   help="our window slides besides 1 (nanoGPT's crop), comma-separated (default: default,16)")
    p.add_argument("--checkpoint", help="a trained checkpoint stem instead of random weights of --shape")
    p.add_argument("--shape", choices=tuple(SHAPES), default="cpu-small",
                   help="the random model's shape (char vocabulary of 65; default: cpu-small)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--num-samples", type=int, default=1, help="continuations per generation, one batch (default: 1)")
    p.add_argument("--json", help="also write each column's median tokens/s to this JSON file")
    p.add_argument("--profile", action="store_true", help="also print where our decode time goes")
    p.add_argument("--context-loss", metavar="VAL_BIN",
                   help="with --checkpoint: also print the validation loss each window slide implies, from "
                        "the model's loss at every context length over this val.bin")
    return p.parse_args(argv)


# (n_layer, n_head, n_embd, block_size) of the presets the speeds are quoted for (presets.PRESETS)
SHAPES = {"cpu-small": (4, 4, 128, 64), "baby-gpt": (6, 6, 384, 256)}


def load_reference():
    """nanoGPT's model module, imported from the reference checkout (None when it is absent)."""
    path = REFERENCE / "model.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_models(args: argparse.Namespace):
    """(our GPT, nanoGPT's GPT with the same weights or None, start token id)."""
    if args.checkpoint:
        from nanogpt.checkpoint import load_model
        from nanogpt.generate import start_ids
        from nanogpt.tokenizers import from_meta

        ours, meta = load_model(args.checkpoint, args.device)
        start = start_ids(from_meta(meta["tokenizer"]), "")
    else:
        torch.manual_seed(1337)
        n_layer, n_head, n_embd, block = SHAPES[args.shape]
        ours = GPT(ModelConfig(vocab_size=65, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
        ours = ours.to(args.device).eval()
        start = [0]  # "\n" is id 0 in Tiny Shakespeare's char vocabulary
    ref = load_reference()
    if ref is None:
        return ours, None, start
    c = ours.config
    theirs = ref.GPT(ref.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                                   n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=c.bias))
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    return ours, theirs.to(args.device).eval(), start


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    flags = fields.get("Flags", "")
    return f"{name}, {os.cpu_count()} CPUs, avx512_bf16: {'yes' if 'avx512_bf16' in flags else 'no'}"


def print_context_loss(model: GPT, val_bin: Path, slides: list[int]) -> None:
    """Mean loss at each context length (full windows over val.bin, stride 7) and what each slide implies.

    With slide S the next token is predicted from block-S+1 .. block tokens of context, uniformly over a
    long generation; slide 1 (nanoGPT) always uses block tokens, i.e. the window's last position.
    """
    import numpy as np

    from nanogpt.tokenizers import token_dtype

    block = model.config.block_size
    val = np.fromfile(val_bin, dtype=token_dtype(model.config.vocab_size)).astype(np.int64)
    starts = np.arange(0, len(val) - block - 1, 7)
    total = torch.zeros(block)
    with torch.inference_mode():
        for i in range(0, len(starts), 256):
            rows = starts[i : i + 256]
            x = torch.from_numpy(np.stack([val[j : j + block] for j in rows]))
            y = torch.from_numpy(np.stack([val[j + 1 : j + block + 1] for j in rows]))
            logits, _ = model(x, targets=y)
            total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").sum(0)
    curve = total / len(starts)
    print(f"\nloss by context length ({len(starts)} windows of {val_bin}):")
    print("  " + "  ".join(f"{n}: {curve[n - 1]:.3f}" for n in (1, 2, 4, 8, 16, 32, 48, 64) if n <= block))
    for slide in dict.fromkeys(slides):
        mean = curve[block - slide :].mean()
        print(f"  slide {slide:>3}: context {block - slide + 1}-{block}, mean loss {mean:.4f}")


def build_columns(args: argparse.Namespace, ours: GPT, theirs, start: list[int]) -> dict[str, Callable[[], object]]:
    """label -> one generation of --tokens tokens x --num-samples rows (nanoGPT's first when present)."""
    block, n, rows, device = ours.config.block_size, args.tokens, args.num_samples, torch.device(args.device)
    columns: dict[str, Callable[[], object]] = {}
    if theirs is not None:
        def run_nanogpt() -> object:
            with torch.no_grad():  # as sample.py
                out = theirs.generate(torch.tensor([start] * rows, device=device), n, temperature=0.8, top_k=200)
            return out.tolist()  # to the host, as ours streams its tokens: the GPU's queue is in the time
        columns["nanoGPT sample.py (crop every token)"] = run_nanogpt
    asked = [s.strip() for s in args.slides.split(",") if s.strip()]
    slides = [1] + [default_slide(block) if s == "default" else int(s) for s in asked]
    for slide in dict.fromkeys(slides):
        label = f"ours, slide {slide}" + (" (= nanoGPT's crop)" if slide == 1 else "") + (
            " (default)" if slide == default_slide(block) else "")
        columns[label] = (lambda s=slide: list(generate_rows(
            ours, start, n, num_samples=rows, temperature=0.8, top_k=200,
            generator=torch.Generator(device).manual_seed(1), slide=s)))
    return columns


def time_columns(columns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each column's generation, `rounds` times, the columns taking turns after one warm-up each."""
    for run in columns.values():  # warm-up: first calls allocate and initialise (and compile CUDA kernels)
        run()
    times: dict[str, list[float]] = {k: [] for k in columns}
    for _ in range(rounds):
        for label, run in columns.items():
            started = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - started)
    return times


def print_table(args: argparse.Namespace, ours: GPT, times: dict[str, list[float]], reference: bool) -> dict:
    """The tokens/s table (all rows counted); returns {label: median tokens/s}."""
    n, block, rows = args.tokens, ours.config.block_size, args.num_samples
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU: {cpu_name()}"
    print(f"\n{n} tokens x {rows} sample(s), {args.shape if not args.checkpoint else args.checkpoint} "
          f"(vocab {ours.config.vocab_size}, block {block}), {args.threads} thread(s), {args.rounds} rounds, "
          f"torch {torch.__version__}\n{machine}\n")
    first = times[next(iter(times))] if reference else None
    print(f"| {'column':<44} | tokens/s median | spread (min-max) | ratio vs nanoGPT |")
    print(f"|{'-' * 46}|----------------:|-----------------:|-----------------:|")
    medians = {}
    for label, ts in times.items():
        rates = sorted(n * rows / t for t in ts)
        # the ratio is the median of per-round ratios: each round's runs are adjacent in time, so a burst
        # of load on the shared machine falls on both sides of a ratio
        ratio = f"{statistics.median(b / a for a, b in zip(ts, first, strict=True)):.2f}x" if first else "-"
        medians[label] = statistics.median(rates)
        print(f"| {label:<44} | {medians[label]:15.0f} | {rates[0]:7.0f}-{rates[-1]:<8.0f} | {ratio:>16} |")
    return medians


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ours, theirs, start = build_models(args)
    device = torch.device(args.device)
    if theirs is not None:  # the same tokens as nanoGPT: greedy (its top_k=1) with nanoGPT's crop
        with torch.no_grad():
            want = theirs.generate(torch.tensor([start], device=device), 200, top_k=1)[0, len(start):].tolist()
        got = list(generate_tokens(ours, start, 200, temperature=0, slide=1))
        print(f"greedy, slide 1: ours == nanoGPT for 200 tokens: {'yes' if got == want else 'NO'}")
    times = time_columns(build_columns(args, ours, theirs, start), args.rounds)
    medians = print_table(args, ours, times, theirs is not None)
    if args.json:
        Path(args.json).write_text(json.dumps({"num_samples": args.num_samples, "tokens": args.tokens,
                                               "device": args.device, "tokens_per_s": medians}, indent=1))

    if args.context_loss:
        block = ours.config.block_size
        slides = [default_slide(block) if s.strip() == "default" else int(s) for s in args.slides.split(",")]
        print_context_loss(ours, Path(args.context_loss), [1, 16, *slides])

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            list(generate_tokens(ours, start, args.tokens, temperature=0.8, top_k=200,
                                 generator=torch.Generator(device)))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
