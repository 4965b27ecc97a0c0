"""`nanogpt prepare`: turn a text file or a mixology folder into train.bin, val.bin and vocab.json.

Two streaming passes over the text, so memory stays bounded whatever the corpus size:
  1. read: count the characters of every file (after CRLF -> LF and optional Gutenberg stripping), find
     the Gutenberg markers, and for the char tokenizer collect the set of characters (the vocabulary);
  2. tokenize: split each source at `int(n * (1 - val_fraction))` characters, encode train and val parts
     (GPT-2 on worker threads, in pieces cut where BPE cannot join across the cut) into one temporary
     file per source and part.
Then each source's tokens are cut to its mixology share, the parts are joined into train.bin / val.bin,
and vocab.json is written. Everything is written under temporary names and renamed at the very end.
"""

from __future__ import annotations

import codecs
import collections
import gzip
import io
import json
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from .errors import UserError
from .tokenizers import GPT2_EOT, CharTokenizer, GPT2Tokenizer, gpt2_encoding, token_dtype

TOKENIZERS = ("char", "gpt2")
BUNDLED_NAME = "tinyshakespeare"
CHUNK_CHARS = 1 << 20  # characters read at a time; also the size of one GPT-2 encoding job
_MAX_CODE_POINT = 0x110000
_MIX_FOLDER = re.compile(r"^(\d+)_(.+)$")
# Gutenberg markers: "*** START OF THE PROJECT GUTENBERG EBOOK ... ***" and "*** END OF ..." on a line.
_GUTENBERG = re.compile(r"^\*{3}\s*(START|END) OF\b[^\n]*PROJECT GUTENBERG[^\n]*$", re.MULTILINE | re.IGNORECASE)


@dataclass
class _Doc:
    """One text file; after pass 1, `begin`/`end` are the kept window in normalised characters."""

    path: Path
    size: int
    chars: int = 0
    begin: int = 0
    end: int = 0
    stripped: bool = False


@dataclass
class _Source:
    """One source: a single file (100%) or a mixology sub-folder `NN_name/` (NN percent)."""

    name: str
    label: str  # how the source is shown: the folder or file name
    percent: int
    docs: list[_Doc]
    chars: int = 0
    parts: dict[str, _Part] = field(default_factory=dict)


@dataclass
class _Part:
    """The tokens of one source's train or val text, in a temporary file until the final join."""

    path: Path
    fh: BinaryIO
    tokens: int = 0
    started: bool = False  # a document was written: the next one needs <|endoftext|> first (GPT-2)


# ----------------------------------------------------------------------------------------------------------
# reading text


def _open_bytes(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def _bad_utf8_offset(path: Path) -> int:
    """Byte offset of the first byte that is not valid UTF-8 (only called once decoding has failed)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with _open_bytes(path) as f:
        while True:
            block = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the last block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                return offset - pending + e.start
            if not block:
                return offset
            offset += len(block)


def _nul_offset(path: Path) -> int:
    offset = 0
    with _open_bytes(path) as f:
        while block := f.read(1 << 20):
            i = block.find(b"\x00")
            if i >= 0:
                return offset + i
            offset += len(block)
    return offset


def _read_chunks(path: Path, progress: _Progress | None = None) -> Iterator[str]:
    """The text of a file in chunks, CRLF (and lone CR) read as LF, as nanoGPT's open(..., 'r') reads it."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the with below; open errors become one line
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    with raw:
        stream: BinaryIO = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw  # type: ignore[assignment]
        # utf-8-sig: a byte-order mark (Windows editors) is not text. newline="": we translate line ends
        # ourselves, since TextIOWrapper's universal newlines cost more than everything else in a char pass
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        done = 0
        cr = ""  # a CR at the end of the last chunk: it may be the first half of a CRLF
        while True:
            try:
                chunk = text.read(CHUNK_CHARS)
            except UnicodeDecodeError:
                raise UserError(
                    f"{path} is not UTF-8 text (invalid byte at offset {_bad_utf8_offset(path)}); "
                    "convert it to UTF-8 first"
                ) from None
            if not chunk:
                break
            if "\x00" in chunk:
                raise UserError(f"{path} looks like a binary file (NUL byte at offset {_nul_offset(path)}), not text")
            if progress is not None:
                pos = raw.tell()
                progress.advance(pos - done)
                done = pos
            if cr or "\r" in chunk:
                chunk = cr + chunk
                cr = "\r" if chunk.endswith("\r") else ""
                chunk = chunk[: len(chunk) - len(cr)].replace("\r\n", "\n").replace("\r", "\n")
                if not chunk:
                    continue
            yield chunk
        if cr:
            yield "\n"


class _CharSet:
    """The set of characters seen, as a table indexed by code point (numpy: set(str) is far too slow)."""

    def __init__(self) -> None:
        self.seen = np.zeros(_MAX_CODE_POINT, dtype=bool)
        self.known_ascii = b""

    def add(self, text: str) -> None:
        if not text:
            return
        if text.isascii():
            # deleting the characters already known leaves (almost always) nothing: a fast C loop
            new = text.encode("ascii").translate(None, self.known_ascii)
            if new:
                self.seen[np.frombuffer(new, dtype=np.uint8)] = True
                self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))
        else:
            self.seen[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)] = True
            self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))

    def clear(self) -> None:
        self.seen[:] = False
        self.known_ascii = b""

    def merge(self, other: _CharSet) -> None:
        self.seen |= other.seen
        self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))

    def chars(self) -> list[str]:
        return [chr(c) for c in np.flatnonzero(self.seen)]


