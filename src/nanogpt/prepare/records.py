"""Documents held as records: JSON Lines (one JSON object a line, plain, .gz or .zst) and Parquet (a column, read
one row group at a time with pyarrow, never the whole file).

`--text-field NAME` names the field or column holding the text (`meta.body` reaches into a nested object or
struct). A line that is not a JSON object, lacks the field or holds something else than a string is a bad
record: it stops prepare with its file and line number, or with `--skip-bad-records` is counted and left out.
A null or empty text is an empty document: left out and counted, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import UserError
from .inputs import decompressed, decompression_errors, not_whole, open_raw
from .progress import Progress
from .sources import CHUNK_CHARS, CharSet


def lf(text: str) -> str:
    """CRLF and lone CR read as LF, as text files are read: the same documents give the same tokens either way."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


MARK_CHARS = 1 << 16  # characters of documents between two of the places pass 1 marks in a plain .jsonl


class BadRecords:
    """How one file's bad records are met: the first stops prepare, or (--skip-bad-records) each is counted."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.count = 0
        self.first = ""  # the first one skipped, for the report
        self.bytes = 0  # bytes of the file's text read (decompressed): what progress counts in
        self.line = 0  # the number of the last line read

    def bad(self, where: str, problem: str) -> None:
        if not self.skip:
            raise UserError(f"{where}: {problem} (--skip-bad-records leaves such records out)")
        self.count += 1
        self.first = self.first or f"{where}: {problem}"


def _field(obj: dict, name: str) -> tuple[bool, Any]:
    """(found, value) of `name` in a JSON object; a dotted name reaches into nested objects when no key has it."""
    if name in obj:
        return True, obj[name]
    value: Any = obj
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _fields(obj: dict) -> str:
    names = list(obj)[:12]
    return ", ".join(names) + (", ..." if len(obj) > 12 else "") if names else "none"


def jsonl_texts(path: Path, field: str, bad: BadRecords, progress: Progress | None,
                start: tuple[int, int] = (0, 0), stop: int | None = None, buffer: int = 1 << 20) -> Iterator[str]:
    """The text of each record of a JSON Lines file ('' for an empty one), CRLF read as LF; blank lines are no
    records. `start`: (byte offset, lines before it) where a plain file is read from (one of its marks); `stop`:
    the byte offset of a line start where reading stops; `buffer`: bytes read at a time."""
    errors = decompression_errors()
    with open_raw(path, buffer) as raw:
        stream = decompressed(path, raw)
        if start[0]:
            stream.seek(start[0])
        number, pending = start[1], 0
        bad.bytes = start[0]
        try:
            for line in stream:
                if stop is not None and bad.bytes >= stop:
                    break
                number += 1
                bad.line = number
                pending += len(line)
                if pending >= 1 << 20 and progress is not None:
                    progress.advance(pending)
                    pending = 0
                bad.bytes += len(line)
                if not line.strip():
                    continue
                text = _record_text(line, field, f"{path}, line {number}", bad)
                if text is not None:
                    yield text
        except errors as e:
            raise not_whole(path, e) from None
        finally:  # also when the reader stops early (the BPE's sample jumps ahead)
            if progress is not None:
                progress.advance(pending)


def tally(texts: Iterable[str], bad: BadRecords, into: Any, charset: CharSet | None, marks: Any) -> None:
    """Count `texts` (a records reader's, with `bad` its BadRecords) into `into`'s count, chars and empty; the
    characters seen into `charset`, a megabyte at a time (CharSet.add costs per call); and into `marks` (None: no
    marks), every MARK_CHARS characters, where the next line starts: byte offset, line, documents and characters
    before it, from where `into` began counting."""
    batch: list[str] = []
    batch_chars = marked = 0
    for text in texts:
        if not text:
            into.empty += 1
            continue
        into.count += 1
        into.chars += len(text)
        if marks is not None and into.chars - marked >= MARK_CHARS:  # the next line starts after this document
            marks.extend((bad.bytes, bad.line, into.count, into.chars))
            marked = into.chars
        if charset is not None:
            batch.append(text)
            batch_chars += len(text)
            if batch_chars >= CHUNK_CHARS:
                charset.add("".join(batch))
                batch, batch_chars = [], 0
    if charset is not None:
        charset.add("".join(batch))


def _record_text(line: bytes, field: str, where: str, bad: BadRecords) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for a line that is not UTF-8
        bad.bad(where, f"not JSON ({str(e)[:80]})")
        return None
    if not isinstance(obj, dict):
        bad.bad(where, f"{json.dumps(obj)[:40]} is not a JSON object")
        return None
    found, value = _field(obj, field)
    if not found:
        bad.bad(where, f"no field {field!r} (its fields: {_fields(obj)}; --text-field picks another)")
        return None
    if value is None:
        return ""
    if not isinstance(value, str):
        bad.bad(where, f"field {field!r} holds {json.dumps(value)[:40]}, not a string")
        return None
    return lf(value)


# ----------------------------------------------------------------------------------------------------------
# Parquet


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # pyarrow's ArrowInvalid and its kin for a file that is not Parquet
        raise UserError(f"{path} is not a readable Parquet file ({str(e)[:100]})") from None


def _column(pf: Any, path: Path, field: str) -> tuple[str, list[str]]:
    """The top-level column holding `field` and the struct fields below it; UserError naming the columns."""
    names = pf.schema_arrow.names
    if field in names:
        return field, []
    top, *rest = field.split(".")
    if top in names and rest:
        return top, rest
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    raise UserError(f"{path} has no column {field!r} (its columns: {shown}; --text-field picks another)")


def parquet_size(path: Path, field: str) -> int:
    """Uncompressed bytes of the text column, from the file's metadata (progress counts in these)."""
    pf = _parquet(path)
    top, _ = _column(pf, path, field)
    meta = pf.metadata
    total = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema == top or col.path_in_schema.startswith(top + "."):
                total += col.total_uncompressed_size
    return total


def parquet_texts(path: Path, field: str, bad: BadRecords, progress: Progress | None) -> Iterator[str]:
    """The text of each row of a Parquet file ('' for a null), one row group in memory at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pf = _parquet(path)
    top, rest = _column(pf, path, field)
    meta = pf.metadata
    for g in range(pf.num_row_groups):
        try:
            column = pf.read_row_group(g, columns=[top]).column(0)
            for name in rest:
                column = pc.struct_field(column, [name])
        except Exception as e:  # a damaged file, or a nested name that is not a struct's field
            raise UserError(f"{path}: cannot read column {field!r} of row group {g} ({str(e)[:100]})") from None
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise UserError(f"{path}: column {field!r} holds {column.type}, not text (--text-field picks another)")
        for value in column.to_pylist():
            yield "" if value is None else lf(value)
        if progress is not None:
            group = meta.row_group(g)
            progress.advance(sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
                                 if group.column(c).path_in_schema.split(".")[0] == top))
