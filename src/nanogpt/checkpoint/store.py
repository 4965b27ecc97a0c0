"""A checkpoint's file names, JSON and safetensors files written atomically and read with one-line errors, and
the manifest that seals a set (sha256 of each file) and verifies each file read."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..store.atomic import atomic_write
from ..errors import UserError
from ..store.files import json_bytes, read_json, readable_name
FORMAT = 1
FILES = (".safetensors", ".config.json", ".training_log.json", ".resume.safetensors", ".resume.json")
MANIFEST = ".manifest.json"
SUFFIXES = (*FILES, MANIFEST)


def stem_of(path: str | Path) -> Path:
    """The checkpoint stem of a stem or of any of its files (e.g. `out/model_step_5.safetensors`)."""
    p = str(path)
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if p.endswith(suffix):
            return Path(p[: -len(suffix)])
    return Path(p)


def stem_for(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"model_step_{step}"


def path_of(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


def weights_path(stem: str | Path) -> Path:
    return path_of(stem_of(stem), ".safetensors")


# ----------------------------------------------------------------------------- atomic writes
def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    data = json_bytes(obj)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (tensors are copied to contiguous CPU memory first)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata), writer_temps=True)


# ----------------------------------------------------------------------------- validated reads
# The most a JSON file we read may hold. Parsed JSON takes several times its size in memory, so a 1 GB
# file would cost gigabytes before anything could be checked. A char vocabulary of every Unicode character
# (1.1M of them, itos and stoi) is about 25 MB; a training log takes ~100 bytes a step (GPT-2 124M's
# 600,000 steps: ~60 MB); resume.json holds a few numbers. JSON_LIMIT (files.py) bounds any other JSON file.
LOG_LIMIT = 256 << 20  # training_log.json
RESUME_LIMIT = 1 << 20  # resume.json
MAX_COUNTER = 2**63 - 1  # batch counters and steps feed numpy's 64-bit Philox counter and torch seeds


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        with readable_name(path, what) as name:
            return load_file(name)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated ({str(e)[:80]})") from None


def seal(stem: str | Path) -> None:
    """Write the manifest of checkpoint `stem`: name, size and sha256 of each of its files present."""
    stem = stem_of(stem)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in (path_of(stem, s) for s in FILES)
        if path.is_file()
    }
    write_json(path_of(stem, MANIFEST), {"format": FORMAT, "files": files})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verified(stem: Path, suffix: str, what: str) -> Path:
    """The file `suffix` of checkpoint `stem`, checked against the set's manifest when it has one."""
    path = path_of(stem, suffix)
    manifest_path = path_of(stem, MANIFEST)
    if not manifest_path.is_file():
        return path  # a set from before manifests, or copied without it: read as it is
    manifest = read_json(manifest_path, "checkpoint manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    entry = files.get(path.name) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        raise UserError(f"checkpoint {stem} is damaged: its manifest {manifest_path.name} does not list {path.name}")
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (its checkpoint's manifest lists it)")
    try:  # a file we may not read is unreadable, not damaged: say what the system said
        size = path.stat().st_size
        digest = _sha256(path) if size == entry.get("bytes") else None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if size != entry.get("bytes"):
        problem = f"{size:,} bytes, the manifest says {entry.get('bytes')}"
    elif digest != entry.get("sha256"):
        problem = "its sha256 differs from the manifest's"
    else:
        return path
    raise UserError(f"{what} {path} is corrupt or truncated ({problem}): the checkpoint is damaged")
