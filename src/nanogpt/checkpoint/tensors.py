"""The tensors of a checkpoint: the model's weights (the tied LM head stored once), their shapes checked
against a config, and the optimizer's state (AdamW moments, Muon momentum) by running parameter index."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..config import ModelConfig
from ..errors import UserError
from ..store.files import readable_name
from .store import read_tensors
TIED = ("lm_head.weight", "transformer.wte.weight")  # (dropped on save, kept)
# the dtypes of weights and optimizer state we save, or GPT-2 exports hold; another (an int, a bool, float64)
# would be cast by load_state_dict without a word
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- weights
def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a plain GPT with the tied LM head stored once (under transformer.wte.weight)."""
    state = dict(model.state_dict())
    dropped, kept = TIED
    if dropped in state and kept in state and state[dropped].data_ptr() == state[kept].data_ptr():
        del state[dropped]
    return state


def weights_mismatch(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> str | None:
    """What differs between the tensors a model expects and those given (names, then shapes); None if nothing."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        return (
            f"the weights do not match its config "
            f"(missing: {', '.join(missing[:3]) or '-'}; unexpected: {', '.join(unexpected[:3]) or '-'})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            return f"{name} has shape {tuple(tensor.shape)}, its config says {tuple(expected[name].shape)}"
    return None


def values_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """What makes tensors read from a file unfit to load, or None: a dtype we never save, or a value that is
    not finite (a NaN weight makes every logit NaN, and `generate` samples nothing but token 0). Checked after
    the shapes, so that no tensor is larger than what its file holds."""
    for name, tensor in tensors.items():
        if tensor.dtype not in FLOAT_DTYPES:
            return f"{name} is {str(tensor.dtype).removeprefix('torch.')}, not float32, bfloat16 or float16"
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or infinite values"
    return None


def weights_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The names and shapes in a safetensors file, and its metadata, from its header alone (no tensor read)."""
    if not path.is_file():
        raise UserError(f"checkpoint weights not found: {path}")
    try:
        with readable_name(path, "checkpoint weights") as name, safe_open(name, framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - not a dict
            return shapes, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint weights {path} are corrupt or truncated ({str(e)[:80]})") from None
_LAYER = re.compile(r"^transformer\.h\.(\d+)\.")


def sizes_of(shapes: Mapping[str, Sequence[int]]) -> dict[str, int] | None:
    """The ModelConfig sizes a GPT's tensor shapes fix (vocab_size, n_embd, block_size, n_layer), or None when
    they have no 2-D token and position embeddings. A config compared with these before a model is built
    builds one the size of the tensors, which their file bounds."""
    wte, wpe = shapes.get("transformer.wte.weight"), shapes.get("transformer.wpe.weight")
    if wte is None or wpe is None or len(wte) != 2 or len(wpe) != 2:
        return None
    layers = {int(m.group(1)) for name in shapes if (m := _LAYER.match(name))}
    return {"vocab_size": wte[0], "n_embd": wte[1], "block_size": wpe[0], "n_layer": len(layers)}


def check_config_fits_weights(model_cfg: ModelConfig, path: Path, step: int | None = None) -> None:
    """UserError unless the sizes in a checkpoint's config are those of its weights file.

    Checked before a model is built: the config is a small text file anyone can edit, and `"n_layer":
    1000000` would otherwise allocate gigabytes before load_weights could compare names and shapes. The
    weights file's header is bounded by the file (safetensors refuses a header whose tensors overrun it),
    so once vocab_size, n_embd, block_size and n_layer agree with it, the model built is the size of the
    file; load_weights then checks every name and shape. With `step`, the step the weights file records
    (save writes it) must be that one too.
    """
    header, metadata = weights_header(path)
    if step is not None and metadata.get("step", str(step)) != str(step):
        raise UserError(
            f"checkpoint weights {path} are of step {metadata['step'][:20]}, its config says {step}: "
            "files of two checkpoints"
        )
    found = sizes_of(header)
    if found is None:
        raise UserError(f"checkpoint weights {path} are not a GPT's (no token and position embeddings)")
    for name, value in found.items():
        if getattr(model_cfg, name) != value:
            raise UserError(
                f"checkpoint config says {name} {getattr(model_cfg, name)}, but its weights {path} have "
                f"{value}: the config was edited or belongs to other weights"
            )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a weights file into `model`; UserError if names or shapes do not match its config."""
    state = read_tensors(path, "checkpoint weights")
    dropped, kept = TIED
    if dropped not in state and kept in state:
        state[dropped] = state[kept]
    problem = weights_mismatch(model.state_dict(), state) or values_problem(state)
    if problem:
        raise UserError(f"checkpoint weights {path}: {problem}")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------- optimizer state
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors (`optim.<index>.<name>`)."""
    out: dict[str, torch.Tensor] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"optim.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out
ADAM_STATE = frozenset({"step", "exp_avg", "exp_avg_sq"})  # what torch's Adam and AdamW keep per parameter


def _incomplete(groups: list[dict[str, Any]], state: dict[int, dict[str, torch.Tensor]]) -> str | None:
    """What is missing from a saved optimizer state, or None: all or nothing, since the optimizer would
    silently start a parameter without saved moments from zero. Within a group every parameter keeps the
    same entries; an Adam group's are ADAM_STATE."""
    for group in groups:
        names = {frozenset(state.get(i, {})) for i in group["params"]}
        lacking = next((i for i in group["params"] if i not in state), None)
        if lacking is not None:
            return f"none for parameter {lacking}"
        if len(names) > 1:
            return "not the same entries for each parameter of a group"
        if "betas" in group and not ADAM_STATE <= next(iter(names), ADAM_STATE):
            return f"AdamW's {', '.join(sorted(ADAM_STATE - next(iter(names))))} missing"
    return None


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    tensors: dict[str, torch.Tensor],
    place: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Restore the per-parameter state saved by `optimizer_tensors`; hyper-parameters stay as they are.
    `place(value, parameter)`: what to load for a parameter's state tensor of its shape (its shard, for a
    sharded parameter); by default the value itself."""
    current = optimizer.state_dict()
    n_params = sum(len(g["params"]) for g in current["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        try:
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        except ValueError:
            raise UserError(f"optimizer state has an unexpected entry {key!r}") from None
    problem = values_problem(tensors)
    if problem:
        raise UserError(f"optimizer state {problem}")
    if state and (max(state) >= n_params or min(state) < 0):
        raise UserError("optimizer state does not match the model (different parameter count)")
    if state:
        problem = _incomplete(current["param_groups"], state)
        if problem:
            raise UserError(f"optimizer state is incomplete ({problem}): a resume would not be exact")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for index, entries in state.items():
        for name, value in entries.items():
            if value.dim() > 0 and value.shape != params[index].shape:
                raise UserError(
                    f"optimizer state {name} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the model's is {tuple(params[index].shape)}"
                )
            if place is not None and value.dim() > 0:
                entries[name] = place(value, params[index])
    current["state"] = state
    try:
        optimizer.load_state_dict(current)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"optimizer state does not match the model: {str(e)[:80]}") from None
