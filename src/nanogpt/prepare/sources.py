"""What SOURCE holds and the text of its text files: a file, a folder tree or a mixology folder; text read in chunks,
Gutenberg header and footer found.

The first pass (`scan_text`) measures each text file in normalised characters (CRLF and lone CR read as LF),
finds the kept window between Project Gutenberg's START and END lines, and collects the character vocabulary;
the second pass (`doc_text`) streams that window again for encoding. Memory stays bounded whatever the size.
Records (JSON Lines, Parquet) are read by records.py; documents.py walks both kinds as documents.
"""

from __future__ import annotations

import array
import codecs
import io
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import UserError
from ..store.files import listing
from .inputs import decompressed, decompression_errors, kind_of, not_whole, open_raw, source_name, text_size, walk
from .progress import Progress

CHUNK_CHARS = 1 << 20  # characters read at a time; also the size of one GPT-2 encoding job
_MAX_CODE_POINT = 0x110000
_MIX_FOLDER = re.compile(r"^(\d+)_(.+)$")
# Gutenberg markers: "*** START OF THE PROJECT GUTENBERG EBOOK ... ***" and "*** END OF ..." on a line.
_GUTENBERG = re.compile(r"^\*{3}\s*(START|END) OF\b[^\n]*PROJECT GUTENBERG[^\n]*$", re.MULTILINE | re.IGNORECASE)


@dataclass
class Doc:
    """One input file; `size` is its text in bytes. After `scan`: a text file's kept window in characters
    (`begin`/`end`); for any kind, `chars` and `count`, the characters and number of its non-empty documents."""

    path: Path
    size: int
    kind: str = "text"  # 'text' (one document), 'jsonl' or 'parquet' (a document a record)
    chars: int = 0
    count: int = 0  # documents with text
    empty: int = 0  # documents without (an empty file, a null or "" record)
    bad: int = 0  # records left out by --skip-bad-records
    first_bad: str = ""
    begin: int = 0
    end: int = 0
    stripped: bool = False
    gutenberg: bool = False  # kept (--keep-gutenberg): a START marker was seen in its first chunk
    footer_at: int | None = None  # kept: where its END marker line starts, in characters
    stamp: tuple[int, int] = (0, 0)  # its size and modification time when the first pass read it
    cr_line_ends: int = 0  # CRLF and lone CR line ends the first pass read as LF (prepare says so)
    # a plain .jsonl: places to start reading it (records.MARK_CHARS apart), 4 numbers each: byte offset, line
    # number, documents and characters before; the BPE's sample seeks past what it does not take (documents.py)
    marks: array.array = field(default_factory=lambda: array.array("q"))


@dataclass
class Source:
    """One source: a single file or folder tree (100%), or a mixology sub-folder `NN_name/` (NN percent)."""

    name: str
    label: str  # how the source is shown: the folder or file name
    percent: int
    docs: list[Doc]
    chars: int = 0
    hidden: int = 0  # hidden files and folders left out of a folder tree
    binary: int = 0  # binary files left out of a folder tree
    repeated: int = 0  # folders reached again through a link, read once
    mixed: bool = False  # one of a mixology folder's NN_name/ sources

    @property
    def count(self) -> int:
        return sum(d.count for d in self.docs)


# ----------------------------------------------------------------------------------------------------------
# finding the sources


def find_sources(path: Path) -> tuple[list[Source], list[str]]:
    """The sources in SOURCE (a file, a folder tree, or a folder of NN_name/ sub-folders) and what a mixology
    folder holds besides. The second list names the ignored entries as shown to the user (`drafts/`, `notes.txt`).
    """
    if not path.exists():
        raise UserError(f"{path} does not exist")
    _check_name(path)
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"{path} is empty")
        return [Source(source_name(path), path.name, 100, [_doc(path)])], []
    if not path.is_dir():
        raise UserError(f"{path} is neither a file nor a folder")
    try:
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise UserError(f"cannot read the folder {path}: {e.strerror or e}") from None
    if not any(p.is_dir() and _MIX_FOLDER.match(p.name) for p in entries):
        # no NN_name/ sub-folder: the folder is one source, a tree of files
        return [_tree_source(path, path.resolve().name or "dataset", path.name + "/", 100)], []
    sources, ignored = [], []
    ignored += [p.name for p in entries if p.is_file()]  # files outside NN_ folders
    for sub in (p for p in entries if p.is_dir()):
        m = _MIX_FOLDER.match(sub.name)
        if not m or int(m.group(1)) == 0:
            ignored.append(sub.name + "/")
            continue
        sources.append(_tree_source(sub, m.group(2), sub.name + "/", int(m.group(1))))
        sources[-1].mixed = True
    note = f" (ignored: {listing(ignored)})" if ignored else ""
    if not sources:
        raise UserError(
            f"{path} has no usable sources: expected sub-folders named NN_name/ (e.g. 25_lovecraft/, "
            f"75_shakespeare/) holding text files, NN being the percent of tokens{note}"
        )
    total = sum(s.percent for s in sources)
    if total != 100:
        shares = listing([f"{s.label} {s.percent}%" for s in sources])
        raise UserError(f"the source percentages in {path} sum to {total}, not 100 ({shares})")
    return sources, ignored


