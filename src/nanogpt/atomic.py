"""Atomic files: written under a hidden temporary name beside their final name, made durable, renamed into place.

A crash, a full disk or a Ctrl-C leaves either the old file or the new one, never half of one. prepare and
checkpoint both write this way. New files get mode 0o666 minus the umask, like any file the user creates
(tempfile.mkstemp would give 0o600, so a shared run folder would hold files only their writer can read).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_file(folder: Path, name: str) -> tuple[BinaryIO, Path]:
    """A new hidden file `.NAME.PID-XXXXXXXX.tmp` in `folder`, open for binary writing, and its path.

    It lives in the folder of its final name, so that os.replace onto that name is atomic.
    """
    while True:
        tmp = Path(folder) / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return os.fdopen(fd, "wb"), tmp


def publish(tmp: Path, path: Path) -> None:
    """Make the bytes of `tmp` durable, then rename it to `path` (the rename is what makes them visible)."""
    with open(tmp, "rb+") as f:  # fsync through any descriptor flushes the file's data
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through `write(tmp_path)` to a temporary file, then publish it; on any error, remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh, tmp = temp_file(path.parent, path.name)
    fh.close()
    try:
        mode = os.stat(tmp).st_mode & 0o777  # what the umask gives a new file
        write(tmp)
        # a writer may replace the file rather than fill it (safetensors writes its own 0o600 temp and renames it)
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        publish(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise
