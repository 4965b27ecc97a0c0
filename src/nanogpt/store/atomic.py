"""Atomic files: written under a hidden temporary name beside their final name, made durable, renamed into place.

A crash, a full disk or a Ctrl-C leaves either the old file or the new one, never half of one. prepare and
checkpoint both write this way. New files get mode 0o666 minus the umask, like any file the user creates
(tempfile.mkstemp would give 0o600, so a shared run folder would hold files only their writer can read).
Temporary names carry the writer's pid, so that what a killed writer left is told from a live one's and from
a user's own files (remove_stale_temps).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from safetensors import SafetensorError


NAME_MAX = 255  # bytes in one path component on Linux's and macOS's file systems


def _temp_path(folder: Path, name: str) -> Path:
    """`folder/.NAME.PID-XXXXXXXX.tmp`: hidden, named by its writer's pid (remove_stale_temps reads it back).

    NAME is cut to what fits in NAME_MAX bytes: a final name of 240 bytes is legal, its temporary name with
    23 more would not be (and would fail a write the final name allows)."""
    tail = f".{os.getpid()}-{secrets.token_hex(4)}.tmp"
    short = os.fsdecode(os.fsencode(name)[: NAME_MAX - 1 - len(tail)])  # bytes, as the file system counts
    return Path(folder) / f".{short}{tail}"


T = TypeVar("T")


def _listed(folder: Path, name: str, temps: list[Path], make: Callable[[Path], T]) -> T:
    """`make(path)` on a new temporary path, the path put in `temps` before it exists: an interrupt (SIGTERM, a
    second Ctrl-C) at any point leaves nothing that `temps` does not name, and whoever removes `temps` removes it
    (missing_ok). `make` raises FileExistsError for a path taken: another is drawn."""
    while True:
        tmp = _temp_path(folder, name)
        temps.append(tmp)
        try:
            return make(tmp)
        except FileExistsError:
            temps.remove(tmp)


def _create(path: Path) -> BinaryIO:
    # "x": created here or refused; Python's open owns the descriptor from the start, so an interrupt can never
    # leave it closed twice
    return open(path, "xb")  # noqa: SIM115 - the caller closes it


def temp_file(folder: Path, name: str) -> tuple[BinaryIO, Path]:
    """A new hidden file `.NAME.PID-XXXXXXXX.tmp` in `folder`, open for binary writing, and its path.

    It lives in the folder of its final name, so that os.replace onto that name is atomic.
    """
    temps: list[Path] = []
    return _listed(folder, name, temps, _create), temps[0]


def listed_temp_file(folder: Path, name: str, temps: list[Path]) -> BinaryIO:
    """temp_file, its path put in `temps` before the file exists (_listed)."""
    return _listed(folder, name, temps, _create)


def temp_folder(folder: Path, name: str, temps: list[Path] | None = None) -> Path:
    """A new hidden folder named like temp_file's files, for a writer that makes temporary files of its own;
    listed in `temps` before it exists, when given (_listed)."""
    temps = [] if temps is None else temps
    _listed(folder, name, temps, Path.mkdir)
    return temps[-1]


_TEMP_NAME = re.compile(r"^\.(.+)\.(\d+)-[0-9a-f]{8}\.tmp$")  # our temporary names; group 2 is the writer's pid
# what a writer may leave in a temporary folder of ours besides the file it was given: safetensors' own
# temporary file (Rust's tempfile crate: `.tmp` and six letters or digits)
_WRITER_TEMP = re.compile(r"^\.tmp[A-Za-z0-9]{6}$")


def _remove_temp_folder(box: Path) -> bool:
    """Remove temporary folder `box` with what a writer left in it; True when it is gone. A file of another
    name in it (put there by hand) is kept, and so the folder too."""
    match = _TEMP_NAME.match(box.name)
    if not box.is_dir():
        return True  # not made: an interrupt came before its mkdir
    for path in box.iterdir():
        # the file's name is the folder's NAME, or starts with it where _temp_path cut a long name
        if match and (path.name.startswith(match.group(1)) or _WRITER_TEMP.match(path.name)) and path.is_file():
            path.unlink(missing_ok=True)
    try:
        box.rmdir()
    except OSError:
        return False
    return True


def remove_stale_temps(folder: Path, names: re.Pattern[str] | None = None) -> list[Path]:
    """Remove the temporary files and folders of this module in `folder` (those of final names that match
    `names`, when given) whose writer is gone: a kill -9, a second Ctrl-C or a power cut gave it no chance to.
    Call it holding the folder's lock, before writing there: a temporary file of this process is then stale
    too (an earlier run in it, or a pid reused), and another live writer's is kept. Returns what was removed."""
    if os.name == "nt":  # os.kill(pid, 0) is not a harmless probe there
        return []
    removed = []
    for path in Path(folder).iterdir():
        match = _TEMP_NAME.match(path.name)
        if not match or (names is not None and not names.fullmatch(match.group(1))):
            continue
        pid = int(match.group(2))
        if pid != os.getpid() and _alive(pid):
            continue
        if path.is_symlink():
            continue  # not something this module makes
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
        elif path.is_dir() and _remove_temp_folder(path):
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


def atomic_write(path: Path, write: Callable[[Path], object], *, writer_temps: bool = False) -> None:
    """Write `path` through `write(tmp_path)` to a temporary file, then publish it; on any error, remove it.

    `writer_temps`: `write` makes temporary files of its own beside the path it is given (safetensors does,
    named `.tmpXXXXXX` like anyone's): it then writes in a temporary folder of ours, so that what a killed
    writer leaves is ours by name and pid, and nothing of the user's is ever taken for it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []  # named before it exists (_listed): an interrupt anywhere leaves nothing behind
    tmp = None
    try:
        if writer_temps:
            tmp = temp_folder(path.parent, path.name, made) / path.name
            fh = open(tmp, "xb")  # noqa: SIM115 - closed at once
        else:
            fh = listed_temp_file(path.parent, path.name, made)
            tmp = made[0]
        fh.close()
        mode = os.stat(tmp).st_mode & 0o777  # what the umask gives a new file
        write(tmp)
        # a writer may replace the file rather than fill it (safetensors writes its own 0o600 temp and renames it)
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        publish(tmp, path)
    except BaseException:  # includes KeyboardInterrupt: never leave a half-written file behind
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not writer_temps and made:
            made[0].unlink(missing_ok=True)
        raise
    finally:
        if writer_temps and made:
            _remove_temp_folder(made[0])


def atomic_write_at(dir_fd: int, name: str, data: bytes) -> None:
    """Write file `name` of the folder open as `dir_fd` atomically, as atomic_write does by path: named
    relative to the descriptor, it lands in that folder even when the folder was renamed meanwhile."""
    while True:
        tmp = _temp_path(Path("."), name).name
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
    try:
        with open(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
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
