"""Atomic files: written under a hidden temporary name beside their final name, made durable, renamed into place.

A crash, a full disk or a Ctrl-C leaves either the old file or the new one, never half of one. prepare and
checkpoint both write this way. New files get mode 0o666 minus the umask, like any file the user creates
(tempfile.mkstemp would give 0o600, so a shared run folder would hold files only their writer can read).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from safetensors import SafetensorError


def temp_file(folder: Path, name: str) -> tuple[BinaryIO, Path]:
    """A new hidden file `.NAME.PID-XXXXXXXX.tmp` in `folder`, open for binary writing, and its path.

    It lives in the folder of its final name, so that os.replace onto that name is atomic.
    """
    while True:
        tmp = Path(folder) / f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            # "x": created here or refused; Python's open owns the descriptor from the start, so an interrupt
            # can never leave it closed twice
            return open(tmp, "xb"), tmp
        except FileExistsError:
            continue


_TEMP_NAME = re.compile(r"^\.(.+)\.(\d+)-[0-9a-f]{8}\.tmp$")  # temp_file's names; group 2 is the writer's pid


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files of `temp_file` in `folder` whose writer has ended (a kill -9, a second Ctrl-C
    or a power cut gave it no chance to); a live writer's are kept. Returns what was removed."""
    if os.name == "nt":  # os.kill(pid, 0) is not a harmless probe there
        return []
    removed = []
    for path in Path(folder).iterdir():
        match = _TEMP_NAME.match(path.name)
        if match and not _alive(int(match.group(2))) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


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
    try:
        fh.close()
        mode = os.stat(tmp).st_mode & 0o777  # what the umask gives a new file
        write(tmp)
        # a writer may replace the file rather than fill it (safetensors writes its own 0o600 temp and renames it)
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        publish(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise



def write_failure(error: BaseException) -> str | None:
    """Why a write failed, in words, or None when `error` is not a failed write: an OSError's reason, or the
    one safetensors names in the text of its own error, which is not an OSError."""
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    if isinstance(error, SafetensorError):
        found = re.search(r"os error (\d+)|code: (\d+)", str(error))
        return os.strerror(int(found.group(1) or found.group(2))) if found else str(error)[:120]
    return None
