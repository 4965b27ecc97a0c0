"""Where the program keeps files of its own (the cache), the size check made before any file is parsed, and
the one way JSON files are read and written.

Below everything that reads files (data, checkpoint, the dtype probe, prepare), so none of them imports
another for these."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UserError

JSON_LIMIT = 64 << 20  # config.json (which holds the vocabulary), vocab.json and anything else


def open_regular(path: Path, what: str) -> int:
    """A descriptor of `path` open for reading; UserError unless it is a regular file. A FIFO opened to read
    waits for a writer and a device (/dev/zero) reads without end, so both are refused before a byte is read
    (O_NONBLOCK: the open itself does not wait; on a regular file it changes nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "not a regular file")
        raise UserError(f"{what} {path} is {kind}, not a file: refusing to read it")
    return fd


def read_bytes(path: Path, what: str, limit: int = JSON_LIMIT) -> bytes:
    """The bytes of regular file `path`, at most `limit`; UserError when it is larger. Bounded by the bytes
    read, not only by what stat says: a file that grows while it is read is cut off at the limit too."""
    fd = open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UserError(
                f"{what} {path} is {size / 2**20:,.0f} MiB, more than such a file can hold "
                f"({limit / 2**20:,.0f} MiB): refusing to read it"
            )
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > limit:
        raise UserError(f"{what} {path} holds more than such a file can ({limit / 2**20:,.0f} MiB): refusing to "
                        "read the rest")
    return data


def read_json(path: Path, what: str, limit: int = JSON_LIMIT) -> Any:
    """The JSON file `path`, at most `limit` bytes; UserError with one line when it is missing, unreadable, not
    a regular file, too large, not UTF-8, not JSON, or nested deeper than the parser's recursion limit (a 400 KB
    file of brackets is enough for that). Every JSON file nanogpt reads comes through here; a cache catches the
    UserError and rebuilds itself."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    data = read_bytes(path, what, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise UserError(f"{what} {path} is not {what}: its JSON is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]})") from None


def check_stored_zip(path: Path, what: str) -> None:
    """UserError unless `path` is a zip archive as torch.save writes one: every entry stored as it is, their
    sizes within the file's. A compressed entry would be inflated by torch.load before anything could check it
    (a 1.9 MB file inflated to 2 GB); a file of another format (torch's legacy pickle) declares the sizes of its
    storages in the pickle, and torch allocates them before reading."""
    fd = open_regular(path, what)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        try:
            entries = zipfile.ZipFile(f).infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            raise UserError(f"{what} {path} is not a zip archive as torch.save (PyTorch 1.6 or later) writes one: "
                            "refusing to read it") from None
    packed = next((e for e in entries if e.compress_type != zipfile.ZIP_STORED), None)
    if packed is not None:
        raise UserError(f"{what} {path}: its entry {packed.filename[:60]} is compressed ({packed.compress_size:,} "
                        f"bytes, {packed.file_size:,} once inflated), which torch.save never does: refusing to "
                        "inflate it")
    if sum(e.file_size for e in entries) > size:
        raise UserError(f"{what} {path}: its entries claim {sum(e.file_size for e in entries):,} bytes, more than "
                        f"the file's {size:,}: it is damaged")


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
    fd = open_regular(path, what)
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
