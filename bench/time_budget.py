"""`train --time`: the rule's pick against the frontier of fixed shapes and the two fixed plans, at the same budget.

For each text and budget, every run is the real CLI (`nanogpt train --time T --headless`) in a child process of
its own, one at a time, and is scored by its best checkpoint's bits per byte on the whole validation split
(whole_split.py; the one scale whatever the tokenizer; the run's own evaluations read a few hundred windows, which
on code or a manual is off the whole split by a percent or more):
- frontier: each shape of a coarse grid typed (`--layer-count/--embedding-size/--head-count`, so the plan only
  sets its steps, bounded by --max-passes as for any timed run), at the plan's recipe: the default preset's (Muon,
  WSD, batch 24, block 64), on contexts half as long and twice as many a step in a short run (plan.short_context);
- pick: `--time T` alone (the rule chooses the shape);
- fixed plan A: the default preset's shape and recipe (cpu-small: 4 x 128) with its steps set to fill the budget;
- fixed plan B: nanoGPT's train_shakespeare_char shape and recipe (6 x 384, block 256, batch 64, dropout 0.2,
  AdamW, cosine; `--preset baby-gpt --optimizer adamw --lr-schedule cosine`), steps set to fill the budget.
It prints one table per text and budget as it goes (and appends it to --out, markdown), then the pick's gap
to the best fixed plan and to the frontier's best, and the whole command's wall time against the budget.

Texts: Tiny Shakespeare and the Alice text from ../shared/data (Project Gutenberg's header and footer
stripped), and a ~10 M-character text assembled from this machine's Python standard library sources
(real code, the same on every machine with the same Python: `--code-chars`), each prepared once with the
default tokenizer (a learned BPE of 1,024 tokens) into --work. `--texts manual` adds a second large text to check
a rule fitted on the others: Vim's help files (~9 M characters of English manual prose, where Vim is installed).

    python bench/time_budget.py --budgets 1m 3m                      # the sweep (one run at a time: ~1.5 h)
    python bench/time_budget.py --budgets 10m --texts shakespeare --fixed A   # the pick and plan A at 10 min
    python bench/time_budget.py --budgets 1m --texts shakespeare alice --shapes 2x64 4x128 6x256
    python bench/time_budget.py --budgets 10s --texts alice --shapes 2x64 --no-fixed   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from nanogpt.train.rules import heads_for  # noqa: E402 - after the path
from whole_split import whole_split_bpb  # noqa: E402
SHARED = ROOT.parent / "shared" / "data"
# the frontier's shapes at each budget: the rungs a 2-core CPU can train usefully in that time (a run of 6 x 384
# gets ~150 steps in a minute there; 2 x 64 learns little in three)
GRID = {"1m": ("2x64", "3x96", "4x128", "4x192"), "3m": ("3x96", "4x128", "4x192", "6x256")}
FILL = ["--max-passes", "0"]  # steps fill the budget, however many passes over the text that is
# the fixed plans type their preset's context and batch: a plan keeps them (the rule would shorten a short run's)
FIXED = {
    "A: cpu-small, steps to fit": ["--preset", "cpu-small", "--layer-count", "4", "--embedding-size", "128",
                                   "--head-count", "4", "--block-size", "64", "--batch-size", "24", *FILL],
    "B: nanoGPT baby GPT (AdamW)": ["--preset", "baby-gpt", "--optimizer", "adamw", "--lr-schedule", "cosine",
                                    "--layer-count", "6", "--embedding-size", "384", "--head-count", "6",
                                    "--block-size", "256", "--batch-size", "64", *FILL],
}


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NANOGPT_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "nanogpt", *args], env=env, capture_output=True, text=True)


def code_text(chars: int) -> str:
    """Real code already on the machine: the standard library's .py files, in sorted order, up to `chars`."""
    parts, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(text)
        total += len(text)
        if total >= chars:
            break
    return "\n".join(parts)[:chars]


def manual_text() -> str:
    """Real prose already on many machines: Vim's help files (/usr/share/vim/vim*/doc/*.txt), in sorted order."""
    paths = sorted(Path("/usr/share/vim").glob("vim*/doc/*.txt"))
    if not paths:
        sys.exit("--texts manual: Vim's help files (/usr/share/vim/vim*/doc/*.txt) are not on this machine")
    return "\n".join(path.read_text(encoding="utf-8", errors="replace") for path in paths)


def prepared(name: str, work: Path, code_chars: int) -> Path:
    folder = work / f"data-{name}"
    if (folder / "vocab.json").is_file():
        return folder
    source = {"shakespeare": SHARED / "tinyshakespeare.txt", "alice": SHARED / "gutenberg_alice.txt"}.get(name)
    if source is None:
        source = work / f"{name}.txt"
        source.write_text(manual_text() if name == "manual" else code_text(code_chars), encoding="utf-8")
    extra = ["--strip-gutenberg"] if name == "alice" else []
    done = cli("prepare", str(source), "--out-dir", str(folder), *extra, cache=work / "cache")
    if done.returncode:
        sys.exit(f"prepare {name}: {done.stderr.strip()}")
    return folder


