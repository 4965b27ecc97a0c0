"""Writing a checkpoint set as one unit: its five files, then the manifest; on failure nothing is left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import write_failure
from ..config import ModelConfig, TrainConfig, to_dict
from ..errors import UserError
from .store import FORMAT, MANIFEST, SUFFIXES, path_of, seal, write_json, write_tensors
from .tensors import model_tensors


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
) -> tuple[str, ...]:
    """Write checkpoint `stem` as one unit (its five files, then the manifest); returns the paths.

    UserError when a file of `stem` exists already (a set is never replaced) or a file cannot be written
    (e.g. a full disk); then, as on a Ctrl-C, the files written so far are removed: the set is whole or absent.
    """
    stem = Path(stem)
    taken = [p for p in (path_of(stem, s) for s in SUFFIXES) if p.exists()]
    if taken:
        raise UserError(f"checkpoint {stem} exists already ({taken[0].name}); a run never replaces a checkpoint")
    written: list[Path] = []

    def put(suffix: str, write: Any, *args: Any) -> None:
        written.append(path_of(stem, suffix))  # before writing: the file did not exist, so removing it is safe
        write(written[-1], *args)

    try:
        put(".resume.safetensors", write_tensors, optimizer_tensors, {"format": "nanogpt-resume"})
        put(".resume.json", write_json, {"format": FORMAT, "step": step, **resume_state})
        put(".safetensors", write_tensors, model_tensors(model), {"format": "pt", "step": str(step)})
        put(".training_log.json", write_json, log)
        config = {
            "format": FORMAT,
            "step": step,
            "model": to_dict(model_cfg),
            "train": to_dict(train_cfg),
            "tokenizer": tokenizer_meta,
        }
        put(".config.json", write_json, config)
        written.append(path_of(stem, MANIFEST))
        seal(stem)
    except BaseException as e:
        for path in written:
            path.unlink(missing_ok=True)
        reason = write_failure(e)
        if reason is not None:
            raise UserError(f"cannot write checkpoint {stem}: {reason}") from None
        raise
    return tuple(str(p) for p in written)

