"""Benchmark `nanogpt prepare` on a JSON Lines corpus (issue 30) against nanoGPT's openwebtext method.

The corpus: documents of 200 to 8,000 characters cut from the shared texts (Tiny Shakespeare, Alice), written
as one .jsonl of about --mb MB; the same documents also as .jsonl.zst, .parquet and a folder of .txt, whose
bins must be byte-identical to the .jsonl's. Every run is its own process; its peak RSS comes from os.wait4.

nanoGPT's way (data/openwebtext/prepare.py) is run as a script on the same .jsonl: a pool of `cores`
processes maps tiktoken's encode_ordinary (+ <|endoftext|>) over the documents, then np.memmap writes the ids.
(nanoGPT loads the documents with Hugging Face `datasets`, not installed here: the script reads the lines
itself, which only flatters the baseline.)

    python bench/prepare_corpora.py --mb 256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared"))

NANOGPT_WAY = """
import json, sys, time
from multiprocessing import Pool
import numpy as np
sys.path.insert(0, {src!r})
from nanogpt.tokenizers import gpt2_encoding
enc = gpt2_encoding()

def process(line):
    ids = enc.encode_ordinary(json.loads(line)["text"])
    ids.append(enc.eot_token)
    return np.array(ids, dtype=np.uint16)

if __name__ == "__main__":
    with open({path!r}, "rb") as f, Pool({procs}) as pool:
        arrays = pool.map(process, f, chunksize=64)
    arr = np.memmap({out!r}, dtype=np.uint16, mode="w+", shape=(sum(map(len, arrays)),))
    idx = 0
    for batch in np.array_split(np.arange(len(arrays)), 1024):
        if len(batch):
            chunk = np.concatenate([arrays[i] for i in batch])
            arr[idx : idx + len(chunk)] = chunk
            idx += len(chunk)
    arr.flush()