def _tree_source(folder: Path, name: str, label: str, percent: int) -> Source:
    _check_name(folder)
    tree = walk(folder)
    for f in tree.files:
        _check_name(f)
    source = Source(name, label, percent, [_doc(f) for f in tree.files], hidden=tree.hidden, binary=tree.binary,
                    repeated=tree.repeated)
    if not source.docs:
        left = f" ({tree.hidden} hidden, {tree.binary} binary left out)" if tree.hidden or tree.binary else ""
        raise UserError(f"source {folder} has no text files (nor .jsonl or .parquet){left}")
    return source


def _doc(path: Path) -> Doc:
    kind = kind_of(path)
    return Doc(path, path.stat().st_size if kind == "parquet" else text_size(path), kind)


def _check_name(path: Path) -> None:
    """UserError for a file name that is not UTF-8: vocab.json records where the text came from, as UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the file name {os.fsencode(path)!r} is not UTF-8: rename it first") from None


# ----------------------------------------------------------------------------------------------------------
# reading text


def _blocks(path: Path) -> Iterator[bytes]:
    """The bytes of a file's text (decompressed) in blocks of 64 KiB: small, so that an offset looked up in a
    damaged .gz is found when it comes before the damage."""
    with open_raw(path) as raw:
        f = decompressed(path, raw)
        while True:
            try:
                block = f.read(1 << 16)
            except decompression_errors() as e:
                raise not_whole(path, e) from None
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


def read_chunks(path: Path, progress: Progress | None = None, doc: Doc | None = None) -> Iterator[str]:
    """The text of a file in chunks, CRLF (and lone CR) read as LF, as nanoGPT's open(..., 'r') reads it;
    `doc`, when given, counts those line ends (`cr_line_ends`)."""
    errors = decompression_errors()
    with open_raw(path) as raw:
        stream: BinaryIO = decompressed(path, raw)
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
            except errors as e:
                raise not_whole(path, e) from None
            if not chunk:
                break
            if "\x00" in chunk:
                raise UserError(f"{path} looks like a binary file (NUL byte at offset {_nul_offset(path)}), not text")
            if progress is not None:
                pos = stream.tell()  # bytes of text read (decompressed), like Doc.size counts them
                progress.advance(pos - done)
                done = pos
            if cr or "\r" in chunk:
                chunk = cr + chunk
                cr = "\r" if chunk.endswith("\r") else ""
                if doc is not None:
                    doc.cr_line_ends += chunk.count("\r") - len(cr)
                chunk = chunk[: len(chunk) - len(cr)].replace("\r\n", "\n").replace("\r", "\n")
                if not chunk:
                    continue
            yield chunk
        if cr:
            if doc is not None:
                doc.cr_line_ends += 1
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

    def add_codes(self, codes: np.ndarray) -> None:
        """Characters given as code points (what a worker process saw)."""
        self.seen[codes] = True
        self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))

    def clear(self) -> None:
        self.seen[:] = False
        self.known_ascii = b""

    def merge(self, other: CharSet) -> None:
        self.seen |= other.seen
        self.known_ascii = bytes(np.flatnonzero(self.seen[:128]).astype(np.uint8))

    def chars(self) -> list[str]:
        return [chr(c) for c in np.flatnonzero(self.seen)]


def scan_text(doc: Doc, charset: CharSet | None, strip: bool, progress: Progress) -> None:
    """Pass 1 over one text file: its length in characters, its Gutenberg window, and its characters."""
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

    doc.cr_line_ends = 0
    for chunk in read_chunks(doc.path, progress, doc):
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
    doc.count, doc.empty = (1, 0) if doc.chars else (0, 1)
    if local is not None and local is not charset and charset is not None:
        charset.merge(local)


def doc_text(doc: Doc, progress: Progress | None) -> Iterator[str]:
    """Pass 2 (and the BPE's sample): the kept text of one file, in chunks. UserError when it is not the text
    the first pass read: its split point and character table were taken from that one."""
    unchanged(doc)
    pos = 0
    for chunk in read_chunks(doc.path, progress):
        lo, hi = max(doc.begin - pos, 0), min(doc.end - pos, len(chunk))
        pos += len(chunk)
        if lo < hi:
            yield chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
        if pos >= doc.end:
            break
    if pos < doc.end:
        raise changed(doc, f"{pos:,} characters, the first pass read {doc.end:,}")
    unchanged(doc)


def stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return st.st_size, st.st_mtime_ns


def unchanged(doc: Doc) -> None:
    """UserError when `doc` has another size or modification time than when the first pass read it (a text
    still being written, or edited meanwhile). A rewrite of the same size within one tick of the file system's
    clock is beyond what a stamp can tell."""
    size, _ = now = stamp(doc.path)
    if now != doc.stamp:
        raise changed(doc, f"{doc.stamp[0]:,} bytes, then {size:,}" if size != doc.stamp[0] else "modified")


def changed(doc: Doc, how: str) -> UserError:
    return UserError(
        f"a source file changed while prepare was reading it: {doc.path} ({how}); prepare again once it is complete"
    )
