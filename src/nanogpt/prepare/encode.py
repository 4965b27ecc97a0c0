"""Text to token ids to files: the char table, or GPT-2's or a learned BPE (on worker threads), written while the
next piece encodes.

Each source's train and val text goes into a part file of its own (`Part`); once every part is written,
`shares` says how many tokens of each source the mix takes, and `copy_prefix` joins those into one bin.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import UserError
from ..tokenizers import GPT2_EOT, BpeTokenizer, gpt2_encoding
from .sources import CHUNK_CHARS


@dataclass
class Part:
    """The tokens of one source's train or val text, in a temporary file until the final join."""

    path: Path
    fh: BinaryIO
    tokens: int = 0
    started: bool = False  # a document was written: the next one needs <|endoftext|> first (GPT-2)


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


class Encoder:
    """Encodes text into part files, keeping the order of writes; a BPE encodes on a pool of threads."""

    def __init__(
        self, tokenizer: str, itos: list[str] | None, dtype: str, bpe: BpeTokenizer | None = None,
        drop: dict[int, None] | None = None,
    ):
        self.tokenizer = tokenizer
        self.np_dtype = np.dtype(dtype).newbyteorder("<")
        self.pending: collections.deque[tuple[Part, Future | np.ndarray]] = collections.deque()
        self.buffers: dict[int, str] = {}
        self.disk = _DiskWriter()
        self.drop = drop or None  # a reused character vocabulary: the text's characters it lacks (str.translate)
        if tokenizer == "char":
            assert itos is not None
            codes = np.array([ord(c) for c in itos], dtype=np.int64)
            self.lut = np.zeros(int(codes.max()) + 1, dtype=self.np_dtype)
            self.lut[codes] = np.arange(len(itos))
            self.known = np.zeros(len(self.lut), dtype=bool)  # the characters of the first pass
            self.known[codes] = True
            # ASCII sorts first, so ASCII characters have ids < 128: bytes.translate maps them in one C loop;
            # one not in the vocabulary maps to UNKNOWN_ASCII, never an ASCII character's id
            self.ascii_table = bytes(
                int(self.lut[c]) if c < len(self.known) and self.known[c] else UNKNOWN_ASCII for c in range(128)
            ) + bytes(128)
            self.pool = None
        else:
            # a learned BPE has GPT-2's pre-tokenizer regex, so GPT-2's safe cuts hold for it too
            self.bpe = bpe
            self.enc = gpt2_encoding() if bpe is None else None
            self.threads = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nanogpt-bpe")

    def _encode(self, text: str) -> np.ndarray:
        if self.bpe is None:
            return self.enc.encode_to_numpy(text, disallowed_special=())  # == encode_ordinary, without a list
        pieces, start = [], 0  # cut at safe places so that `tokenizers` spreads them over its own threads
        while len(text) - start > _BPE_PIECE and (cut := safe_cut(text[start : start + _BPE_PIECE])):
            pieces.append(text[start : start + cut])
            start += cut
        pieces.append(text[start:])
        ids = self.bpe.encode_many(pieces)
        return np.fromiter((i for piece in ids for i in piece), dtype=np.uint32, count=sum(map(len, ids)))

    def write(self, part: Part, text: str) -> None:
        """Append text to the current document of `part`."""
        if not text:
            return
        if self.tokenizer == "char":
            text = text.translate(self.drop) if self.drop else text
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
            self.disk.write(part.fh, ids)
            part.tokens += len(ids)
            return
        key = id(part)
        buf = self.buffers.get(key)
        if buf is None:  # first text of a new document in this part
            if part.started and self.bpe is None:
                self._submit(part, np.array([GPT2_EOT], dtype=np.uint32))
            part.started = True
            buf = ""
        buf += text
        while len(buf) >= CHUNK_CHARS:
            cut = safe_cut(buf)
            if cut == 0:  # one enormous "word": keep reading until a safe place to cut comes along,
                if len(buf) < 16 * CHUNK_CHARS:
                    break
                cut = CHUNK_CHARS  # but bound the memory: text with no whitespace for 16M characters is not prose
            self._submit(part, self.pool.submit(self._encode, buf[:cut]))  # type: ignore[union-attr]
            buf = buf[cut:]
        self.buffers[key] = buf

    def end_document(self, part: Part) -> None:
        """The current document of `part` is complete (end of a file, or the train/val split)."""
        buf = self.buffers.pop(id(part), None)
        if buf:
            self._submit(part, self.pool.submit(self._encode, buf))  # type: ignore[union-attr]

    def _submit(self, part: Part, job: Future | np.ndarray) -> None:
        self.pending.append((part, job))
        self._drain(keep=2 * self.threads)

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            part, job = self.pending.popleft()
            ids = job.result() if isinstance(job, Future) else job
            self.disk.write(part.fh, ids.astype(self.np_dtype, copy=False))
            part.tokens += len(ids)

    def close(self) -> None:
        """Write everything still in flight."""
        self._drain()
        if self.pool is not None:
            self.pool.shutdown()
        self.disk.close()

    def abort(self) -> None:
        """Stop all threads (after an error); safe to call after close()."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
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
