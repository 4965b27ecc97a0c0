"""Learning a BPE on hostile text (issue 33, cause 2): `nanogpt prepare FILE --tokenizer bpe` on texts of 0.25 to
2 MB of four kinds, one child process each, its wall time and peak resident memory (ru_maxrss) in a table.

    PYTHONPATH=src python bench/bpe_hostile.py [--sizes 0.25,0.5,1,2] [--kinds letters,one,words,shakespeare]

Random letters without a space are one pre-token per line for the GPT-2 regex, the case that was superlinear;
one character repeated is the degenerate one; random words have many distinct words (the trainer's memory).
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import string
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path


def text_of(kind: str, size: int) -> str:
    rng = random.Random(0)
    if kind == "letters":
        return "".join(rng.choices(string.ascii_lowercase, k=size))
    if kind == "one":
        return "a" * size
    if kind == "words":
        words, n = [], 0
        while n < size:
            w = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10)))
            words.append(w)
            n += len(w) + 1
        return " ".join(words)[:size]
    whole = gzip.decompress((resources.files("nanogpt") / "data" / "tinyshakespeare.txt.gz").read_bytes()).decode()
    return (whole * (size // len(whole) + 1))[:size]


def run(path: Path, out: Path, vocab: int) -> tuple[float, int, int]:
    """(seconds, peak RSS in MB, exit code) of one prepare in a child process."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", "prepare", str(path), "--tokenizer", "bpe",
                             "--vocab-size", str(vocab), "--out-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss // 1024, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.25,0.5,1,2", help="MB of text, comma-separated")
    parser.add_argument("--kinds", default="letters,one,words,shakespeare")
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    print("| text | MB | seconds | s per MB | peak RSS MB | exit |\n|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            for mb in (float(s) for s in args.sizes.split(",")):
                path = Path(tmp) / f"{kind}.txt"
                path.write_text(text_of(kind, int(mb * 1e6)), encoding="utf-8")
                seconds, rss, code = run(path, Path(tmp) / f"out-{kind}-{mb}", args.vocab_size)
                print(f"| {kind} | {mb:g} | {seconds:.1f} | {seconds / mb:.1f} | {rss} | {code} |", flush=True)


if __name__ == "__main__":
    main()
