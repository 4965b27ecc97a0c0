"""Text to token ids to files: the char table, or GPT-2's or a learned BPE (on worker threads), written while the
next piece encodes.

Each source's train and val text goes into a part file of its own (`Part`); once every part is written,
`shares` says how many tokens of each source the mix takes, and `copy_prefix` joins those into one bin.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import UserError
from ..bpe_pipeline import MAX_RUN, WHITESPACE
from ..tokenizers import BpeTokenizer, gpt2_encoding
from .jobs import process_pool, submit_job, tiktoken_ids, use_processes, worker_died
from .sources import CHUNK_CHARS


@dataclass
class Part:
    """The tokens of one source's train or val text, in a temporary file until the final join."""

    path: Path
    fh: BinaryIO
    tokens: int = 0
    started: bool = False  # a document was written: the next one needs its separator first
    ends_line: bool = True  # char: the text written so far ends with a line break (or there is none)
    buf: str = ""  # BPE: the current document's text not yet sent to be encoded
    batch: list[str | None] = field(default_factory=list)  # BPE: texts to encode together; None: <|endoftext|>
    batch_chars: int = 0


def safe_cut(text: str) -> int:
    """An index i > 0 where GPT-2 BPE of text[:i] + text[i:] equals that of text, or 0 if there is none.

    GPT-2's pre-tokenizer regex never puts a non-space character and a following whitespace character in
    one piece, and it has no look-behind, so cutting between them changes nothing. We prefer newlines.
    """
    for ws in ("\n", " "):
        i = text.rfind(ws)
        while i > 0:
            if not text[i - 1].isspace():
                return i
            i = text.rfind(ws, 0, i)
    return 0