def _scan(doc: _Doc, charset: _CharSet | None, strip: bool, progress: _Progress) -> None:
    """Pass 1 over one file: its length in characters, its Gutenberg window, and its characters."""
    local = _CharSet() if (charset is not None and strip) else charset
    pos = 0  # characters before the current piece
    begin, end = 0, None
    carry = ""

    def piece_done(piece: str) -> None:
        nonlocal begin, end
        if strip and end is None:
            for m in _GUTENBERG.finditer(piece):
                if m.group(1).upper() == "START" and not doc.stripped:
                    line_end = piece.find("\n", m.end())
                    cut = len(piece) if line_end < 0 else line_end + 1
                    begin, doc.stripped = pos + cut, True
                    if local is not None:  # the header's characters are not part of the text
                        local.clear()
                    continue
                if m.group(1).upper() == "END" and pos + m.start() >= begin:
                    end, doc.stripped = pos + m.start(), True
                    if local is not None:
                        local.add(piece[max(0, begin - pos) : m.start()])
                    return
            if local is not None and pos + len(piece) > begin:
                local.add(piece[max(0, begin - pos) :])
        elif local is not None and end is None:
            local.add(piece)

    for chunk in _read_chunks(doc.path, progress):
        if strip:  # markers are whole lines: look at complete lines only
            chunk = carry + chunk
            cut = chunk.rfind("\n") + 1
            if cut == 0 and len(chunk) < 16 * CHUNK_CHARS:
                carry = chunk
                continue
            carry, chunk = (chunk[cut:], chunk[:cut]) if cut else ("", chunk)
        piece_done(chunk)
        pos += len(chunk)
    if carry:
        piece_done(carry)
        pos += len(carry)
    doc.begin, doc.end = begin, pos if end is None else end
    doc.chars = doc.end - doc.begin
    if local is not None and local is not charset and charset is not None:
        charset.merge(local)


def _doc_text(doc: _Doc, progress: _Progress) -> Iterator[str]:
    """Pass 2: the kept text of one file, in chunks."""
    pos = 0
    for chunk in _read_chunks(doc.path, progress):
        lo, hi = max(doc.begin - pos, 0), min(doc.end - pos, len(chunk))
        pos += len(chunk)
        if lo < hi:
            yield chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
        if pos >= doc.end:
            break


# ----------------------------------------------------------------------------------------------------------
# encoding


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