def timed_run(data: Path, budget: str, flags: list[str], out: Path, cache: Path) -> dict:
    """One `train --time` run: its best validation bpb as it measured it and its best checkpoint's on the whole
    split (whole_split.py: the score), the plan line, steps and wall time."""
    t0 = time.perf_counter()
    done = cli("train", "--headless", "--data-dir", str(data), "--time", budget, "--out-dir", str(out), *flags,
               cache=cache)
    wall = time.perf_counter() - t0
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed", "wall": wall}
    plan = next((line for line in (done.stderr + done.stdout).splitlines() if "on this machine: " in line), "")
    logs = sorted(out.glob("model_step_*.training_log.json"), key=lambda p: len(p.read_bytes()))
    log = json.loads(logs[-1].read_text())
    bpbs = [e["validation_bpb"] for e in log if "validation_bpb" in e]
    first = next((e for e in log), {})
    steps = max(e["step"] for e in log)
    return {"bpb": min(bpbs) if bpbs else float("nan"), "whole": whole_split_bpb(out), "steps": steps, "wall": wall,
            "plan": plan, "first_step": first.get("step"), "steps_s": sum(e.get("duration_ms", 0) for e in log) / 1000}


def plan_of(data: Path, budget: str, flags: list[str], cache: Path) -> str:
    """The plan `--time budget` would train, without the budget's name (ending early, it is the same at two)."""
    done = cli("train", "--headless", "--data-dir", str(data), "--time", budget, "--plan", *flags, cache=cache)
    line = next((x for x in done.stdout.splitlines() if "on this machine: " in x), done.stderr[-200:])
    return line.split(" on this machine: ", 1)[-1] if "capped at" in line else f"{budget} {line}"


def shape_flags(shape: str) -> list[str]:
    """The default preset's recipe at shape LAYERSxWIDTH (heads as the plan gives them)."""
    layers, width = (int(v) for v in shape.split("x"))
    return ["--preset", "cpu-small", "--layer-count", str(layers), "--embedding-size", str(width),
            "--head-count", str(heads_for(width))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", nargs="+", default=["1m", "3m"])
    ap.add_argument("--texts", nargs="+", default=["shakespeare", "alice", "code"])
    ap.add_argument("--shapes", nargs="*", default=None, help="LAYERSxWIDTH of the frontier's grid (default: GRID's "
                    "for the budget; none for another budget)")
    ap.add_argument("--no-fixed", action="store_true", help="leave out the two fixed plans")
    ap.add_argument("--fixed", nargs="+", default=["A", "B"], choices=["A", "B"], help="which fixed plans to run")
    ap.add_argument("--no-pick", action="store_true", help="leave out the rule's pick (measure the grid to fit it)")
    ap.add_argument("--code-chars", type=int, default=10_000_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/nanogpt-time-budget"))
    ap.add_argument("--out", type=Path, default=None, help="append the tables (markdown) to this file")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "cache"
    store = args.work / "measured.json"  # every run measured, by text and plan: a later call reuses them
    measured: dict[str, dict] = json.loads(store.read_text()) if store.is_file() else {}
    for text in args.texts:
        data = prepared(text, args.work, args.code_chars)
        for budget in args.budgets:
            rows: list[tuple[str, dict]] = []
            shapes = GRID.get(budget, ()) if args.shapes is None else args.shapes
            runs = [(f"shape {s}", shape_flags(s)) for s in shapes]
            if not args.no_fixed:
                runs += [(name, flags) for name, flags in FIXED.items() if name[0] in args.fixed]
            if not args.no_pick:
                runs.append(("pick (--time alone)", []))
            for i, (name, flags) in enumerate(runs):
                while (args.work / "pause").exists():  # other work on the machine: runs wait for it
                    time.sleep(2)
                # a run that ends at its passes well inside two budgets has one plan: it is measured once
                key = f"{text}: {plan_of(data, budget, flags, cache)}"
                if "whole" in measured.get(key, {}):  # runs from before the whole-split score are run again
                    result = {**measured[key], "same_as": True}
                else:
                    out = args.work / f"run-{text}-{budget}-{i}"
                    shutil.rmtree(out, ignore_errors=True)  # a run of an earlier call, stopped part-way
                    result = timed_run(data, budget, flags, out, cache)
                    if "error" not in result:
                        measured[key] = result
                        store.write_text(json.dumps(measured, indent=1))
                rows.append((name, result))
                print(f"{text} {budget} {name}: {result}", flush=True)
            table = report(text, budget, rows)
            print(table, flush=True)
            if args.out:
                with args.out.open("a", encoding="utf-8") as f:
                    f.write(table + "\n")


def report(text: str, budget: str, rows: list[tuple[str, dict]]) -> str:
    lines = [f"\n**{text}, --time {budget}**\n",
             "| run | bpb, whole split | its own evaluations' best | steps | whole command (s) | plan |",
             "|---|---|---|---|---|---|"]
    for name, r in rows:
        if r.get("same_as"):
            name += " (the plan of a run above: measured once)"
        if "error" in r:
            lines.append(f"| {name} | - | - | - | {r['wall']:.0f} | {r['error'][:80]} |")
        else:
            lines.append(f"| {name} | {r['whole']:.4f} | {r['bpb']:.4f} | {r['steps']:,} | {r['wall']:.0f} | "
                         f"{r['plan'].split(': ', 1)[-1][:90]} |")
    ok = {n: r["whole"] for n, r in rows if "whole" in r}
    pick = ok.get("pick (--time alone)")
    fixed = [v for n, v in ok.items() if n.startswith(("A:", "B:"))]
    frontier = list(ok.values())  # every run measured: the grid, the pick and the fixed plans
    if pick is not None and fixed:
        lines.append(f"\npick vs the better fixed plan: {100 * (pick / min(fixed) - 1):+.1f}% bpb")
    if pick is not None and frontier:
        lines.append(f"pick vs the frontier's best: {100 * (pick / min(frontier) - 1):+.1f}% bpb")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