@contextlib.contextmanager
def signals_held():
    """SIGTERM and SIGINT held back (delivered on the way out) while a thread starts: the handler of `prepare`
    raises, and raised inside `Thread.start` once the thread had begun, the thread died with a KeyError traceback
    printed beside the one-line error. A thread started so keeps them blocked: they go to the main thread."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_cut(text: str) -> int:
    """For a learned BPE, where safe_cut finds no place (`text` is whitespace, then one run without any): an index
    i > 0 on the run's grid of MAX_RUN characters, or 0. The BPE encodes such a run in pieces of MAX_RUN from its
    start (tokenizers.MAX_RUN), so a cut on that grid changes nothing, and what follows starts the grid anew."""
    start = len(text) - len(text.lstrip(WHITESPACE))
    cut = start + (len(text) - start - 1) // MAX_RUN * MAX_RUN
    return cut if cut > start else 0


UNKNOWN_ASCII = 0xFF
_BPE_PIECE = 1 << 16  # characters of one text a learned BPE encodes: many per chunk, for its thread pool


def _changed(char: str) -> UserError:
    """The second pass met a character the first did not see: the text changed while prepare read it."""
    return UserError(
        f"a source file changed while prepare was reading it ({char!r} was not in it on the first pass): "
        "run prepare again once it is no longer being written"
    )


class _DiskWriter:
    """Writes token blocks on a thread of its own, so the disk works while the next chunk is encoded."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[BinaryIO, np.ndarray] | None] = queue.Queue(maxsize=4)
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, name="nanogpt-writer", daemon=True)
        with signals_held():
            self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    item[0].write(memoryview(item[1]).cast("B"))
                except OSError as e:  # e.g. disk full: reported by the next write() or by close()
                    self.error = e

    def write(self, fh: BinaryIO, ids: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((fh, np.ascontiguousarray(ids)))

    def close(self) -> None:
        """Wait until every block is on disk; raise the first write error, if any."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def workers() -> int:
    """Threads that encode: every core (at most 8), or NANOGPT_PREPARE_WORKERS. The bins never depend on it."""
    fixed = os.environ.get("NANOGPT_PREPARE_WORKERS", "").strip()
    if fixed.isdigit() and int(fixed) > 0:
        return int(fixed)
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2))


class Encoder:
    """Encodes documents into part files, keeping the order of writes; a BPE encodes on a pool of threads.

    Text is sent to the pool in jobs of about CHUNK_CHARS characters: a long document cut at safe places, or
    many short ones (with <|endoftext|> between them) together. Where a job ends depends only on the text,
    never on the number of threads, so the bins are the same whatever the core count.
    """

    def __init__(self, tokenizer: str, itos: list[str] | None, dtype: str, bpe: BpeTokenizer | None = None,
                 eot: int | None = None, drop: dict[int, None] | None = None):
        self.tokenizer = tokenizer
        self.eot = eot  # the id written between documents (GPT-2's <|endoftext|>, a learned BPE's), or None
        self.np_dtype = np.dtype(dtype).newbyteorder("<")
        self.pending: collections.deque[tuple[Part, Future | np.ndarray]] = collections.deque()
        self.disk = _DiskWriter()
        self.pool: ThreadPoolExecutor | None = None
        self.processes: ProcessPoolExecutor | None = None  # tiktoken's jobs on a large text (begin)
        self.drop = drop or None  # a reused character vocabulary: the text's characters it lacks (str.translate)
        if tokenizer == "char":
            assert itos is not None
            self._char_tables(itos)
        else:
            # a learned BPE has GPT-2's pre-tokenizer regex, so GPT-2's safe cuts hold for it too
            self.bpe = bpe
            self.fast = gpt2_encoding() if bpe is None else bpe.fast  # tiktoken, or None: `tokenizers` encodes
            self.threads = workers()
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nanogpt-bpe")

    def begin(self, nbytes: int) -> None:
        """`nbytes` of text are to be encoded: tiktoken's jobs go to worker processes if that many pay for them."""
        if self.tokenizer != "char" and self.fast is not None and self.eot is not None \
                and use_processes(nbytes, self.threads):
            self.processes = process_pool(self.fast, self.eot, self.bpe is not None, self.np_dtype, self.threads)

    def _char_tables(self, itos: list[str]) -> None:
        codes = np.array([ord(c) for c in itos], dtype=np.int64)
        self.newline = itos.index("\n") if "\n" in itos else None
        self.lut = np.zeros(int(codes.max()) + 1, dtype=self.np_dtype)
        self.lut[codes] = np.arange(len(itos))
        self.known = np.zeros(len(self.lut), dtype=bool)  # the characters of the first pass
        self.known[codes] = True
        # ASCII sorts first, so ASCII characters have ids < 128: bytes.translate maps them in one C loop;
        # one not in the vocabulary maps to UNKNOWN_ASCII, never an ASCII character's id
        self.ascii_table = bytes(
            int(self.lut[c]) if c < len(self.known) and self.known[c] else UNKNOWN_ASCII for c in range(128)
        ) + bytes(128)

    def _pieces(self, text: str) -> list[str]:
        """A learned BPE's text cut at safe places, so that `tokenizers` spreads the pieces over its threads, and
        each holds a bounded share of the memory its encodings take."""
        pieces, start = [], 0
        while len(text) - start > _BPE_PIECE and (cut := safe_cut(window := text[start : start + _BPE_PIECE])
                                                   or run_cut(window)):
            pieces.append(text[start : start + cut])
            start += cut
        pieces.append(text[start:])
        return pieces

    def _encode_batch(self, batch: list[str | None]) -> np.ndarray:
        """The ids of a job's texts one after another, <|endoftext|> where an entry is None."""
        eot = [self.eot if self.eot is not None else 0]
        if self.fast is not None:
            return tiktoken_ids(self.fast, batch, eot[0], self.bpe is not None)
        # one call for all of the job's texts: the `tokenizers` batch encoder runs them on every core
        pieces = [self._pieces(text) if text is not None else None for text in batch]
        ids = iter(self.bpe.encode_many([p for ps in pieces if ps is not None for p in ps]))
        separator = np.array(eot, dtype=np.uint32)
        arrays = [separator if ps is None else next(ids) for ps in pieces for _ in (ps or [None])]
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint32)

    def start_document(self, part: Part) -> None:
        """A new document begins in `part`: after the last one's text, its separator (<|endoftext|>, or for char
        a line break when the last one did not end with one)."""
        if self.tokenizer == "char":
            if part.started and not part.ends_line and self.newline is not None:
                self._write_ids(part, np.array([self.newline], dtype=self.np_dtype))
                part.ends_line = True
            part.started = True
            return
        if part.buf:
            self._add(part, part.buf)
            part.buf = ""
        if part.started and self.eot is not None:
            part.batch.append(None)
        part.started = True
        if part.batch_chars >= CHUNK_CHARS:
            self._flush(part)

    def write(self, part: Part, text: str) -> None:
        """Append text to the current document of `part`, a piece of CHUNK_CHARS at a time: a document of any size
        (one JSON line of 30 M characters) is copied and encoded in bounded pieces, never whole."""
        for start in range(0, len(text), CHUNK_CHARS):
            piece = text if len(text) <= CHUNK_CHARS else text[start : start + CHUNK_CHARS]
            if self.tokenizer == "char":
                self._write_char(part, piece.translate(self.drop) if self.drop else piece)
            else:
                self._write_text(part, piece)

    def _write_text(self, part: Part, text: str) -> None:
        part.buf += text
        while len(part.buf) >= CHUNK_CHARS:
            cut = safe_cut(part.buf) or (run_cut(part.buf) if self.bpe is not None else 0)
            if cut == 0:  # GPT-2 and one enormous "word": keep reading until a safe place to cut comes along,
                if len(part.buf) < 2 * CHUNK_CHARS:
                    break
                cut = CHUNK_CHARS  # but bound the memory: 2 M characters with no whitespace are not prose
            self._add(part, part.buf[:cut])
            part.buf = part.buf[cut:]
            self._flush(part)

    def finish(self, part: Part) -> None:
        """Everything of `part` is written: send what is left of it to be encoded."""
        if part.buf:
            self._add(part, part.buf)
            part.buf = ""
        self._flush(part)

    def _add(self, part: Part, text: str) -> None:
        part.batch.append(text)
        part.batch_chars += len(text)

    def _flush(self, part: Part) -> None:
        if part.batch:
            with signals_held():  # the thread pool starts its threads on the first submits
                job = (submit_job(self.processes, part.batch) if self.processes is not None
                       else self.pool.submit(self._encode_batch, part.batch))  # type: ignore[union-attr]
            self._submit(part, job)
            part.batch, part.batch_chars = [], 0

    def _write_char(self, part: Part, text: str) -> None:
        if text.isascii():
            ascii_ids = text.encode("ascii").translate(self.ascii_table)
            if (i := ascii_ids.find(UNKNOWN_ASCII)) >= 0:  # memchr: costs next to nothing
                raise _changed(text[i])
            ids = np.frombuffer(ascii_ids, dtype=np.uint8).astype(self.np_dtype)
        else:
            codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            unknown = np.flatnonzero(codes >= len(self.known))
            if not len(unknown):
                unknown = np.flatnonzero(~self.known[codes])
            if len(unknown):
                raise _changed(text[unknown[0]])
            ids = self.lut[codes]
        part.ends_line = text.endswith("\n")
        self._write_ids(part, ids)

    def _write_ids(self, part: Part, ids: np.ndarray) -> None:
        self.disk.write(part.fh, ids)
        part.tokens += len(ids)

    def _submit(self, part: Part, job: Future | np.ndarray) -> None:
        self.pending.append((part, job))
        self._drain(keep=2 * self.threads)

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            part, job = self.pending.popleft()
            try:
                ids = job.result() if isinstance(job, Future) else job
            except BrokenProcessPool:
                raise worker_died() from None
            self._write_ids(part, ids.astype(self.np_dtype, copy=False))

    def close(self) -> None:
        """Write everything still in flight."""
        self._drain()
        for pool in (self.pool, self.processes):
            if pool is not None:
                pool.shutdown()
        self.disk.close()

    def abort(self) -> None:
        """Stop all threads (after an error); safe to call after close()."""
        for pool in (self.pool, self.processes):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.disk.close()
        except OSError:
            pass  # the error that got us here is the one to report


def shares(counts: list[int], percents: list[int]) -> list[int]:
    """Tokens to take from each source: as many as the scarcest source allows at its percent (no up-sampling)."""
    if len(counts) == 1:
        return list(counts)
    total = min(c * 100 // p for c, p in zip(counts, percents))
    return [total * p // 100 for p in percents]


def copy_prefix(src: Path, dst: BinaryIO, nbytes: int) -> None:
    """Append the first `nbytes` bytes of file `src` to `dst`."""
    with open(src, "rb") as f:
        while nbytes > 0:
            block = f.read(min(nbytes, 8 << 20))
            if not block:
                raise OSError(f"{src} is shorter than expected")
            dst.write(block)
            nbytes -= len(block)
