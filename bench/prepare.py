"""Benchmark `nanogpt prepare`: MB/s and peak memory for char and GPT-2 on a ~100 MB corpus.

The corpus is the shared data (Tiny Shakespeare and Gutenberg Alice) repeated into one file in a temporary
folder. Every run is its own process; its peak RSS and CPU time come from os.wait4, so one run never hides another.
MB/s is wall clock; MB per CPU-second is printed too, because it does not depend on other load.
Optional baselines: karpathy/nanoGPT's data/shakespeare_char/prepare.py on the same file, and tiktoken's own
encode_ordinary_batch on 2 threads over the first 20 MB held in memory (the ceiling for GPT-2).

    python bench/prepare.py                       # char and gpt2, 100 MB
    python bench/prepare.py --nanogpt --tiktoken  # plus the baselines
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared"))  # ../shared, or where it was copied
TIKTOKEN_BASELINE = """
import sys, time
sys.path.insert(0, {src!r})
from nanogpt.tokenizers import gpt2_encoding
enc = gpt2_encoding()
with open({path!r}, encoding="utf-8") as f:
    text = f.read(20_000_000)
pieces = [text[i : i + 1_000_000] for i in range(0, len(text), 1_000_000)]
t, cpu = time.perf_counter(), time.process_time()
enc.encode_ordinary_batch(pieces, num_threads=2)
print(len(text.encode()) / 1e6, time.perf_counter() - t, time.process_time() - cpu)
"""


def build_corpus(folder: Path, size_mb: float) -> Path:
    """One UTF-8 file of about size_mb MB made of the shared texts, repeated."""
    parts = [(SHARED / "data" / name).read_bytes() for name in ("tinyshakespeare.txt", "gutenberg_alice.txt")]
    block = b"".join(parts)
    path = folder / "corpus.txt"
    with open(path, "wb") as f:
        written = 0
        while written < size_mb * 1e6:
            f.write(block)
            written += len(block)
    return path


def measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, str]:
    """(wall seconds, CPU seconds, peak RSS in MB, output) of one command run in its own process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out}")
    # CPU seconds (user + system) too: on a shared machine they say more than the wall clock does
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=float, default=100, help="corpus size in MB (default: 100)")
    parser.add_argument("--tokenizers", default="char,gpt2", help="comma-separated (default: char,gpt2)")
    parser.add_argument(
        "--nanogpt", action="store_true", help="also run nanoGPT's shakespeare_char/prepare.py"
    )
    parser.add_argument("--tiktoken", action="store_true", help="also time tiktoken's encode_ordinary_batch")
    args = parser.parse_args()
    if not (SHARED / "data" / "tinyshakespeare.txt").is_file():
        sys.exit(f"shared data not found in {SHARED / 'data'}")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    rows = []
    with tempfile.TemporaryDirectory(prefix="nanogpt-bench-") as tmp:
        folder = Path(tmp)
        corpus = build_corpus(folder, args.size_mb)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.1f} MB in {corpus}", file=sys.stderr)
        for tok in args.tokenizers.split(","):
            out = folder / f"out-{tok}"
            cmd = [
                sys.executable,
                "-m",
                "nanogpt",
                "prepare",
                str(corpus),
                "--tokenizer",
                tok,
                "--out-dir",
                str(out),
            ]
            seconds, cpu, peak, _ = measure(cmd, folder, env)
            rows.append((f"nanogpt prepare --tokenizer {tok}", mb / seconds, seconds, cpu, peak))
            print(f"{rows[-1][0]}: {seconds:.1f} s", file=sys.stderr)
        if args.nanogpt:
            ref = SHARED / "reference" / "nanoGPT" / "data" / "shakespeare_char" / "prepare.py"
            work = folder / "nanogpt"
            work.mkdir()
            shutil.copy(ref, work / "prepare.py")
            os.symlink(corpus, work / "input.txt")  # present, so it never downloads
            seconds, cpu, peak, _ = measure([sys.executable, "prepare.py"], work, env)
            rows.append(("nanoGPT shakespeare_char/prepare.py", mb / seconds, seconds, cpu, peak))
        if args.tiktoken:
            code = TIKTOKEN_BASELINE.format(src=str(ROOT / "src"), path=str(corpus))
            _, _, peak, out = measure([sys.executable, "-c", code], folder, env)
            size, seconds, cpu = map(float, out.split()[-3:])
            name = f"tiktoken encode_ordinary_batch, 2 threads, {size:.0f} MB in memory"
            rows.append((name, size / seconds, seconds, cpu, peak))

    print(f"\ncorpus {mb:.1f} MB (shared data repeated), {os.cpu_count()} CPUs\n")
    # MB per CPU-second does not depend on what else the machine is running; MB/s does
    print(
        f"| {'command':<60} | {'MB/s':>6} | {'seconds':>7} | {'CPU s':>6} | {'MB/CPU-s':>8} | {'peak RSS':>8} |"
    )
    print(f"|{'-' * 62}|{'-' * 8}|{'-' * 9}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    for name, rate, seconds, cpu, peak in rows:
        per_cpu = rate * seconds / cpu
        print(f"| {name:<60} | {rate:6.1f} | {seconds:7.1f} | {cpu:6.1f} | {per_cpu:8.1f} | {peak:5.0f} MB |")


if __name__ == "__main__":
    main()
