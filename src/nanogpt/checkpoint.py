"""Checkpoint files: atomic writes, validated reads, no pickle.

A checkpoint `STEM` (e.g. `out/model_step_500`) is the state after 500 optimizer steps, in five files:

- `STEM.safetensors`          the weights of the plain (uncompiled, unwrapped) GPT; the LM head is tied to
                               `transformer.wte.weight` and stored once, under that name, as GPT-2 does;
- `STEM.config.json`          {"format", "step", "model": ModelConfig, "train": TrainConfig,
                               "tokenizer": vocab.json's dict with the full vocabulary} - self-contained;
- `STEM.training_log.json`    [{step, loss, duration_ms, validation_loss?}, ...] for the whole run so far;
- `STEM.resume.safetensors`   optimizer moments (`optim.<param index>.<name>`) for exact resume;
- `STEM.resume.json`          step, batch counter, seed and anything else the engine needs to continue;
- `STEM.manifest.json`        written last: the name, size and sha256 of each of the five files.

A set is one unit. `save` never replaces an existing file of a set, and on any failure (a full disk, a second
Ctrl-C) removes what it wrote, so a set is whole or absent; a `kill -9` can leave a set without its manifest,
which the next run in that folder removes (runs.py). A reader checks each file it reads against the manifest,
so a set that was damaged or mixed with another's files (flipped bytes, a file copied over) is refused in one
line naming the file. A set without a manifest (written before manifests existed, or copied without it) is
read as it is, unverified.

For a resume: `read(stem) -> Checkpoint`, every file but the weights read and checked once.
For generation: `load_model(stem, device) -> (GPT in eval mode, meta)` where meta is the config.json dict
(`meta["tokenizer"]` feeds `tokenizers.from_meta`). `stem` may also be the path of the .safetensors file.
Every reading function raises UserError with one line for a missing, corrupt or truncated file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .config import ModelConfig, TrainConfig, from_dict, to_dict
from .errors import UserError
from .files import JSON_LIMIT, check_size

FORMAT = 1
TIED = ("lm_head.weight", "transformer.wte.weight")  # (dropped on save, kept)
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


def _file(stem: Path, suffix: str) -> Path:
    return stem.with_name(stem.name + suffix)


# ----------------------------------------------------------------------------- atomic writes
def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (tensors are copied to contiguous CPU memory first)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


# ----------------------------------------------------------------------------- validated reads
# The most a JSON file we read may hold. Parsed JSON takes several times its size in memory, so a 1 GB
# file would cost gigabytes before anything could be checked. A char vocabulary of every Unicode character
# (1.1M of them, itos and stoi) is about 25 MB; a training log takes ~100 bytes a step (GPT-2 124M's
# 600,000 steps: ~60 MB); resume.json holds a few numbers. JSON_LIMIT (files.py) bounds any other JSON file.
LOG_LIMIT = 256 << 20  # training_log.json
RESUME_LIMIT = 1 << 20  # resume.json
MAX_COUNTER = 2**63 - 1  # batch counters and steps feed numpy's 64-bit Philox counter and torch seeds


def read_json(path: Path, what: str, limit: int = JSON_LIMIT) -> Any:
    """A JSON file, at most `limit` bytes; UserError with one line when missing, too large or corrupt."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    check_size(path, what, limit)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"{what} {path} is corrupt or truncated ({type(e).__name__}: {str(e)[:80]})"
        ) from None


def read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{what} {path} is corrupt or truncated ({str(e)[:80]})") from None


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


def weights_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """The names and shapes in a safetensors file, and its metadata, from its header alone (no tensor read)."""
    if not path.is_file():
        raise UserError(f"checkpoint weights not found: {path}")
    try:
        with safe_open(path, framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 - not a dict
            return shapes, f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"checkpoint weights {path} are corrupt or truncated ({str(e)[:80]})") from None