class _Writer:
    """Encodes text into part files, keeping the order of writes; GPT-2 encodes on a pool of threads."""

    def __init__(self, tokenizer: str, itos: list[str] | None, dtype: str):
        self.tokenizer = tokenizer
        self.np_dtype = np.dtype(dtype).newbyteorder("<")
        self.pending: collections.deque[tuple[_Part, Future | np.ndarray]] = collections.deque()
        self.buffers: dict[int, str] = {}
        self.disk = _DiskWriter()
        if tokenizer == "char":
            assert itos is not None
            codes = np.array([ord(c) for c in itos], dtype=np.int64)
            self.lut = np.zeros(int(codes.max()) + 1, dtype=self.np_dtype)
            self.lut[codes] = np.arange(len(itos))
            # ASCII sorts first, so ASCII characters have ids < 128: bytes.translate maps them in one C loop
            self.ascii_table = bytes(int(self.lut[c]) if c < len(self.lut) else 0 for c in range(128)) + bytes(128)
            self.pool = None
        else:
            self.enc = gpt2_encoding()
            self.threads = max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="nanogpt-bpe")

    def _encode_gpt2(self, text: str) -> np.ndarray:
        return self.enc.encode_to_numpy(text, disallowed_special=())  # == encode_ordinary, without a list

    def write(self, part: _Part, text: str) -> None:
        """Append text to the current document of `part`."""
        if not text:
            return
        if self.tokenizer == "char":
            if text.isascii():
                ascii_ids = text.encode("ascii").translate(self.ascii_table)
                ids = np.frombuffer(ascii_ids, dtype=np.uint8).astype(self.np_dtype)
            else:
                ids = self.lut[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)]
            self.disk.write(part.fh, ids)
            part.tokens += len(ids)
            return
        key = id(part)
        buf = self.buffers.get(key)
        if buf is None:  # first text of a new document in this part
            if part.started:
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
            self._submit(part, self.pool.submit(self._encode_gpt2, buf[:cut]))  # type: ignore[union-attr]
            buf = buf[cut:]
        self.buffers[key] = buf

    def end_document(self, part: _Part) -> None:
        """The current document of `part` is complete (end of a file, or the train/val split)."""
        buf = self.buffers.pop(id(part), None)
        if buf:
            self._submit(part, self.pool.submit(self._encode_gpt2, buf))  # type: ignore[union-attr]

    def _submit(self, part: _Part, job: Future | np.ndarray) -> None:
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


