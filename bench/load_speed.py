"""Training speed with one core busy: ours (shards on fixed threads, the old way), ours (adaptive), nanoGPT.

A spinning process pinned to one core (`taskset -c 1 python -c 'while True: pass'`, here os.sched_setaffinity)
stands for the other work of a shared machine; it is killed at the end, whatever happens. The same three sides
are measured with the machine idle first, for reference. Each side is a process of bench/train_speed.py's own
(its way of running ours and nanoGPT's train.py recipe); they take turns in blocks of steps. Prints a table for
BENCHMARKS.md ("Training speed under load").

    PYTHONPATH=src python bench/load_speed.py                  # cpu-small, 200 steps per side and phase
    PYTHONPATH=src python bench/load_speed.py --quick          # a smoke run: a few steps, to see it works
    PYTHONPATH=src taskset -c 0,1 python bench/load_speed.py   # a bigger machine: two of its cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402 - bench/train_speed.py: its workers, data and nanoGPT driver

SIDES = ("fixed", "adaptive", "nanogpt")
LABELS = {"fixed": "ours, shards on fixed threads (before)", "adaptive": "ours, adaptive (now)",
          "nanogpt": "nanoGPT train.py recipe"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--steps", type=int, default=200, help="timed steps per side and phase")
    p.add_argument("--skip", type=int, default=30, help="first steps per side and phase left out")
    p.add_argument("--block", type=int, default=10, help="steps per side before the next side's turn")
    p.add_argument("--spin-core", type=int, default=1, help="the core the spinning process is pinned to")
    p.add_argument("--no-idle", action="store_true", help="skip the idle phase")
    p.add_argument("--quick", action="store_true", help="a smoke run: 8 steps per side and phase, 2 skipped")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.skip, args.block = 8, 2, 4
    if args.spin_core not in os.sched_getaffinity(0):
        p.error(f"--spin-core {args.spin_core}: not one of this process's cores {sorted(os.sched_getaffinity(0))}")
    return args


@contextlib.contextmanager
def spinner(core: int):
    """A process spinning on `core` for the duration; killed (and reaped) on the way out."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(proc.pid, {core})
        time.sleep(0.5)  # let the scheduler see it
        yield proc
    finally:
        proc.kill()
        proc.wait()


def start_workers(args: argparse.Namespace, data_dir: Path) -> dict[str, train_speed.Worker]:
    """The three sides, each in its process; ours twice: NANOGPT_SHARD_WORKERS pins the old way."""
    speed_args = train_speed.parse_args(["--preset", args.preset, "--device", "cpu", "--sync", "step"])
    workers = {}
    before = os.environ.get("NANOGPT_SHARD_WORKERS")
    try:
        os.environ["NANOGPT_SHARD_WORKERS"] = str(os.cpu_count() or 1)  # all shards side by side, always
        workers["fixed"] = train_speed.Worker("ours", speed_args, data_dir)
        os.environ.pop("NANOGPT_SHARD_WORKERS")
        workers["adaptive"] = train_speed.Worker("ours", speed_args, data_dir)
    finally:
        if before is not None:
            os.environ["NANOGPT_SHARD_WORKERS"] = before
    if (train_speed.REFERENCE / "model.py").is_file():
        workers["nanogpt"] = train_speed.Worker("nanogpt", speed_args, data_dir, workers["fixed"].info["shape"])
    else:
        print(f"nanoGPT reference not found at {train_speed.REFERENCE}: ours only", file=sys.stderr)
    return workers


def phase(args: argparse.Namespace, data_dir: Path) -> dict[str, dict]:
    """One phase (idle or busy): fresh workers, alternating blocks, statistics per side."""
    workers = start_workers(args, data_dir)
    times: dict[str, list[float]] = {name: [] for name in workers}
    reduced: dict[str, int] = {}
    round_no = 0
    try:
        while any(len(t) < args.steps + args.skip for t in times.values()):
            names = list(workers) if round_no % 2 == 0 else list(workers)[::-1]
            for name in names:
                n = min(args.block, args.steps + args.skip - len(times[name]))
                if n > 0:
                    reply = workers[name].steps(n)
                    times[name].extend(reply["times"])
                    reduced[name] = reply.get("reduced", 0)
            round_no += 1
    finally:
        for w in workers.values():
            w.close()
    results = {}
    for name, w in workers.items():
        kept = times[name][args.skip:] or times[name]
        p90 = statistics.quantiles(kept, n=10)[-1] if len(kept) > 1 else kept[0]
        results[name] = {"label": w.info["label"], "median_ms": statistics.median(kept), "p90_ms": p90,
                         "steps": len(kept), "reduced": reduced.get(name, 0), "all_steps": len(times[name])}
    return results


def print_table(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> None:
    cores = sorted(os.sched_getaffinity(0))
    print(f"# load speed: preset {args.preset}, cores {cores}, spinner on core {args.spin_core}, steps "
          f"{args.skip}-{args.skip + args.steps} per side and phase, blocks of {args.block}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    head = f"| {'machine':<16} | {'side':<40} | median ms | p90 ms | ours/nanoGPT | reduced |"
    print(head)
    print("|" + "|".join("-" * len(c) for c in head.split("|")[1:-1]) + "|")
    for machine, sides in results.items():
        base = sides.get("nanogpt")
        for name in SIDES:
            if name not in sides:
                continue
            r = sides[name]
            ratio = f"{r['median_ms'] / base['median_ms']:.3f}" if base else "-"
            share = f"{r['reduced']}/{r['all_steps']}" if name != "nanogpt" else "-"
            print(f"| {machine:<16} | {LABELS[name]:<40} | {r['median_ms']:9.1f} | {r['p90_ms']:6.1f} | "
                  f"{ratio:>12} | {share:>7} |")
    print("reduced: micro-batches whose shards ran on fewer threads than shards (a core straggled), of all run")
    for name in ("fixed", "nanogpt"):
        label = next((s[name]["label"] for s in results.values() if name in s), None)
        if label:
            print(f"{LABELS[name]}: {label}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="load_speed_") as tmp:
        data_dir = train_speed.prepared_data(argparse.Namespace(data_dir=None), Path(tmp))
        if not args.no_idle:
            results["idle"] = phase(args, data_dir)
        with spinner(args.spin_core):
            results[f"core {args.spin_core} busy"] = phase(args, data_dir)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