_LAYER = re.compile(r"^transformer\.h\.(\d+)\.")


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
    wte, wpe = header.get("transformer.wte.weight"), header.get("transformer.wpe.weight")
    if wte is None or wpe is None or len(wte) != 2 or len(wpe) != 2:
        raise UserError(f"checkpoint weights {path} are not a GPT's (no token and position embeddings)")
    layers = {int(m.group(1)) for name in header if (m := _LAYER.match(name))}
    found = {"vocab_size": wte[0], "n_embd": wte[1], "block_size": wpe[0], "n_layer": len(layers)}
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
    problem = weights_mismatch(model.state_dict(), state)
    if problem:
        raise UserError(f"checkpoint weights {path}: {problem}")
    model.load_state_dict(state)


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
    taken = [p for p in (_file(stem, s) for s in SUFFIXES) if p.exists()]
    if taken:
        raise UserError(f"checkpoint {stem} exists already ({taken[0].name}); a run never replaces a checkpoint")
    written: list[Path] = []

    def put(suffix: str, write: Any, *args: Any) -> None:
        written.append(_file(stem, suffix))  # before writing: the file did not exist, so removing it is safe
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
        written.append(_file(stem, MANIFEST))
        seal(stem)
    except BaseException as e:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(e, (OSError, SafetensorError)):
            raise UserError(f"cannot write checkpoint {stem}: {_write_failure(e)}") from None
        raise
    return tuple(str(p) for p in written)


def _write_failure(error: BaseException) -> str:
    """The reason in an OSError, or in safetensors' own error (not an OSError: it names the errno in its text)."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    found = re.search(r"os error (\d+)|code: (\d+)", str(error))
    return os.strerror(int(found.group(1) or found.group(2))) if found else str(error)[:120]


def seal(stem: str | Path) -> None:
    """Write the manifest of checkpoint `stem`: name, size and sha256 of each of its files present."""
    stem = stem_of(stem)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in (_file(stem, s) for s in FILES)
        if path.is_file()
    }
    write_json(_file(stem, MANIFEST), {"format": FORMAT, "files": files})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(stem: Path, suffix: str, what: str) -> Path:
    """The file `suffix` of checkpoint `stem`, checked against the set's manifest when it has one."""
    path = _file(stem, suffix)
    manifest_path = _file(stem, MANIFEST)
    if not manifest_path.is_file():
        return path  # a set from before manifests, or copied without it: read as it is
    manifest = read_json(manifest_path, "checkpoint manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    entry = files.get(path.name) if isinstance(files, dict) else None
    if not isinstance(entry, dict):
        raise UserError(f"checkpoint {stem} is damaged: its manifest {manifest_path.name} does not list {path.name}")
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (its checkpoint's manifest lists it)")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        problem = f"{size:,} bytes, the manifest says {entry.get('bytes')}"
    elif _sha256(path) != entry.get("sha256"):
        problem = "its sha256 differs from the manifest's"
    else:
        return path
    raise UserError(f"{what} {path} is corrupt or truncated ({problem}): the checkpoint is damaged")


def read_meta(stem: str | Path) -> dict[str, Any]:
    """The config.json of a checkpoint, checked: {"step", "model", "train", "tokenizer", ...}."""
    stem = stem_of(stem)
    path = _file(stem, ".config.json")
    if not path.is_file() and not _file(stem, ".safetensors").is_file():
        raise UserError(f"checkpoint not found: {stem} (expected {stem}.safetensors and {path.name})")
    meta = read_json(_verified(stem, ".config.json", "checkpoint config"), "checkpoint config")
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(k), dict) for k in ("model", "train", "tokenizer")
    ):
        raise UserError(f"checkpoint config {path} is not a nanogpt checkpoint config")
    if not _is_count(meta.get("step")):
        raise UserError(f"checkpoint config {path} has no step (a whole number >= 0)")
    return meta


def _is_count(value: Any) -> bool:
    """A whole number in [0, MAX_COUNTER] (JSON's true is not one, nor 2.0, nor 10**30)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNTER


def configs(meta: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The ModelConfig and TrainConfig stored in a checkpoint's config.json."""
    try:
        model_cfg = from_dict(ModelConfig, meta["model"])
        train_cfg = from_dict(TrainConfig, meta["train"])
        model_cfg.validate()
    except (TypeError, ValueError, UserError) as e:  # UserError: config.ConfigError, a value of the wrong type
        raise UserError(f"checkpoint config has invalid settings: {e}") from None
    return model_cfg, train_cfg


