"""Wall time from launch to the best validation loss, ours against nanoGPT's train.py, from their own logs.

Two parts, so that bench/gpu_check.sh can cap each training run with `timeout` and still keep what it logged:

    CMD 2>&1 | python bench/time_to_best.py stamp > run.log     # each line prefixed with seconds since launch
    python bench/time_to_best.py table ours.log nanogpt.log      # a Markdown table; --json FILE too

`stamp` starts its clock when it starts, which is when the shell launches the pipeline (the training command
starts at the same moment), so the stamps are wall seconds from launch, start-up and compilation included:
what a user waits. `table` reads the validation lines of both formats, ours (`step 250/2500 | val loss
1.4725`) and nanoGPT's train.py (`step 250: train loss 1.4, val loss 1.4725`), and reports for each run its
best validation loss, the step and second it came, and when ours first reached nanoGPT's best.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

# ours: "step    250/2500 | val loss 1.4725 ..."; nanoGPT: "step 250: train loss 1.6, val loss 1.4725"
VAL_LINE = re.compile(r"step\s+(\d+)(?:/\d+)?\s*[:|].*?val loss (\d+\.\d+)")


def stamp() -> int:
    """Copy stdin to stdout, each line prefixed with the seconds since this process started (tab-separated)."""
    started = time.perf_counter()
    for line in sys.stdin:
        sys.stdout.write(f"{time.perf_counter() - started:.2f}\t{line}")
        sys.stdout.flush()
    return 0


def evaluations(log: Path) -> list[tuple[int, float, float]]:
    """(step, val loss, seconds from launch) of each validation line in a stamped log, in order."""
    points = []
    for line in log.read_text(errors="replace").splitlines():
        seconds, _, text = line.partition("\t")
        m = VAL_LINE.search(text)
        if m:
            points.append((int(m.group(1)), float(m.group(2)), float(seconds)))
    return points


def summary(points: list[tuple[int, float, float]], last_line_seconds: float) -> dict:
    """Best validation loss of one run, its step and second, and the run's last logged second."""
    if not points:
        return {"best": None, "step": None, "seconds": None, "end_seconds": last_line_seconds}
    best = min(points, key=lambda p: (p[1], p[2]))
    return {"best": best[1], "step": best[0], "seconds": best[2], "end_seconds": last_line_seconds,
            "evaluations": [list(p) for p in points]}


def last_seconds(log: Path) -> float:
    lines = log.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        head = line.partition("\t")[0]
        try:
            return float(head)
        except ValueError:
            continue
    return 0.0


def table(ours_log: Path, theirs_log: Path, json_path: str | None) -> int:
    ours_points, theirs_points = evaluations(ours_log), evaluations(theirs_log)
    ours, theirs = summary(ours_points, last_seconds(ours_log)), summary(theirs_points, last_seconds(theirs_log))
    # when ours first reached nanoGPT's best: the target of issue 21 (<= 0.4x nanoGPT's time to it)
    reached = None
    if theirs["best"] is not None:
        reached = next((p for p in ours_points if p[1] <= theirs["best"]), None)
    print("| run | best val (step) | reached best at | last line at |")
    print("|---|---|---|---|")
    for name, s in (("ours (`nanogpt train`, the CUDA default)", ours), ("nanoGPT train.py", theirs)):
        best = f"{s['best']:.4f} ({s['step']})" if s["best"] is not None else "no validation line"
        at = f"{s['seconds']:.1f} s" if s["seconds"] is not None else "-"
        print(f"| {name} | {best} | {at} | {s['end_seconds']:.1f} s |")
    ratio = None
    if reached is not None and theirs["seconds"]:
        ratio = reached[2] / theirs["seconds"]
        print(f"\nours reached nanoGPT's best ({theirs['best']:.4f}) at step {reached[0]}, {reached[2]:.1f} s from "
              f"launch: {ratio:.2f}x nanoGPT's {theirs['seconds']:.1f} s (target <= 0.4x); ours' best "
              f"{ours['best']:.4f} (target <= 1.42)")
    elif theirs["best"] is not None:
        print(f"\nours did not reach nanoGPT's best ({theirs['best']:.4f}) in its log")
    if json_path:
        Path(json_path).write_text(json.dumps({"ours": ours, "nanogpt": theirs, "ratio_to_nanogpt_best": ratio},
                                              indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("stamp", help="prefix each stdin line with seconds since launch")
    t = sub.add_parser("table", help="best validation loss and time to it, ours against nanoGPT")
    t.add_argument("ours_log", type=Path)
    t.add_argument("nanogpt_log", type=Path)
    t.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.command == "stamp":
        return stamp()
    return table(args.ours_log, args.nanogpt_log, args.json)


if __name__ == "__main__":
    sys.exit(main())
