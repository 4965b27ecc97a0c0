"""Writing a checkpoint set as one unit: its five files, then the manifest; on failure nothing is left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..store.atomic import write_failure
from ..config import ModelConfig, TrainConfig, to_dict
from ..errors import UserError
from .store import FORMAT, MANIFEST, SUFFIXES, path_of, seal, write_json, write_tensors
from .tensors import model_tensors


# The order a save writes a set's files in; a failed or interrupted save removes what it wrote in reverse, and
# so does runs.remove_set. Whatever a kill leaves of a set is therefore its first few files without
# config.json: runs.remove_leftovers removes exactly that and nothing else named like a set.
WRITE_ORDER = (".resume.safetensors", ".resume.json", ".safetensors", ".training_log.json", ".config.json", MANIFEST)


# ----------------------------------------------------------------------------- whole checkpoints
def save(
    stem: Path,
    *,
    step: int,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokenizer_meta: dict[str, Any],
    log: list[dict[str, Any]],
    optimizer_tensors: dict[str, torch.Tensor],
    resume_state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
    lineage: list[dict[str, Any]] | None = None,
) -> tuple[str, ...]:
    """Write checkpoint `stem` as one unit (its five files in WRITE_ORDER, then the manifest); returns the paths.

    `weights`: the tensors to save as the model's (a sharded model's, gathered whole) instead of `model`'s own.
    UserError when a file of `stem` exists already (a set is never replaced) or a file cannot be written
    (e.g. a full disk); then, as on a Ctrl-C, the files written so far are removed: the set is whole or absent.
    """
    stem = Path(stem)
    taken = [p for p in (path_of(stem, s) for s in SUFFIXES) if p.exists()]
    if taken:
        raise UserError(f"checkpoint {stem} exists already ({taken[0].name}); a run never replaces a checkpoint")
    config = {
        "format": FORMAT,
        "step": step,
        "model": to_dict(model_cfg),
        "train": to_dict(train_cfg),
        "tokenizer": tokenizer_meta,
    }
    if lineage:  # how the weights came to be (lineage.py); the first start's preset and changes, for `runs`
        config.update(preset=lineage[0].get("preset"), changed=lineage[0].get("changed"), lineage=lineage)
    contents: dict[str, tuple[Any, ...]] = {
        ".resume.safetensors": (write_tensors, optimizer_tensors, {"format": "nanogpt-resume"}),
        ".resume.json": (write_json, {"format": FORMAT, "step": step, **resume_state}),
        ".safetensors": (
            write_tensors, model_tensors(model) if weights is None else weights, {"format": "pt", "step": str(step)}
        ),
        ".training_log.json": (write_json, log),
        ".config.json": (write_json, config),
    }
    written: list[Path] = []
    try:
        for suffix in WRITE_ORDER:
            written.append(path_of(stem, suffix))  # before writing: the file did not exist, so removing it is safe
            if suffix == MANIFEST:
                seal(stem)
            else:
                write, *args = contents[suffix]
                write(written[-1], *args)
    except BaseException as e:
        for path in reversed(written):
            path.unlink(missing_ok=True)
        reason = write_failure(e)
        if reason is not None:
            raise UserError(f"cannot write checkpoint {stem}: {reason}") from None
        raise
    return tuple(str(p) for p in written)

