"""What `--shard` (FSDP2) costs against DDP: per-step time and peak memory per process, torchrun on N CPU processes.

Each measurement is a real `torchrun -m nanogpt train` job (gloo, one intra-op thread a process, as torchrun
sets), DDP and sharded taking turns (--rounds of each, alternating) so that the noise of a shared machine falls
on both alike. Per-step time: the median of rank 0's logged step durations after the first --skip steps.
Peak memory per process: each rank's high-water resident set (VmHWM in /proc/PID/status, read every 50 ms
while the job runs; Linux only). Rank 0 gathers the whole weights and optimizer state into its memory to
write a checkpoint, so its peak includes that copy; the other ranks' peaks are what training alone holds.

    PYTHONPATH=src python bench/shard_speed.py                       # 2 processes, AdamW then Muon
    PYTHONPATH=src python bench/shard_speed.py --layers 12 --width 768 --steps 20 --optimizer adamw
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _workers(agent: int) -> dict[int, int]:
    """{pid: RANK} of the processes torchrun `agent` started."""
    found = {}
    for pid in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            found[int(pid)] = rank
    return found


def _watch(agent: subprocess.Popen, peaks: dict[int, float]) -> None:
    """Each rank's VmHWM in MiB, kept in `peaks` by rank, until `agent` ends."""
    while agent.poll() is None:
        try:
            for pid, rank in _workers(agent.pid).items():
                status = Path(f"/proc/{pid}/status").read_text()
                kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
                peaks[rank] = max(peaks.get(rank, 0.0), kib / 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--rounds", type=int, default=2, help="jobs of each kind, alternating")
    p.add_argument("--optimizer", choices=("adamw", "muon", "both"), default="both")
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def job(args: argparse.Namespace, data: Path, out: Path, optimizer: str, shard: bool) -> tuple[float, list[float]]:
    """One torchrun job: (median ms per step after --skip, each rank's peak RSS in MiB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={args.nproc}", "-m", "nanogpt", "train", "--headless", "--device", "cpu",
        "--dtype", "float32", "--no-compile", "--data-dir", str(data), "--out-dir", str(out),
        "--layer-count", str(args.layers), "--embedding-size", str(args.width), "--head-count", str(args.heads),
        "--block-size", str(args.block_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
        "--optimizer", optimizer, "--validation-interval", "0", "--eval-iters", "1", "--eval-sample-tokens", "0",
        "--log-interval", "1", "--shard" if shard else "--no-shard",
    ]
    with tempfile.TemporaryFile("w+") as said:
        agent = subprocess.Popen(cmd, env=env, stdout=said, stderr=subprocess.STDOUT, text=True)
        peaks: dict[int, float] = {}
        watcher = threading.Thread(target=_watch, args=(agent, peaks))
        watcher.start()
        code = agent.wait()
        watcher.join()
        if code != 0:
            said.seek(0)
            raise SystemExit(said.read()[-5000:])
    log = json.loads((out / f"model_step_{args.steps}.training_log.json").read_text())
    durations = [e["duration_ms"] for e in log][args.skip:]
    return statistics.median(durations), [peaks.get(rank, float("nan")) for rank in range(args.nproc)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optimizers = ("adamw", "muon") if args.optimizer == "both" else (args.optimizer,)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "nanogpt", "prepare", "--tokenizer", "char", "--out-dir", str(data)],
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, capture_output=True, check=True)
        for optimizer in optimizers:
            runs: dict[str, list[tuple[float, float]]] = {"ddp": [], "shard": []}
            for r in range(args.rounds):
                for kind in ("ddp", "shard"):
                    out = Path(tmp) / f"{optimizer}-{kind}-{r}"
                    runs[kind].append(job(args, data, out, optimizer, kind == "shard"))
            results[optimizer] = {
                kind: {"ms_per_step": statistics.median(m for m, _ in v),
                       "peak_rss_mib_by_rank": [max(p[r] for _, p in v) for r in range(args.nproc)]}
                for kind, v in runs.items()
            }
    shape = f"{args.layers} layers x {args.width} wide, block {args.block_size}, batch {args.batch_size}"
    print(f"{args.nproc} CPU processes (gloo, 1 thread each), {shape}; median of {args.rounds} jobs x "
          f"{args.steps - args.skip} steps")
    print(f"{'optimizer':10} {'kind':6} {'ms/step':>9} {'ratio':>6}  peak RSS MiB by rank (rank 0 writes)")
    for optimizer, kinds in results.items():
        base = kinds["ddp"]["ms_per_step"]
        for kind, r in kinds.items():
            peaks = " ".join(f"{p:6.0f}" for p in r["peak_rss_mib_by_rank"])
            print(f"{optimizer:10} {kind:6} {r['ms_per_step']:9.1f} {r['ms_per_step'] / base:6.2f}  {peaks}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
