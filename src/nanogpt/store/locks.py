"""One nanogpt command at a time writes into a folder: a training run into its --out-dir, a prepare into its
output folder. The lock is on the folder itself (no file of ours in it) and drops when the process ends,
however it ends; a second command there is refused in one line (or waits, where it can take the first's work).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


class Claim:
    """A command's hold on its folder, released by `release` or when the process ends. `release` also removes
    the folders the claim created when they are still empty: a command that stopped before writing anything
    (a run stopped before its first save, a prepare that failed) leaves no empty folder.

    The lock is on the folder, not on its name: renamed (or removed and made anew) while held, the name then
    leads to another folder, maybe another run's. `check` before writing by name, and `dir_fd` to remove or
    replace files in the held folder whatever its name now, keep a command's writes in the folder it holds."""

    def __init__(self, fd: int | None, created: list[Path] | None = None, folder: Path | None = None):
        self._fd = fd
        self._created = created or []  # deepest first
        self.folder = folder
        # the descriptor held keeps the folder's inode from being reused by a new folder of its name
        self._identity = _identity(os.fstat(fd)) if fd is not None else _stat_identity(folder)

    @property
    def dir_fd(self) -> int | None:
        """The held folder's descriptor (None without one: no flock on this system, or released)."""
        return self._fd

    def moved(self) -> str | None:
        """Why the folder's name no longer leads to the folder held, or None while it does."""
        if self.folder is None or self._identity is None:
            return None
        if _stat_identity(self.folder) == self._identity:
            return None
        now = _path_of(self._fd)
        return f"{self.folder} was renamed or removed while this command held it" + (
            f" (the folder it held is now {now})" if now else "") + (
            f"; it writes nothing more by that name, which now leads to {'another' if self.folder.exists() else 'no'}"
            " folder")

    def check(self) -> None:
        """UserError when the folder's name no longer leads to the folder held (see `moved`)."""
        why = self.moved()
        if why:
            raise UserError(why)

    def release(self) -> None:
        if self._created and self.moved():  # the name leads elsewhere now: not a folder this claim created
            self._created = []
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        for folder in self._created:
            try:
                folder.rmdir()  # only an empty folder goes
            except OSError:
                break
        self._created = []


def hold(folder: Path, busy: str, *, wait: bool = False) -> Claim:
    """Create `folder` (and its parents) and lock it. UserError(`busy`) when another process holds it; with
    `wait`, wait for it instead. OSError when the folder cannot be created or opened."""
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return Claim(_lock(folder, busy, wait), created, folder)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _stat_identity(folder: Path | None) -> tuple[int, int] | None:
    try:
        return _identity(os.stat(folder)) if folder is not None else None
    except OSError:
        return None


def _path_of(fd: int | None) -> str | None:
    """Where the held folder is now, where the system says (Linux's /proc); None elsewhere or once removed."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}") if fd is not None else None
    except OSError:
        return None
    return None if path is None or path.endswith(" (deleted)") else path


def _lock(folder: Path, busy: str, wait: bool) -> int | None:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the other guarantees hold without it
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise UserError(busy) from None
    except OSError:  # a file system without locks (some network ones): the other guarantees hold without it
        os.close(fd)
        return None
    except BaseException:  # a Ctrl-C while waiting
        os.close(fd)
        raise
    return fd
