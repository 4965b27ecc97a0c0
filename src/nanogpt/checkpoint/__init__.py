"""Checkpoint files: atomic writes, validated reads, no pickle.

A checkpoint `STEM` (e.g. `out/model_step_500`, the state after 500 optimizer steps) is one set of files:
`STEM.safetensors` (the plain GPT's weights, the tied LM head stored once as GPT-2 does), `STEM.config.json`
(format, step, ModelConfig, TrainConfig and the full vocabulary: self-contained), `STEM.training_log.json`,
`STEM.resume.safetensors` (optimizer state) and `STEM.resume.json` (step, batch counter, seed, world size),
sealed last by `STEM.manifest.json` (size and sha256 of each). A set is whole or absent, and a reader checks
each file against the manifest, so a damaged or mixed set is refused in one line naming the file.
The modules, by job: store (names, file I/O, the manifest), tensors, writing (`save`), reading (`read`,
`load_model`).
"""

from .store import (
    FILES,
    FORMAT,
    MANIFEST,
    SUFFIXES,
    read_json,
    read_tensors,
    seal,
    stem_for,
    stem_of,
    weights_path,
    write_json,
    write_tensors,
)
from .reading import Checkpoint, configs, load_model, read, read_log, read_meta, read_resume, world_size_of
from .tensors import (
    FLOAT_DTYPES,
    TIED,
    check_config_fits_weights,
    load_optimizer,
    load_weights,
    model_tensors,
    optimizer_tensors,
    sizes_of,
    values_problem,
    weights_header,
    weights_mismatch,
)
from .writing import WRITE_ORDER, save

__all__ = [
    "FILES", "FLOAT_DTYPES", "FORMAT", "MANIFEST", "SUFFIXES", "TIED", "Checkpoint", "check_config_fits_weights",
    "configs", "load_model", "load_optimizer", "load_weights", "model_tensors", "optimizer_tensors", "read",
    "read_json", "read_log", "read_meta", "read_resume", "read_tensors", "save", "seal", "sizes_of", "stem_for",
    "stem_of", "values_problem", "weights_header", "weights_mismatch", "weights_path", "world_size_of", "write_json",
    "write_tensors", "WRITE_ORDER",
]