# ----------------------------------------------------------------------------------------------------------
# progress and output


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Progress:
    """A Rich progress bar on a terminal; otherwise a plain line at the start, every few seconds, and the end."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.tty = stream.isatty()
        self.bar: Any = None

    def start(self, what: str, total: int) -> None:
        self.what, self.total, self.done = what, max(total, 1), 0
        self.t0 = self.last = time.perf_counter()
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(what, total=self.total)
        elif total > 50 * CHUNK_CHARS:  # small inputs get just the final line
            print(f"{what}: {_human_bytes(total)} ...", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        now = time.perf_counter()
        if now - self.last >= 5:
            self.last = now
            rate = self.done / (now - self.t0) / 1e6
            print(
                f"{self.what}: {100 * self.done / self.total:.0f}% ({rate:.1f} MB/s)",
                file=self.stream,
                flush=True,
            )

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        seconds = time.perf_counter() - self.t0
        rate = self.total / max(seconds, 1e-9) / 1e6
        print(
            f"{self.what}: {_human_bytes(self.total)} in {seconds:.1f} s ({rate:.1f} MB/s)",
            file=self.stream,
            flush=True,
        )


# ----------------------------------------------------------------------------------------------------------
# sources


def _find_sources(path: Path) -> tuple[list[_Source], list[str]]:
    """The sources in SOURCE (a file, or a folder of NN_name/ sub-folders) and the ignored sub-folders."""
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty")
        name = path.name.removesuffix(".gz").removesuffix(".txt")
        return [_Source(name, path.name, 100, [_Doc(path, path.stat().st_size)])], []
    if not path.is_dir():
        raise UserError(f"{path} is neither a file nor a folder")
    sources, ignored = [], []
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise UserError(f"cannot read the folder {path}: {e.strerror or e}") from None
    ignored += [p.name for p in entries if p.is_file() and p.suffix.lower() == ".txt"]  # text outside NN_ folders
    for sub in (p for p in entries if p.is_dir()):
        m = _MIX_FOLDER.match(sub.name)
        if not m or int(m.group(1)) == 0:
            ignored.append(sub.name)
            continue
        files = sorted(f for f in sub.rglob("*") if f.is_file() and f.suffix.lower() == ".txt")
        docs = [_Doc(f, f.stat().st_size) for f in files]
        sources.append(_Source(m.group(2), sub.name + "/", int(m.group(1)), docs))
    shown = [f"{name}/" if (path / name).is_dir() else name for name in ignored]
    note = f" (ignored: {', '.join(shown)})" if ignored else ""
    if not sources:
        raise UserError(
            f"{path} has no usable sources: expected sub-folders named NN_name/ (e.g. 25_lovecraft/, "
            f"75_shakespeare/) holding .txt files, NN being the percent of tokens{note}"
        )
    total = sum(s.percent for s in sources)
    if total != 100:
        shares = ", ".join(f"{s.label} {s.percent}%" for s in sources)
        raise UserError(f"the source percentages in {path} sum to {total}, not 100 ({shares})")
    for s in sources:
        if not s.docs:
            raise UserError(f"source {path / s.label} has no .txt files")
        if sum(d.size for d in s.docs) == 0:
            raise UserError(f"source {path / s.label} is empty")
    return sources, ignored


def _shares(counts: list[int], percents: list[int]) -> list[int]:
    """Tokens to take from each source: as many as the scarcest source allows at its percent (no up-sampling)."""
    if len(counts) == 1:
        return list(counts)
    total = min(c * 100 // p for c, p in zip(counts, percents))
    return [total * p // 100 for p in percents]


def _copy_prefix(src: Path, dst: BinaryIO, nbytes: int) -> None:
    with open(src, "rb") as f:
        while nbytes > 0:
            block = f.read(min(nbytes, 8 << 20))
            if not block:
                raise OSError(f"{src} is shorter than expected")
            dst.write(block)
            nbytes -= len(block)


def _temp(out: Path, name: str) -> tuple[BinaryIO, Path]:
    """A new hidden temporary file in `out` (same folder as its final name, so os.replace is atomic)."""
    while True:
        tmp = out / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:  # mode 0o666 minus the umask, like any file the user creates (mkstemp would give 0o600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp


def _check_options(tokenizer: str, val_fraction: float) -> None:
    if tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {tokenizer!r}: choose char or gpt2")
    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")


# ----------------------------------------------------------------------------------------------------------
# the command


def prepare(
    source: str | None,
    *,
    tokenizer: str = "char",
    out_dir: str | None = None,
    val_fraction: float = 0.1,
    strip_gutenberg: bool = False,
) -> dict[str, Any]:
    """Tokenize SOURCE (a file, a mixology folder, or None for the bundled corpus) and return vocab.json's dict."""
    return _prepare(
        source,
        tokenizer=tokenizer,
        out_dir=out_dir,
        val_fraction=val_fraction,
        strip_gutenberg=strip_gutenberg,
        report=sys.stdout,
    )


def _prepare(
    source: str | os.PathLike | None,
    *,
    tokenizer: str,
    out_dir: str | os.PathLike | None,
    val_fraction: float,
    strip_gutenberg: bool,
    report: TextIO,
) -> dict[str, Any]:
    _check_options(tokenizer, val_fraction)
    if source is None:
        with resources.as_file(resources.files("nanogpt") / "data" / f"{BUNDLED_NAME}.txt.gz") as bundled:
            out = Path(out_dir) if out_dir is not None else Path("data") / BUNDLED_NAME
            return _run(
                bundled,
                out,
                tokenizer,
                val_fraction,
                strip_gutenberg,
                report,
                shown=f"bundled {BUNDLED_NAME}",
            )
    if not str(source).strip():
        raise UserError("SOURCE is empty: give a text file or a mixology folder")
    path = Path(source)
    sources_dir = path if path.is_dir() else path.parent
    out = Path(out_dir) if out_dir is not None else sources_dir
    return _run(path, out, tokenizer, val_fraction, strip_gutenberg, report, shown=str(path))


