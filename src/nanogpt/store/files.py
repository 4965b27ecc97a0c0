"""Where the program keeps files of its own (the cache), the size check made before any file is parsed, and
the one way JSON files are read and written.

Below everything that reads files (data, checkpoint, the dtype probe, prepare), so none of them imports
another for these."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError

JSON_LIMIT = 64 << 20  # config.json (which holds the vocabulary), vocab.json and anything else


def check_size(path: Path, what: str, limit: int = JSON_LIMIT) -> None:
    """UserError when a file is larger than `limit` bytes (read before a file is parsed)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size > limit:
        raise UserError(
            f"{what} {path} is {size / 2**20:,.0f} MiB, more than such a file can hold "
            f"({limit / 2**20:,.0f} MiB): refusing to read it"
        )


def read_json(path: Path, what: str, limit: int = JSON_LIMIT) -> Any:
    """The JSON file `path`, at most `limit` bytes; UserError with one line when it is missing, unreadable, too
    large, not UTF-8, not JSON, or nested deeper than the parser's recursion limit (a 400 KB file of brackets
    is enough for that). Every JSON file nanogpt reads comes through here; a cache catches the UserError and
    rebuilds itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    check_size(path, what, limit)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is not {what}: its JSON is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]})") from None


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    """`obj` as UTF-8 JSON text ending in a newline. A path named in bytes that are not UTF-8 (Linux allows
    any) reaches Python as lone surrogates, which UTF-8 cannot encode; they are written as the JSON escape
    `\\udcXX`, which reads back as the same path, so such a path is taken as it is."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return text.encode("utf-8", "backslashreplace")  # only lone surrogates need it; their escape is JSON's


@contextmanager
def readable_name(path: Path, what: str) -> Iterator[str]:
    """A name of the file `path` for a library that opens it itself (safetensors, in Rust): UserError with
    the system's reason when we cannot open it (safetensors says "No such file" for a file it may not read),
    and, for a path in bytes that are not UTF-8 (Linux allows any; the Rust side takes UTF-8 only),
    /proc/self/fd/N of the file opened here."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        name = os.fspath(path)
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            name = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else name
        yield name
    finally:
        os.close(fd)


def listing(names: list[str], most: int = 8) -> str:
    """`a, b, c and 9,997 more`: a list for a one-line message, whose length stays bounded however many names
    a folder holds (each name cut to 60 characters)."""
    shown = [n if len(n) <= 60 else n[:57] + "..." for n in names[:most]]
    if len(names) > most:
        return ", ".join(shown) + f" and {len(names) - most:,} more"
    return ", ".join(shown)


def discard_output() -> None:
    """Point standard output at /dev/null: it can no longer be written (a closed pipe, a full disk), and the
    lines still to come, and the interpreter's own flush at exit, must not fail a second time."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def flush_output() -> None:
    """Flush standard output; UserError when it cannot take more (`> /dev/full`, a full disk). A closed pipe
    stays a BrokenPipeError: the reader had what it wanted."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise UserError(f"cannot write the output: {e.strerror or e}") from None


def cache_dir() -> Path:
    """Where prepared bundled data is kept: $NANOGPT_CACHE_DIR, else $XDG_CACHE_HOME/nanogpt or ~/.cache/nanogpt."""
    if os.environ.get("NANOGPT_CACHE_DIR"):
        return Path(os.environ["NANOGPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "nanogpt"
