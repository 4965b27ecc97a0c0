"""How much the live UI slows training: cpu-small step times with and without it, side by side.

Variants, each a fresh cpu-small run of --steps steps on Tiny Shakespeare (char), no evaluation in between:
  engine       Trainer.run with a no-op emit: the bare loop, no front end
  headless     headless.run_headless (progress lines to /dev/null), in this process
  tui          the Textual app driven headlessly by App.run_test() at 120x40, in this process
  cli-headless `python -m nanogpt train --headless` as a subprocess, output to /dev/null
  cli-tui-pty  `python -m nanogpt train` as a subprocess in a real 120x40 pseudo-terminal (the real UI:
               it draws and writes escape codes to a terminal); q is sent once the run has saved
The metric is the mean step time from the run's training log (`duration_ms` of each step after --skip),
i.e. how long the engine's steps take while the front end does its work beside them. For `tui`
it also prints how busy the UI thread was (its CPU time over the run's wall time): the cost that does
not depend on how noisy the machine is. Variants alternate
round by round so that the noise of a shared machine falls on all alike; compare the ratios.

    PYTHONPATH=src python bench/ui_overhead.py                      # 3 rounds of 200 steps, all variants
    PYTHONPATH=src python bench/ui_overhead.py --rounds 5 --variants engine,tui,cli-headless,cli-tui-pty
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TEXT = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared")) / "data" / "tinyshakespeare.txt"
VARIANTS = ("engine", "headless", "tui", "cli-headless", "cli-tui-pty")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200, help="steps per run")
    p.add_argument("--skip", type=int, default=20, help="first steps of each run left out (warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="runs per variant (alternating)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads in every variant (0: torch's default, all cores)")
    p.add_argument("--json", help="also write the per-run step times to this JSON file")
    return p.parse_args(argv)


def settings(args: argparse.Namespace, data: Path, out: Path) -> dict:
    return {"steps": args.steps, "validation_interval": 0, "device": "cpu", "data_dir": str(data),
            "out_dir": str(out)}


def step_ms(stem_dir: Path, steps: int, skip: int) -> list[float]:
    """Per-step durations (ms) after `skip`, from the training log the run saved."""
    log = json.loads((stem_dir / f"model_step_{steps}.training_log.json").read_text())
    return [float(e["duration_ms"]) for e in log if e["step"] > skip]


def run_engine(args: argparse.Namespace, data: Path, out: Path) -> None:
    from nanogpt.train.setup import build_trainer

    from nanogpt.runtime.machine import training_process

    trainer = build_trainer(settings(args, data, out), preset=args.preset)
    with training_process(trainer.hardware):  # what the CLI applies around a run
        trainer.run(lambda event: None)


def run_headless_variant(args: argparse.Namespace, data: Path, out: Path) -> None:
    from nanogpt.train.setup import build_trainer
    from nanogpt.headless import run_headless

    from nanogpt.runtime.machine import training_process

    trainer = build_trainer(settings(args, data, out), preset=args.preset)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), training_process(trainer.hardware):
        run_headless(trainer)


def run_tui_variant(args: argparse.Namespace, data: Path, out: Path) -> float:
    """Returns the UI thread's CPU time over the run's wall time (1.0 = one core kept busy)."""
    from nanogpt.train.setup import build_trainer
    from nanogpt.tui.app import TrainingApp

    from nanogpt.runtime.machine import training_process

    trainer = build_trainer(settings(args, data, out), preset=args.preset)
    app = TrainingApp(trainer)
    share = 0.0

    async def drive() -> None:
        nonlocal share
        async with app.run_test(size=(120, 40)) as pilot:
            # the app, its timers and its drawing all run on this thread (the engine has its own)
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            while app.finished is None:
                await pilot.pause(0.1)
            share = (time.thread_time() - cpu0) / (time.perf_counter() - wall0)
            await pilot.press("q")

    with training_process(trainer.hardware, ui=True):  # as the CLI runs the UI
        asyncio.run(drive())
    return share


def cli_command(args: argparse.Namespace, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nanogpt", "train", "--preset", args.preset, "--steps", str(args.steps),
            "--validation-interval", "0", "--device", "cpu", "--data-dir", str(data), "--out-dir", str(out)]


def cli_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli_headless(args: argparse.Namespace, data: Path, out: Path) -> None:
    subprocess.run([*cli_command(args, data, out), "--headless"], env=cli_env(args), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_cli_tui_pty(args: argparse.Namespace, data: Path, out: Path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**cli_env(args), "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(cli_command(args, data, out), env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)

    def drain() -> None:  # a terminal reads what the app writes; without it the app would block
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    done = out / f"model_step_{args.steps}.training_log.json"
    while not done.exists() and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # the UI shows the final numbers; then quit as a user would
    os.write(master, b"q")
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    if proc.returncode != 0:
        raise RuntimeError(f"the UI run exited with {proc.returncode}")


RUNNERS = {"engine": run_engine, "headless": run_headless_variant, "tui": run_tui_variant,
           "cli-headless": run_cli_headless, "cli-tui-pty": run_cli_tui_pty}


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(RUNNERS)
    if unknown:
        sys.exit(f"unknown variant(s): {', '.join(sorted(unknown))}")
    import torch

    from nanogpt.prepare import prepare

    if args.threads:
        torch.set_num_threads(args.threads)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, avx512_bf16: {'avx512_bf16' in flags}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}")
    results: dict[str, list[float]] = {v: [] for v in variants}  # mean step ms of each run
    ui_share: list[float] = []  # tui variant: the UI thread's CPU time / wall time
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        source = str(SHARED_TEXT) if SHARED_TEXT.is_file() else None  # None: the bundled copy
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            with contextlib.redirect_stderr(sink):
                prepare(source, tokenizer="char", out_dir=str(data))
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[: r % len(variants)]
            for v in order:
                out = tmp / f"{v}-{r}"
                t0 = time.perf_counter()
                share = RUNNERS[v](args, data, out)
                ms = step_ms(out, args.steps, args.skip)
                results[v].append(statistics.fmean(ms))
                if share is not None:
                    ui_share.append(share)
                print(f"round {r + 1} {v:13s} {statistics.fmean(ms):7.2f} ms/step "
                      f"(median {statistics.median(ms):.2f}), run took {time.perf_counter() - t0:.1f} s"
                      + (f", UI thread busy {100 * share:.1f}% of a core" if share is not None else ""),
                      flush=True)
    base = statistics.median(results[variants[0]])
    print()
    print(f"{args.preset}, {args.steps} steps per run (first {args.skip} left out), {args.rounds} rounds; "
          f"ratio against {variants[0]}")
    print(f"| variant | mean step ms (median of runs) | steps/s | vs {variants[0]} | runs (ms) |")
    print("|---|---:|---:|---:|---|")
    for v in variants:
        med = statistics.median(results[v])
        runs = ", ".join(f"{x:.1f}" for x in results[v])
        print(f"| {v} | {med:.2f} | {1000 / med:.1f} | {med / base:.3f} | {runs} |")
    if ui_share:
        busy = 100 * statistics.median(ui_share)
        print(f"\nUI thread (app, timers, chart drawing) busy: {busy:.1f}% of one core "
              f"(median of {len(ui_share)} runs: {', '.join(f'{100 * x:.1f}%' for x in ui_share)})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
