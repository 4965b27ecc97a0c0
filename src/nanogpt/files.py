"""Where the program keeps files of its own (the cache) and the size check made before any file is parsed.

Below everything that reads files (data, checkpoint, the dtype probe, prepare), so none of them imports
another for these."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError

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


def cache_dir() -> Path:
    """Where prepared bundled data is kept: $NANOGPT_CACHE_DIR, else $XDG_CACHE_HOME/nanogpt or ~/.cache/nanogpt."""
    if os.environ.get("NANOGPT_CACHE_DIR"):
        return Path(os.environ["NANOGPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "nanogpt"
