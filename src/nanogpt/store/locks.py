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
    (a run stopped before its first save, a prepare that failed) leaves no empty folder."""

    def __init__(self, fd: int | None, created: list[Path] | None = None):
        self._fd = fd
        self._created = created or []  # deepest first

    def release(self) -> None:
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
    return Claim(_lock(folder, busy, wait), created)


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
