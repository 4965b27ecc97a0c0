"""A source as documents, and where its validation part begins.

Every text file, JSON line or Parquet row is one document. The first pass (`scan`) counts each file's
documents and characters; the later passes (`split_stream`: the BPE's sample, the encoding) walk them again
and say of each piece of text whether it is training or validation text.

The validation part of a source is whole documents: the last ones, about `--val-fraction` of its characters
(a document goes to validation when more than half of it lies past the split point; the first document always
trains, the last always validates). A source that is a single document is cut inside it, at
`int(chars * (1 - val_fraction))`: nanoGPT's own split of one text file, kept exactly.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .progress import Progress
from .inputs import compression
from .encode import workers
from .records import BadRecords, jsonl_texts, parquet_size, parquet_texts, tally
from .scan_ranges import parallel, scan_jsonl
from .sources import CharSet, Doc, Source, changed, doc_text, scan_text, stamp, unchanged

DOC_START = None  # what split_stream yields in place of text where a document begins


@dataclass
class Reading:
    """How records and text are read: prepare's --text-field, --skip-bad-records and --strip-gutenberg."""

    text_field: str = "text"
    skip_bad_records: bool = False
    strip_gutenberg: bool = False


def _texts(doc: Doc, reading: Reading, bad: BadRecords, progress: Progress | None) -> Iterator[str]:
    if doc.kind == "jsonl":
        return jsonl_texts(doc.path, reading.text_field, bad, progress)
    return parquet_texts(doc.path, reading.text_field, bad, progress)


def scan(doc: Doc, charset: CharSet | None, reading: Reading, progress: Progress) -> None:
    """Pass 1 over one file: its documents and characters (and a text file's Gutenberg window); the characters
    seen go into `charset`."""
    doc.stamp = stamp(doc.path)
    if doc.kind == "text":
        scan_text(doc, charset, reading.strip_gutenberg, progress)
        return
    if doc.kind == "parquet":
        doc.size = parquet_size(doc.path, reading.text_field)
    if parallel(doc, workers()):
        scan_jsonl(doc, reading.text_field, reading.skip_bad_records, charset, progress, workers())
        return
    bad = BadRecords(reading.skip_bad_records)
    marks = doc.marks if doc.kind == "jsonl" and not compression(doc.path) else None  # where a plain file seeks
    tally(_texts(doc, reading, bad, progress), bad, doc, charset, marks)
    doc.bad, doc.first_bad = bad.count, bad.first
    if doc.kind == "jsonl":
        doc.size = bad.bytes  # a .zst may not record its size: the later passes' progress uses this count
    doc.end = doc.chars


def documents(doc: Doc, reading: Reading, progress: Progress | None) -> Iterator[tuple[int, Iterable[str]]]:
    """Each document of a file with text, as (its characters, its text in pieces); UserError when the file is
    not what the first pass read."""
    if doc.kind == "text":
        if doc.chars:
            yield doc.chars, doc_text(doc, progress)
        return
    unchanged(doc)
    seen = 0
    for text in _texts(doc, reading, BadRecords(skip=True), progress):  # the first pass met every bad one
        if text:
            seen += 1
            yield len(text), (text,)
    unchanged(doc)
    if seen != doc.count:
        raise changed(doc, f"{seen:,} documents, the first pass read {doc.count:,}")


@dataclass
class Cursor:
    """How a reader of split_stream that wants only some of its training text (the BPE's sample) skips the rest:
    it sets `wanted`, where in the source's characters the next text it wants begins; at each DOC_START the
    stream sets `at`, where that document begins. What the stream skips lies wholly before `wanted`, and before
    the validation part: a whole file left unread, or in a plain .jsonl a jump to a mark (Doc.marks)."""

    wanted: int = 0
    at: int = 0


def _marked(doc: Doc, reading: Reading, progress: Progress | None, wanted: Callable[[], int]
            ) -> Iterator[tuple[int, int, str]]:
    """(documents before, characters before, text) of the records of a marked .jsonl, reading on from the last
    mark before `wanted()` (characters from the file's start) whenever one lies ahead of the next record."""
    at = doc.marks[3::4]  # each mark's characters before
    k, pos, start = 0, 0, (0, 0)
    while True:
        bad = BadRecords(skip=True)  # the first pass met every bad one
        # read a little at a time: a jump goes on a few blocks of MARK_CHARS
        for text in jsonl_texts(doc.path, reading.text_field, bad, progress, start, buffer=1 << 14):
            if not text:
                continue
            yield k, pos, text
            k, pos = k + 1, pos + len(text)
            j = bisect.bisect_right(at, wanted()) - 1
            if j >= 0 and at[j] > pos:
                offset, line, k, pos = doc.marks[4 * j : 4 * j + 4]
                if progress is not None:
                    progress.advance(offset - bad.bytes)
                start = (offset, line)
                break
        else:
            return


def split_stream(source: Source, val_fraction: float, reading: Reading, progress: Progress | None,
                 cursor: Cursor | None = None) -> Iterator[tuple[str, str | None]]:
    """('train' or 'val', text) for each piece of the source's text in order; (split, DOC_START) where a
    document begins (the cut inside a single document begins one in 'val'). With a `cursor`, text before
    `cursor.wanted` may be skipped."""
    split = int(source.chars * (1 - val_fraction))
    count = source.count
    pos, k = 0, 0  # characters and documents before the current one
    for doc in source.docs:
        if cursor is not None and count > 1:
            if k + doc.count < count and pos + doc.chars <= min(cursor.wanted, split):
                pos, k = pos + doc.chars, k + doc.count  # all training text before the wanted: not read
                if progress is not None:
                    progress.advance(doc.size)
                continue
            if len(doc.marks):
                base_k, base_pos = k, pos
                for k_in, pos_in, text in _marked(doc, reading, progress,
                                                  lambda base=base_pos: min(cursor.wanted, split) - base):
                    k, pos = base_k + k_in, base_pos + pos_in
                    name = _split_of(k, pos, len(text), count, split)
                    cursor.at = pos
                    yield name, DOC_START
                    yield name, text
                pos, k = base_pos + doc.chars, base_k + doc.count
                continue
        for chars, pieces in documents(doc, reading, progress):
            if cursor is not None:
                cursor.at = pos
            if count == 1:
                yield from _cut_inside(pieces, split)
            else:
                name = _split_of(k, pos, chars, count, split)
                yield name, DOC_START
                for text in pieces:
                    yield name, text
            pos += chars
            k += 1


def _split_of(k: int, pos: int, chars: int, count: int, split: int) -> str:
    """Where the k-th of `count` documents goes, `pos` characters in and `chars` long: validation when more than
    half of it lies past `split`, the first always training and the last always validation."""
    return "val" if k == count - 1 or (k > 0 and pos + chars / 2 >= split) else "train"


def _cut_inside(pieces: Iterable[str], split: int) -> Iterator[tuple[str, str | None]]:
    """The one document of a source, its first `split` characters training text and the rest validation."""
    yield "train", DOC_START
    pos, val_started = 0, False
    for text in pieces:
        head = text[: max(0, split - pos)]  # the whole text (no copy) while before the split
        if head:
            yield "train", head
        tail = text[len(head) :]
        if tail:
            if not val_started:
                yield "val", DOC_START
                val_started = True
            yield "val", tail
        pos += len(text)