def read_log(stem: str | Path) -> list[dict[str, Any]]:
    """The training log saved with a checkpoint."""
    stem = stem_of(stem)
    path = _verified(stem, ".training_log.json", "training log")
    log = read_json(path, "training log", LOG_LIMIT)
    if not isinstance(log, list):
        raise UserError(f"training log {path} is not a list of steps")
    for i, entry in enumerate(log):
        numbers = [entry.get(k) for k in ("loss", "duration_ms", "validation_loss") if k in entry] if isinstance(
            entry, dict
        ) else []
        if not (isinstance(entry, dict) and _is_count(entry.get("step")) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers
        )):
            raise UserError(f"training log {path}: entry {i} is not a step with numbers ({repr(entry)[:60]})")
    return log


def read_resume(stem: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The resume state (JSON) and optimizer tensors of a checkpoint."""
    stem = stem_of(stem)
    path = _verified(stem, ".resume.json", "resume state")
    state = read_json(path, "resume state", RESUME_LIMIT)
    if not isinstance(state, dict) or not _is_count(state.get("step")):
        raise UserError(f"resume state {path} is invalid (no step, a whole number >= 0)")
    return state, read_tensors(_verified(stem, ".resume.safetensors", "optimizer state"), "optimizer state")


def world_size_of(stem: str | Path) -> int:
    """The processes that trained checkpoint `stem` (1 when its resume state is missing or says nothing)."""
    path = _file(stem_of(stem), ".resume.json")
    state = read_json(path, "resume state", RESUME_LIMIT) if path.is_file() else {}
    world = state.get("world_size", 1) if isinstance(state, dict) else 1
    return world if _is_count(world) and world >= 1 else 1


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
    if not _is_count(counter) or counter < step:
        # every step draws at least one micro-batch
        return f"batch_counter {repr(counter)[:40]} is not a whole number between the step ({step}) and 2**63"
    world = state.get("world_size", 1)
    if not _is_count(world) or world < 1:
        return f"world_size {repr(world)[:40]} is not a whole number >= 1"
    if "seed" in state and state["seed"] != train_cfg.seed:
        return f"its seed {repr(state['seed'])[:40]} is not the config's {train_cfg.seed}"
    if not isinstance(state.get("scaler") or {}, dict):
        return "its scaler state is not a dict"
    if step > 0 and n_tensors == 0:
        return "the optimizer state holds no moments although the model has trained (a resume would not be exact)"
    return None


def weights_path(stem: str | Path) -> Path:
    return _file(stem_of(stem), ".safetensors")


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

    @property
    def weights(self) -> Path:
        return weights_path(self.stem)


def read(stem: str | Path) -> Checkpoint:
    """Read and check checkpoint `stem` (or any of its files) for a resume; UserError if anything is off."""
    stem = stem_of(stem)
    model_cfg, train_cfg = configs(meta := read_meta(stem))
    # whole and of this set (the manifest) before its header is read; its tensors load later, in the Trainer
    _verified(stem, ".safetensors", "checkpoint weights")
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
    )


def load_model(stem: str | Path, device: torch.device | str = "cpu"):
    """Load a checkpoint for inference: (GPT in eval mode on `device`, meta = its config.json dict)."""
    from .model import GPT  # here, so that reading configs does not build models

    meta = read_meta(stem)
    model_cfg, _ = configs(meta)
    weights = _verified(stem_of(stem), ".safetensors", "checkpoint weights")
    check_config_fits_weights(model_cfg, weights)
    model = GPT(model_cfg)
    load_weights(model, weights)
    model.to(device)
    model.eval()
    return model, meta


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


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore the per-parameter state saved by `optimizer_tensors`; hyper-parameters stay as they are."""
    current = optimizer.state_dict()
    n_params = sum(len(g["params"]) for g in current["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        try:
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        except ValueError:
            raise UserError(f"optimizer state has an unexpected entry {key!r}") from None
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
    current["state"] = state
    try:
        optimizer.load_state_dict(current)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"optimizer state does not match the model: {str(e)[:80]}") from None