"""


def documents(size_mb: float, seed: int = 0):
    text = "".join((SHARED / "data" / n).read_text(encoding="utf-8") for n in ("tinyshakespeare.txt",
                                                                               "gutenberg_alice.txt"))
    rng, written = random.Random(seed), 0
    while written < size_mb * 1e6:
        n = rng.randint(200, 8000)
        start = rng.randrange(0, len(text) - n)
        doc = text[start : start + n]
        written += len(doc.encode("utf-8"))
        yield doc


def build(folder: Path, size_mb: float, tree_mb: float) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    paths = {"jsonl": folder / "corpus.jsonl", "jsonl.zst": folder / "corpus.jsonl.zst",
             "parquet": folder / "corpus.parquet", "tree": folder / "tree"}
    writer, batch = None, []
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        for doc in documents(size_mb):
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            batch.append(doc)
            if len(batch) == 2000:
                table = pa.table({"text": batch})
                writer = writer or pq.ParquetWriter(paths["parquet"], table.schema)
                writer.write_table(table)
                batch = []
    if batch:
        table = pa.table({"text": batch})
        writer = writer or pq.ParquetWriter(paths["parquet"], table.schema)
        writer.write_table(table)
    writer.close()
    with open(paths["jsonl"], "rb") as src, open(paths["jsonl.zst"], "wb") as dst:
        zstandard.ZstdCompressor().copy_stream(src, dst)
    paths["tree"].mkdir()
    for i, doc in enumerate(documents(tree_mb)):  # the same first documents (same seed) as small .txt files
        sub = paths["tree"] / f"{i // 1000:04d}"
        sub.mkdir(exist_ok=True)
        (sub / f"{i:07d}.txt").write_text(doc, encoding="utf-8")
    return paths


def run(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status:
        sys.exit(f"{cmd} failed: {err[-2000:]}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def prepare(source: Path, out: Path, tokenizer: str, *flags: str) -> tuple[float, float]:
    env = {"PYTHONPATH": str(ROOT / "src")}
    return run([sys.executable, "-m", "nanogpt", "prepare", str(source), "--tokenizer", tokenizer,
                "--out-dir", str(out), *flags], env)


def digest(path: Path) -> str:
    """The file's SHA-256, read a megabyte at a time: this process stays small, and its children's peak RSS
    (wait4) does not count bins it held (a child inherits the parent's memory until it execs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def speed(jsonl: Path, folder: Path, mb: float, cores: int) -> None:
    """nanoGPT's way, then prepare with gpt2 and with a learned BPE, on the same .jsonl."""
    script = folder / "nanogpt_way.py"
    script.write_text(NANOGPT_WAY.format(src=str(ROOT / "src"), path=str(jsonl), procs=cores,
                                         out=str(folder / "nanogpt_way.bin")))
    base, base_rss = run([sys.executable, str(script)])
    print(f"nanoGPT's way (gpt2, {cores} processes): {base:.1f} s, {mb / base:.1f} MB/s, "
          f"peak RSS {base_rss:.0f} MB (parent)", flush=True)
    (folder / "nanogpt_way.bin").unlink()
    for tok in ("gpt2", "bpe"):
        wall, rss = prepare(jsonl, folder / f"out-{tok}", tok)
        print(f"nanogpt prepare --tokenizer {tok}: {wall:.1f} s, {mb / wall:.1f} MB/s "
              f"({base / wall:.2f}x nanoGPT's way), peak RSS {rss:.0f} MB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=256)
    ap.add_argument("--tree-mb", type=float, default=20, help="MB of the .txt folder checked against the .jsonl")
    ap.add_argument("--speed-only", action="store_true", help="only the speed runs (no .zst, .parquet, tree checks)")
    ap.add_argument("--kinds-only", action="store_true", help="only the .zst, .parquet and tree checks (and the "
                    ".jsonl prepare they compare with)")
    ap.add_argument("--build-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        build(Path(args.build_only), args.mb, args.tree_mb)
        return
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # built in a process of its own: a child's peak RSS (wait4) includes what it inherited from this one
        subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--tree-mb", str(args.tree_mb),
                        "--build-only", tmp], check=True)
        paths = {"jsonl": folder / "corpus.jsonl", "jsonl.zst": folder / "corpus.jsonl.zst",
                 "parquet": folder / "corpus.parquet", "tree": folder / "tree"}
        mb = paths["jsonl"].stat().st_size / 1e6
        print(f"corpus: {mb:.0f} MB of JSON Lines; {cores} cores", flush=True)
        if not args.kinds_only:
            speed(paths["jsonl"], folder, mb, cores)
        if args.speed_only:
            return
        if args.kinds_only:
            prepare(paths["jsonl"], folder / "out-gpt2", "gpt2")
        reference = [digest(folder / "out-gpt2" / n) for n in ("train.bin", "val.bin")]
        same = True
        for kind in ("jsonl.zst", "parquet"):
            wall, rss = prepare(paths[kind], folder / f"out-{kind}", "gpt2")
            print(f"  {kind}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
            same &= [digest(folder / f"out-{kind}" / n) for n in ("train.bin", "val.bin")] == reference
        print(f".jsonl, .jsonl.zst, .parquet give byte-identical bins: {same}")
        head = folder / "head.jsonl"  # the tree's documents (the corpus's first ones) as JSON Lines
        with open(paths["jsonl"], "rb") as src, open(head, "wb") as dst:
            for _ in range(sum(1 for _ in paths["tree"].rglob("*.txt"))):
                dst.write(src.readline())
        prepare(head, folder / "out-head", "gpt2")
        # --keep-gutenberg: documents cut from the raw Alice text hold its licence lines, which prepare removes from
        # text files (not from records) unless told to keep them
        wall, rss = prepare(paths["tree"], folder / "out-tree", "gpt2", "--keep-gutenberg")
        same = all(digest(folder / "out-tree" / n) == digest(folder / "out-head" / n) for n in ("train.bin", "val.bin"))
        print(f"  folder of .txt ({args.tree_mb:.0f} MB): {wall:.1f} s, peak RSS {rss:.0f} MB; "
              f"byte-identical to the same documents as .jsonl: {same}")


if __name__ == "__main__":
    main()
