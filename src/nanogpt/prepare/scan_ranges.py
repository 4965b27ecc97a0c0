"""The first pass over a large plain .jsonl on every core: the file cut at line starts into ranges, each range's
records counted by a worker process, the counts joined in file order.

What it finds is what documents.scan finds reading the file alone (tested): documents, characters, empty and bad
records with the first bad one's line number, the characters seen (char level), and marks for the BPE's sample
(a mark every records.MARK_CHARS characters from each range's start, not the file's: any line start will do).
"""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .inputs import compression
from .jobs import start_pool, start_worker, use_processes, worker_died
from .progress import Progress
from .records import BadRecords, jsonl_texts, tally
from .sources import CharSet, Doc

RANGE_BYTES = 16 << 20  # bytes of the file one worker counts at a time, at most (4 ranges a worker, at least)


@dataclass
class Counted:
    """One range's counts; `marks` as in Doc.marks, their lines, documents and characters from the range's start."""

    size: int
    lines: int = 0
    count: int = 0
    empty: int = 0
    chars: int = 0
    bad: int = 0
    first_bad: tuple[int, str] | None = None  # its line in the range, and what is wrong with it
    marks: list[int] = field(default_factory=list)
    seen: np.ndarray | None = None  # the characters seen, as code points (char level only)


def ranges(path: Path, size: int, step: int) -> list[tuple[int, int]]:
    """[start, end) byte ranges of about `step` bytes, each starting at the start of a line."""
    starts = [0]
    with open(path, "rb") as f:
        for guess in range(step, size, step):
            if guess > starts[-1]:
                f.seek(guess - 1)
                f.readline()  # to the end of the line holding the byte before: the next line starts after it
                if f.tell() < size:
                    starts.append(f.tell())
    return list(zip(starts, starts[1:] + [size]))


def _count(path: str, start: int, end: int, text_field: str, chars: bool) -> Counted:
    counted = Counted(end - start)
    bad = _Bad()
    charset = CharSet() if chars else None
    tally(jsonl_texts(Path(path), text_field, bad, None, (start, 0), stop=end), bad, counted, charset, counted.marks)
    counted.lines, counted.bad, counted.first_bad = bad.line, bad.count, bad.first_at
    counted.seen = np.flatnonzero(charset.seen).astype(np.uint32) if charset is not None else None
    return counted


class _Bad(BadRecords):
    """Counts every bad record and keeps where the first was: the parent says it with the file's line number."""

    def __init__(self) -> None:
        super().__init__(skip=True)
        self.first_at: tuple[int, str] | None = None

    def bad(self, where: str, problem: str) -> None:
        if self.first_at is None:
            self.first_at = (self.line, problem)
        super().bad(where, problem)


def scan_jsonl(doc: Doc, text_field: str, skip_bad: bool, charset: CharSet | None, progress: Progress,
               workers: int) -> None:
    """documents.scan of a plain .jsonl, its ranges counted on `workers` processes."""
    pool = start_pool(workers, start_worker)
    try:
        step = min(RANGE_BYTES, max(1 << 16, doc.size // (4 * workers)))
        jobs = [pool.submit(_count, os.fspath(doc.path), a, b, text_field, charset is not None)
                for a, b in ranges(doc.path, doc.size, step)]
        lines = 0
        for job in jobs:
            try:
                part = job.result()
            except BrokenProcessPool:
                raise worker_died() from None
            if part.first_bad is not None and not skip_bad:
                line, problem = part.first_bad
                raise UserError(f"{doc.path}, line {lines + line}: {problem} (--skip-bad-records leaves such "
                                "records out)")
            if part.first_bad is not None and not doc.first_bad:
                doc.first_bad = f"{doc.path}, line {lines + part.first_bad[0]}: {part.first_bad[1]}"
            for i in range(0, len(part.marks), 4):
                offset, line, count, chars = part.marks[i : i + 4]
                doc.marks.extend((offset, lines + line, doc.count + count, doc.chars + chars))
            lines += part.lines
            doc.count, doc.chars, doc.empty, doc.bad = (doc.count + part.count, doc.chars + part.chars,
                                                        doc.empty + part.empty, doc.bad + part.bad)
            if charset is not None and part.seen is not None:
                charset.add_codes(part.seen)
            progress.advance(part.size)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    doc.end = doc.chars


def parallel(doc: Doc, workers: int) -> bool:
    """Count `doc` on worker processes: a plain .jsonl that jobs.use_processes finds large enough."""
    return doc.kind == "jsonl" and not compression(doc.path) and use_processes(doc.size, workers)