def _run(
    path: Path, out: Path, tokenizer: str, val_fraction: float, strip: bool, report: TextIO, shown: str
) -> dict[str, Any]:
    sources, ignored = _find_sources(path)
    mixology = path.is_dir()
    if mixology and ignored:
        shown = [f"{name}/" if (path / name).is_dir() else name for name in ignored]
        print(
            f"ignored (not in a sub-folder named NN_name/ with NN > 0): {', '.join(shown)}",
            file=sys.stderr,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fh, probe = _temp(out, "probe")
        fh.close()
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the output folder {out}: {e.strerror or e}") from None

    progress = _Progress(sys.stderr)
    docs = [d for s in sources for d in s.docs]
    # pass 1: lengths, Gutenberg windows, the character vocabulary
    charset = _CharSet() if tokenizer == "char" else None
    progress.start("reading", sum(d.size for d in docs))
    for d in docs:
        _scan(d, charset, strip, progress)
    progress.finish()
    for s in sources:
        s.chars = sum(d.chars for d in s.docs)
        if strip:
            for d in s.docs:
                if not d.stripped:
                    print(
                        f"note: no Project Gutenberg header or footer found in {d.path}; kept it whole",
                        file=sys.stderr,
                    )
        if s.chars == 0:
            what = f"{path / s.label}" if mixology else str(path)
            raise UserError(f"{what} has no text" + (" left after --strip-gutenberg" if strip else ""))

    itos = charset.chars() if charset is not None else None
    vocab_size = len(itos) if itos is not None else GPT2Tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    itemsize = np.dtype(dtype).itemsize

    temps: list[Path] = []
    writer = _Writer(tokenizer, itos, dtype)
    try:
        # pass 2: encode each source's train and val parts into temporary files
        progress.start("tokenizing", sum(d.size for d in docs))
        for i, s in enumerate(sources):
            for name in ("train", "val"):
                fh, tmp = _temp(out, f"{name}-{i}")
                temps.append(tmp)
                # GPT-2: <|endoftext|> also separates one source from the next in the joined file
                s.parts[name] = _Part(tmp, fh, started=(i > 0 and tokenizer == "gpt2"))
            split = int(s.chars * (1 - val_fraction))
            pos = 0
            for d in s.docs:
                for text in _doc_text(d, progress):
                    if pos < split < pos + len(text):
                        writer.write(s.parts["train"], text[: split - pos])
                        writer.end_document(s.parts["train"])
                        writer.write(s.parts["val"], text[split - pos :])
                    elif pos < split:
                        writer.write(s.parts["train"], text)
                    else:
                        writer.end_document(s.parts["train"])
                        writer.write(s.parts["val"], text)
                    pos += len(text)
                writer.end_document(s.parts["train"])
                writer.end_document(s.parts["val"])
        writer.close()
        progress.finish()
        for s in sources:
            for p in s.parts.values():
                p.fh.close()

        percents = [s.percent for s in sources]
        take = {name: _shares([s.parts[name].tokens for s in sources], percents) for name in ("train", "val")}
        for name in ("train", "val"):
            if sum(take[name]) == 0:
                scarce = min(sources, key=lambda s: s.parts[name].tokens * 100 // s.percent)
                raise UserError(
                    f"too little text for a {name} split: {scarce.label} gives {scarce.parts[name].tokens} {name} "
                    f"tokens at --val-fraction {val_fraction}"
                )

        # join the parts, each cut to its share, into train.bin / val.bin under temporary names
        finals: dict[str, Path] = {}
        for name in ("train", "val"):
            first = sources[0].parts[name]
            if len(sources) == 1 and take[name][0] == first.tokens:
                finals[name] = first.path  # a single file: its part already is the whole result
                continue
            fh, tmp = _temp(out, f"{name}.bin")
            temps.append(tmp)
            with fh:
                for s, n in zip(sources, take[name]):
                    _copy_prefix(s.parts[name].path, fh, n * itemsize)
            finals[name] = tmp

        train_total, val_total = sum(take["train"]), sum(take["val"])
        # the vocabulary is serialised by the tokenizer itself, the same dict a checkpoint stores
        tok_meta = (
            CharTokenizer(itos).to_meta() if itos is not None else {**GPT2Tokenizer().to_meta(), "eot_token": GPT2_EOT}
        )
        meta: dict[str, Any] = {**tok_meta, "dtype": dtype}
        meta.update(
            train_tokens=train_total,
            val_tokens=val_total,
            val_fraction=val_fraction,
            strip_gutenberg=strip,
            source=shown,
        )
        meta["sources"] = [
            {
                "name": s.name,
                "path": s.label,
                "percent": s.percent,
                "files": len(s.docs),
                "chars": s.chars,
                "train_tokens": t,
                "val_tokens": v,
                "train_share": round(t / train_total, 6),
                "val_share": round(v / val_total, 6),
                "used": round((t + v) / max(1, s.parts["train"].tokens + s.parts["val"].tokens), 6),
            }
            for s, t, v in zip(sources, take["train"], take["val"])
        ]
        fh, vocab_tmp = _temp(out, "vocab.json")
        temps.append(vocab_tmp)
        with fh:
            fh.write((json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
        # rename into place; vocab.json last, so that it only ever describes complete bins
        os.replace(finals["train"], out / "train.bin")
        os.replace(finals["val"], out / "val.bin")
        os.replace(vocab_tmp, out / "vocab.json")
    except OSError as e:
        raise UserError(f"writing to {out} failed: {e.strerror or e}") from None
    finally:
        writer.abort()
        for s in sources:
            for p in s.parts.values():
                p.fh.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)

    _summary(report, sources, meta, out, mixology)
    return meta


def _summary(stream: TextIO, sources: list[_Source], meta: dict[str, Any], out: Path, mixology: bool) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # not a terminal (a log, a pipe): no 80-column limit, so that long source names are not cut
    console = Console(file=stream, soft_wrap=True, highlight=False, width=None if stream.isatty() else 160)
    if mixology:
        table = Table(title="sources", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("source", "target", "train tokens", "share", "val tokens", "share", "text used"):
            table.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
        for s in meta["sources"]:
            table.add_row(
                s["path"],
                f"{s['percent']}%",
                f"{s['train_tokens']:,}",
                f"{100 * s['train_share']:.1f}%",
                f"{s['val_tokens']:,}",
                f"{100 * s['val_share']:.1f}%",
                f"{100 * s['used']:.0f}%",
            )
        console.print(table)
    console.print(
        f"wrote {out / 'train.bin'} ({meta['train_tokens']:,} tokens), {out / 'val.bin'} ({meta['val_tokens']:,} "
        f"tokens) and {out / 'vocab.json'} ({meta['tokenizer']}, vocab size {meta['vocab_size']:,}, {meta['dtype']})",
        markup=False,
    )


# ----------------------------------------------------------------------------------------------------------
# the bundled corpus, prepared once into a cache


def cache_dir() -> Path:
    """Where prepared bundled data is kept: $NANOGPT_CACHE_DIR, else $XDG_CACHE_HOME/nanogpt or ~/.cache/nanogpt."""
    if os.environ.get("NANOGPT_CACHE_DIR"):
        return Path(os.environ["NANOGPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "nanogpt"


def is_prepared(folder: str | os.PathLike) -> bool:
    """True when folder holds a vocab.json and train/val bins whose sizes match the counts it records."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        itemsize = np.dtype(meta["dtype"]).itemsize
        return (
            meta["tokenizer"] in TOKENIZERS
            and (folder / "train.bin").stat().st_size == meta["train_tokens"] * itemsize
            and (folder / "val.bin").stat().st_size == meta["val_tokens"] * itemsize
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def bundled_dataset(tokenizer: str = "char") -> Path:
    """The bundled Tiny Shakespeare prepared with `tokenizer`, in the cache folder (prepared the first time)."""
    _check_options(tokenizer, 0.1)
    out = cache_dir() / f"{BUNDLED_NAME}-{tokenizer}"
    if is_prepared(out) and json.loads((out / "vocab.json").read_text(encoding="utf-8"))["tokenizer"] == tokenizer:
        print(f"using the bundled Tiny Shakespeare ({tokenizer}) prepared in {out}", file=sys.stderr)
        return out
    print(
        f"preparing the bundled Tiny Shakespeare ({tokenizer}) into {out} (once; reused next time)",
        file=sys.stderr,
    )
    _prepare(None, tokenizer=tokenizer, out_dir=out, val_fraction=0.1, strip_gutenberg=False, report=sys.stderr)
    return out
