"""What SOURCE holds and its text: a file or a mixology folder, read in chunks, Gutenberg header and footer found.

The first pass (`scan`) measures each file in normalised characters (CRLF and lone CR read as LF), finds the
kept window between Project Gutenberg's START and END lines, and collects the character vocabulary; the
second pass (`doc_text`) streams that window again for encoding. Memory stays bounded whatever the size.
"""

from __future__ import annotations

import codecs
import gzip
import io
import itertools
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import UserError
from ..store.files import listing
from .progress import Progress

CHUNK_CHARS = 1 << 20  # characters read at a time; also the size of one GPT-2 encoding job
_MAX_CODE_POINT = 0x110000
GZIP_MAGIC = b"\x1f\x8b"
_MIX_FOLDER = re.compile(r"^(\d+)_(.+)$")
# Gutenberg markers: "*** START OF THE PROJECT GUTENBERG EBOOK ... ***" and "*** END OF ..." on a line.
_GUTENBERG = re.compile(r"^\*{3}\s*(START|END) OF\b[^\n]*PROJECT GUTENBERG[^\n]*$", re.MULTILINE | re.IGNORECASE)


@dataclass
class Doc:
    """One text file; `size` is its text in bytes; after `scan`, `begin`/`end` are the kept window in characters."""

    path: Path
    size: int
    chars: int = 0
    begin: int = 0
    end: int = 0
    stripped: bool = False
    gutenberg: bool = False  # kept (--keep-gutenberg): a START marker was seen in its first chunk
    footer_at: int | None = None  # kept: where its END marker line starts, in characters
    stamp: tuple[int, int] = (0, 0)  # its size and modification time when the first pass read it


@dataclass
class Source:
    """One source: a single file (100%) or a mixology sub-folder `NN_name/` (NN percent)."""

    name: str
    label: str  # how the source is shown: the folder or file name
    percent: int
    docs: list[Doc]
    chars: int = 0


# ----------------------------------------------------------------------------------------------------------
# finding the sources


def find_sources(path: Path) -> tuple[list[Source], list[str]]:
    """The sources in SOURCE (a file, or a folder of NN_name/ sub-folders) and what the folder holds besides.

    The second list names the ignored entries as shown to the user (`drafts/`, `notes.txt`).
    """
    if not path.exists():
        raise UserError(f"{path} does not exist")
    _check_name(path)
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty")
        name = path.name.removesuffix(".gz").removesuffix(".txt")
        return [Source(name, path.name, 100, [Doc(path, text_size(path))])], []
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
            ignored.append(sub.name + "/")
            continue
        _check_name(sub)
        files = sorted(f for f in _files_under(sub) if f.suffix.lower() == ".txt")
        for f in files:
            _check_name(f)
        docs = [Doc(f, f.stat().st_size) for f in files]
        sources.append(Source(m.group(2), sub.name + "/", int(m.group(1)), docs))
    note = f" (ignored: {listing(ignored)})" if ignored else ""
    if not sources:
        raise UserError(
            f"{path} has no usable sources: expected sub-folders named NN_name/ (e.g. 25_lovecraft/, "
            f"75_shakespeare/) holding .txt files, NN being the percent of tokens{note}"
        )
    total = sum(s.percent for s in sources)
    if total != 100:
        shares = listing([f"{s.label} {s.percent}%" for s in sources])
        raise UserError(f"the source percentages in {path} sum to {total}, not 100 ({shares})")
    for s in sources:
        if not s.docs:
            raise UserError(f"source {path / s.label} has no .txt files")
        if sum(d.size for d in s.docs) == 0:
            raise UserError(f"source {path / s.label} is empty")
    return sources, ignored


