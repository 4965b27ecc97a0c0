"""Reading a checkpoint: its config, log and resume state, each checked, for a resume (`read`) or for
inference (`load_model`)."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import MAX_WORLD_SIZE, ModelConfig, TrainConfig, from_dict
from ..errors import UserError
from ..tokenizers import from_meta
from .store import (
    LOG_LIMIT,
    MAX_COUNTER,
    RESUME_LIMIT,
    path_of,
    read_json,
    read_tensors,
    stem_of,
    verified,
    weights_path,
)
from .tensors import check_config_fits_weights, load_weights


def read_meta(stem: str | Path) -> dict[str, Any]:
    """The config.json of a checkpoint, checked: {"step", "model", "train", "tokenizer", ...}."""
    stem = stem_of(stem)
    path = path_of(stem, ".config.json")
    if not path.is_file() and not path_of(stem, ".safetensors").is_file():
        raise UserError(f"checkpoint not found: {stem} (expected {stem}.safetensors and {path.name})")
    meta = read_json(verified(stem, ".config.json", "checkpoint config"), "checkpoint config")
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), dict) for k in ("model", "train", "tokenizer")
    ):
        raise UserError(f"checkpoint config {path} is not a nanogpt checkpoint config")
    if not is_count(meta.get("step")):
        raise UserError(f"checkpoint config {path} has no step (a whole number >= 0)")
    return meta


def is_count(value: Any) -> bool:
    """A whole number in [0, MAX_COUNTER] (JSON's true is not one, nor 2.0, nor 10**30)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER


def configs(meta: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The ModelConfig and TrainConfig stored in a checkpoint's config.json."""
    try:
        model_cfg = from_dict(ModelConfig, meta["model"])
        train_cfg = from_dict(TrainConfig, meta["train"])
        model_cfg.validate()
        train_cfg.validate()  # the checks flags go through: a file has not been through argparse's choices
    except (TypeError, ValueError, UserError) as e:  # UserError: config.ConfigError, a value of the wrong type
        raise UserError(f"checkpoint config has invalid settings: {e}") from None
    return model_cfg, train_cfg


def read_log(stem: str | Path) -> list[dict[str, Any]]:
    """The training log saved with a checkpoint."""
    stem = stem_of(stem)
    path = verified(stem, ".training_log.json", "training log")
    log = read_json(path, "training log", LOG_LIMIT)
    if not isinstance(log, list):
        raise UserError(f"training log {path} is not a list of steps")
    for i, entry in enumerate(log):
        problem = _log_entry_problem(entry)
        if problem:
            raise UserError(f"training log {path}: entry {i} {problem} ({repr(entry)[:60]})")
    return log


# Every field of a log entry that anything reads (the UI's history and --compare, plot, the overfitting rule,
# a resume), and what it must hold: checked here once, so no reader meets a string where it wants a number.
LOG_NUMBERS = ("loss", "duration_ms", "grad_norm", "validation_loss", "validation_bpb")
LOG_TABLES = ("source_validation_losses", "source_validation_bpb")  # source name -> number


def _log_entry_problem(entry: Any) -> str | None:
    """Why `entry` is not a training log entry, or None."""
    def number(value: Any) -> bool:  # one a float holds (NaN and inf too: json reads them): readers convert
        return isinstance(value, float) or type(value) is int and abs(value) <= sys.float_info.max

    if not isinstance(entry, dict) or not is_count(entry.get("step")):
        return "is not a step"
    for key in LOG_NUMBERS:
        if key in entry and not number(entry[key]):
            return f"has a {key} that is not a number"
    for key in LOG_TABLES:
        table = entry.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(k, str) and number(v) for k, v in table.items()):
            return f"has a {key} that is not a table of source names and numbers"
    if not isinstance(entry.get("sample", ""), str):
        return "has a sample that is not text"
    return None


def read_resume(stem: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The resume state (JSON) and optimizer tensors of a checkpoint."""
    stem = stem_of(stem)
    path = verified(stem, ".resume.json", "resume state")
    state = read_json(path, "resume state", RESUME_LIMIT)
    if not isinstance(state, dict) or not is_count(state.get("step")):
        raise UserError(f"resume state {path} is invalid (no step, a whole number >= 0)")
    return state, read_tensors(verified(stem, ".resume.safetensors", "optimizer state"), "optimizer state")


def world_size_of(stem: str | Path) -> int:
    """The processes that trained checkpoint `stem` (1 when its resume state is missing or says nothing)."""
    path = path_of(stem_of(stem), ".resume.json")
    state = read_json(path, "resume state", RESUME_LIMIT) if path.is_file() else {}
    world = state.get("world_size", 1) if isinstance(state, dict) else 1
    return world if is_world_size(world) else 1


def is_world_size(value: Any) -> bool:
    """A number of processes a run can have had: a whole number in [1, MAX_WORLD_SIZE]."""
    return is_count(value) and 1 <= value <= MAX_WORLD_SIZE


def _resume_problem(state: dict[str, Any], meta: dict[str, Any], train_cfg: TrainConfig, n_tensors: int) -> str | None:
    """What in a resume state disagrees with itself or with the checkpoint's config, or None.

    A resume is exact only if all of it holds: a wrong step moves the learning-rate schedule (a negative
    one trains at a negative rate), a wrong batch counter replays or skips data, and missing optimizer
    moments would silently restart AdamW from zero.
    """
    step = state["step"]
    if step != meta["step"]:
        return f"its step {step} is not the config's {meta['step']} (files of two checkpoints?)"
    counter = state.get("batch_counter", 0)
    if not is_count(counter) or counter < step:
        # every step draws at least one micro-batch
        return f"batch_counter {repr(counter)[:40]} is not a whole number between the step ({step}) and 2**63"
    world = state.get("world_size", 1)
    if not is_world_size(world):  # it sizes a resumed step: keep_effective_batch multiplies --grad-accum by it
        most = f"{MAX_WORLD_SIZE:,}"
        return f"world_size {repr(world)[:40]} is not a whole number >= 1 (a number of processes, at most {most})"
    if "seed" in state and state["seed"] != train_cfg.seed:
        return f"its seed {repr(state['seed'])[:40]} is not the config's {train_cfg.seed}"
    scaler = _scaler_problem(state.get("scaler"))
    if scaler:
        return f"its scaler state {scaler}"
    if step > 0 and n_tensors == 0:
        return "the optimizer state holds no moments although the model has trained (a resume would not be exact)"
    return None


def _scaler_problem(scaler: Any) -> str | None:
    """What keeps a float16 GradScaler's saved state from loading, or None (None or {}: trained without one).
    GradScaler.load_state_dict takes what its state_dict wrote unchecked: a missing entry is a KeyError, and
    a string scale fails deep in the first step."""
    if not scaler:
        return None
    if not isinstance(scaler, dict):
        return "is not a dict"
    for name in ("scale", "growth_factor", "backoff_factor"):
        value = scaler.get(name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
            return f"has {name} {repr(value)[:40]}, not a positive number"
    for name, low in (("growth_interval", 1), ("_growth_tracker", 0)):
        value = scaler.get(name)
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**31):  # an int32
            return f"has {name} {repr(value)[:40]}, not a whole number >= {low}"
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """What a resume needs from a checkpoint, read once (`read`); the weights stay in their file."""

    stem: Path
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    tokenizer: dict[str, Any]  # vocab.json's dict, as saved
    step: int  # optimizer steps done
    batch_counter: int  # global micro-batches consumed (over all ranks)
    world_size: int  # processes that trained it
    scaler: dict[str, Any] | None  # the float16 GradScaler's state
    log: list[dict[str, Any]]  # the training log up to `step`
    optimizer_tensors: dict[str, torch.Tensor]  # for load_optimizer
    lineage: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # lineage.py: how it came to be

    @property
    def weights(self) -> Path:
        return weights_path(self.stem)


def read(stem: str | Path) -> Checkpoint:
    """Read and check checkpoint `stem` (or any of its files) for a resume; UserError if anything is off."""
    stem = stem_of(stem)
    model_cfg, train_cfg = configs(meta := read_meta(stem))
    from_meta(meta["tokenizer"])  # UserError for a vocabulary that is not whole, before it is compared with the data
    # whole and of this set (the manifest) before its header is read; its tensors load later, in the Trainer
    verified(stem, ".safetensors", "checkpoint weights")
    check_config_fits_weights(model_cfg, weights_path(stem), meta["step"])
    state, tensors = read_resume(stem)
    problem = _resume_problem(state, meta, train_cfg, len(tensors))
    if problem:
        raise UserError(f"checkpoint {stem} cannot be resumed: {problem}")
    step = int(state["step"])
    return Checkpoint(
        stem=stem,
        model_cfg=model_cfg,
        train_cfg=train_cfg,
        tokenizer=meta["tokenizer"],
        step=step,
        batch_counter=int(state.get("batch_counter", 0)),
        world_size=int(state.get("world_size", 1)),
        scaler=state.get("scaler") or None,
        log=[e for e in read_log(stem) if e["step"] <= step],
        optimizer_tensors=tensors,
        lineage=[e for e in meta.get("lineage", []) if isinstance(e, dict)] if isinstance(meta.get("lineage"), list)
        else [],
    )


def load_model(stem: str | Path, device: torch.device | str = "cpu"):
    """Load a checkpoint for inference: (GPT in eval mode on `device`, meta = its config.json dict)."""
    from ..model import GPT  # here, so that reading configs does not build models

    meta = read_meta(stem)
    model_cfg, _ = configs(meta)
    weights = verified(stem_of(stem), ".safetensors", "checkpoint weights")
    check_config_fits_weights(model_cfg, weights)
    model = GPT(model_cfg)
    load_weights(model, weights)
    model.to(device)
    model.eval()
    return model, meta