def _check_name(path: Path) -> None:
    """UserError for a file name that is not UTF-8: vocab.json records where the text came from, as UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the file name {os.fsencode(path)!r} is not UTF-8: rename it first") from None


def _files_under(folder: Path) -> list[Path]:
    """Every file in `folder` and its sub-folders; UserError for one that cannot be read (Path.rglob would
    skip it silently, and a mix would quietly lose its text)."""

    def fail(e: OSError) -> None:
        raise UserError(f"cannot read the folder {e.filename}: {e.strerror or e}")

    return [Path(root) / name for root, _, names in os.walk(folder, onerror=fail) for name in names
            if (Path(root) / name).is_file()]


def text_size(path: Path) -> int:
    """Bytes of text in a file: its size, or for .gz the uncompressed size its trailer records (mod 4 GiB)."""
    size = path.stat().st_size
    if path.suffix != ".gz":
        return size
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise UserError(f"{path} is named .gz but is not gzip-compressed: rename it (without .gz) or compress it")
        if size < 4:
            return size
        f.seek(-4, io.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


# ----------------------------------------------------------------------------------------------------------
# reading text


# what reading a .gz cut short or damaged raises (a bad CRC or length is a BadGzipFile, a bad deflate stream a
# zlib.error, a stream that ends early an EOFError), whichever pass or look-up meets it first
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _not_whole(path: Path, error: BaseException) -> UserError:
    return UserError(f"{path} is not a whole gzip file ({error}); compress it again")


def _blocks(path: Path) -> Iterator[bytes]:
    """The bytes of a file (of its text, for .gz) in blocks of 64 KiB: small, so that an offset looked up in a
    damaged .gz is found when it comes before the damage."""
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        while True:
            try:
                block = f.read(1 << 16)
            except _GZIP_ERRORS as e:
                raise _not_whole(path, e) from None
            if not block:
                return
            yield block


def _bad_utf8_offset(path: Path) -> int:
    """Byte offset of the first byte that is not valid UTF-8 (only called once decoding has failed)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    for block in itertools.chain(_blocks(path), [b""]):  # b"": the end, where an unfinished character fails
        pending = len(decoder.getstate()[0])  # bytes of an unfinished character from the last block
        try:
            decoder.decode(block, final=not block)
        except UnicodeDecodeError as e:
            return offset - pending + e.start
        offset += len(block)
    return offset


def _nul_offset(path: Path) -> int:
    offset = 0
    for block in _blocks(path):
        i = block.find(b"\x00")
        if i >= 0:
            return offset + i
        offset += len(block)
    return offset


def read_chunks(path: Path, progress: Progress | None = None) -> Iterator[str]:
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
            except _GZIP_ERRORS as e:
                raise _not_whole(path, e) from None
            if not chunk:
                break
            if "\x00" in chunk:
                raise UserError(f"{path} looks like a binary file (NUL byte at offset {_nul_offset(path)}), not text")
            if progress is not None:
                pos = stream.tell()  # bytes of text read (for .gz: uncompressed), like Doc.size counts them
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


class CharSet:
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

    def merge(self, other: CharSet) -> None:
        self.seen |= other.seen
        self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))

    def chars(self) -> list[str]:
        return [chr(c) for c in np.flatnonzero(self.seen)]


def scan(doc: Doc, charset: CharSet | None, strip: bool, progress: Progress) -> None:
    """Pass 1 over one file: its length in characters, its Gutenberg window, and its characters."""
    doc.stamp = _stamp(doc.path)
    local = CharSet() if (charset is not None and strip) else charset
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

    for chunk in read_chunks(doc.path, progress):
        if not strip:  # a raw Gutenberg file's header is in its first chunk; its footer follows the END line
            markers = [(m.group(1).upper(), pos + m.start()) for m in _GUTENBERG.finditer(chunk)]
            doc.gutenberg = doc.gutenberg or (pos == 0 and any(kind == "START" for kind, _ in markers))
            ends = [at for kind, at in markers if kind == "END"]
            doc.footer_at = ends[0] if doc.footer_at is None and ends else doc.footer_at
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


def doc_text(doc: Doc, progress: Progress | None) -> Iterator[str]:
    """Pass 2 (and the BPE's sample): the kept text of one file, in chunks. UserError when it is not the text
    the first pass read: its split point and character table were taken from that one."""
    _unchanged(doc)
    pos = 0
    for chunk in read_chunks(doc.path, progress):
        lo, hi = max(doc.begin - pos, 0), min(doc.end - pos, len(chunk))
        pos += len(chunk)
        if lo < hi:
            yield chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
        if pos >= doc.end:
            break
    if pos < doc.end:
        raise _changed(doc, f"{pos:,} characters, the first pass read {doc.end:,}")
    _unchanged(doc)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return st.st_size, st.st_mtime_ns


def _unchanged(doc: Doc) -> None:
    """UserError when `doc` has another size or modification time than when the first pass read it (a text
    still being written, or edited meanwhile). A rewrite of the same size within one tick of the file system's
    clock is beyond what a stamp can tell."""
    size, _ = now = _stamp(doc.path)
    if now != doc.stamp:
        raise _changed(doc, f"{doc.stamp[0]:,} bytes, then {size:,}" if size != doc.stamp[0] else "modified")


def _changed(doc: Doc, how: str) -> UserError:
    return UserError(
        f"a source file changed while prepare was reading it: {doc.path} ({how}); prepare again once it is complete"
    )
