"""The presets (a model's shape and its recipe in one name, `--preset`), which one a device gets, and
`resolve`: the settings of a run are the defaults (or a checkpoint's), then the preset, then the typed flags.

A preset is a plain dict of ModelConfig/TrainConfig field values. Where a recipe comes from is said beside
it; its measurements are in BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import MODEL_FIELDS, TRAIN_FIELDS, ConfigError, ModelConfig, TrainConfig


# The small character-level recipes share nanoGPT's Shakespeare schedule (train_shakespeare_char.py):
_CHAR_SCHEDULE: dict[str, Any] = {
    "optimizer": "adamw",
    "grad_accum": 1,
    "learning_rate": 1e-3,
    "min_learning_rate": 1e-4,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "beta1": 0.9,
    "beta2": 0.99,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "validation_interval": 250,
    "eval_iters": 20,
}


# The recipe that reaches a validation loss soonest on cpu-small's shapes (BENCHMARKS.md, recipe search): Muon
# (lr 0.03, momentum 0.85) on the block matrices, AdamW lr 3e-3 on the rest, batch 24, a short warm-up, then WSD
# with the last half decaying to 0.1x. Batch 24 rather than nanoGPT's 12: a step of twice the tokens costs well
# under twice as much on a CPU (Muon's Newton-Schulz and the per-op overhead do not grow with it), and the run
# needs fewer than half the steps. Momentum 0.85 rather than torch's 0.95: a short run follows its gradient
# sooner. WSD rather than cosine: it did as well or better, and a resume that raises --steps before the decay
# goes on without a jump.
_MUON_RECIPE: dict[str, Any] = {
    "optimizer": "muon",
    "muon_learning_rate": 0.03,
    "muon_momentum": 0.85,
    "learning_rate": 3e-3,
    "min_learning_rate": 3e-4,
    "lr_schedule": "wsd",
    "decay_fraction": 0.5,
    "warmup_steps": 20,
    "batch_size": 24,
}
# baby-gpt's recipe on a GPU: Muon (lr 0.02, torch's momentum 0.95) on the block matrices, AdamW at nanoGPT's
# rates on the rest, WSD over half the steps. Not searched yet (no GPU was at hand): it is the one run measured on
# an H200 (issue 21), which reached a best validation loss of 1.43 by step 2250, below nanoGPT's 1.47 at 1750,
# and 2500 steps rather than 5000 because nanoGPT's recipe overfits after about 1750 (val 1.47 -> 1.68).
_BABY_GPT_MUON: dict[str, Any] = {
    "optimizer": "muon",
    "muon_learning_rate": 0.02,
    "muon_momentum": 0.95,
    "lr_schedule": "wsd",
    "decay_fraction": 0.5,
    "steps": 2500,
}


def _shape(n_layer: int, n_head: int, n_embd: int, block_size: int, dropout: float = 0.0) -> dict[str, Any]:
    return {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": block_size, "dropout": dropout}


# nanoGPT's own recipes of the presets that default to Muon.
_NANOGPT_RECIPES: dict[str, dict[str, Any]] = {
    # nanoGPT's README run on a CPU ("I only have a macbook"): its shapes, batch 12, 2000 iterations.
    "cpu-small": {**_CHAR_SCHEDULE, **_shape(4, 4, 128, 64), "batch_size": 12, "steps": 2000},
    # nanoGPT's config/train_shakespeare_char.py ("baby GPT"): 10.7M parameters.
    "baby-gpt": {**_CHAR_SCHEDULE, **_shape(6, 6, 384, 256, 0.2), "batch_size": 64, "steps": 5000, "eval_iters": 200},
}
_MUON_RECIPES: dict[str, dict[str, Any]] = {"cpu-small": _MUON_RECIPE, "baby-gpt": _BABY_GPT_MUON}
# What `--optimizer adamw` puts back on a preset that defaults to Muon: every setting its Muon recipe changed, at
# nanoGPT's value (batch, learning rates, warm-up, cosine, steps), so `--optimizer adamw` stays the like-for-like
# comparison with nanoGPT.
ADAMW_RECIPES: dict[str, dict[str, Any]] = {
    name: {k: _NANOGPT_RECIPES[name][k] for k in muon if k in _NANOGPT_RECIPES[name]}
    for name, muon in _MUON_RECIPES.items()
}


PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's "I only have a macbook" CPU shapes (README): ~0.8M parameters, val loss ~1.9 with its AdamW
    # recipe. The default on CPU, so it trains with the recipe searched on exactly these shapes (Muon + WSD,
    # batch 24); its 2000 steps stay, so a run compares step for step with nanoGPT's, and ends far lower.
    "cpu-small": {**_NANOGPT_RECIPES["cpu-small"], **_MUON_RECIPE},
    # nanoGPT's baby GPT (dropout 0.2), the default on CUDA, with Muon like cpu-small (_BABY_GPT_MUON).
    "baby-gpt": {**_NANOGPT_RECIPES["baby-gpt"], **_BABY_GPT_MUON},
    # The other presets keep the recipe of the project they come from until Muon is measured on their shapes
    # (the nanogpt-rusted and GPT-2 models are there to compare against; finetune starts from trained weights):
    # they are AdamW and cosine (constant for finetune).
    # nanogpt-rusted README's "618k parameter model" (char level).
    "618k": {**_CHAR_SCHEDULE, **_shape(3, 4, 128, 64), "batch_size": 32, "validation_batch": 32, "steps": 15000},
    # nanogpt-rusted README's "2.4M parameter model".
    "2.4m": {**_CHAR_SCHEDULE, **_shape(3, 8, 256, 128), "batch_size": 32, "validation_batch": 32, "steps": 20000},
    # GPT-2 small (124M) as in nanoGPT's train_gpt2.py: ~0.5M tokens per step via accumulation.
    "gpt2-124m": dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        dropout=0.0,
        bias=True,
        batch_size=12,
        grad_accum=40,
        steps=600000,
        learning_rate=6e-4,
        min_learning_rate=6e-5,
        lr_schedule="cosine",
        warmup_steps=2000,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        validation_interval=1000,
        eval_iters=200,
        log_interval=1,
        save_interval=1000,
    ),
    # nanoGPT's config/finetune_shakespeare.py: a few steps at a small constant learning rate from weights
    # given by --init-from (which fix the model's shape), 32 sequences a step through accumulation.
    "finetune": dict(
        dropout=0.0,
        batch_size=1,
        grad_accum=32,
        steps=20,
        learning_rate=3e-5,
        min_learning_rate=3e-5,
        lr_schedule="constant",
        warmup_steps=0,
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        grad_clip=1.0,
        validation_interval=5,
        eval_iters=40,
        log_interval=1,
    ),
}


def default_preset(device_type: str) -> str:
    """The preset used when the user names none and gives no size flags: small on CPU/MPS, baby-gpt on CUDA."""
    return "baby-gpt" if device_type == "cuda" else "cpu-small"


def resolve(
    overrides: dict[str, Any],
    preset: str | None = None,
    base: tuple[ModelConfig, TrainConfig] | None = None,
) -> tuple[ModelConfig, TrainConfig]:
    """Build (ModelConfig, TrainConfig): `base` (or the defaults), then `preset`, then explicit `overrides`.

    `overrides` maps field names (of either dataclass) to the values the user gave explicitly.
    Raises ConfigError for an unknown preset, an unknown field, or invalid values.
    """
    model_cfg, train_cfg = base if base is not None else (ModelConfig(), TrainConfig())
    values = {**preset_values(preset, overrides), **overrides}
    unknown = set(values) - MODEL_FIELDS - TRAIN_FIELDS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in values.items() if k in MODEL_FIELDS})
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in values.items() if k in TRAIN_FIELDS})
    model_cfg.validate()
    train_cfg.validate()
    return model_cfg, train_cfg


def preset_values(preset: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """What `preset` sets, given the flags typed: `--optimizer adamw` on a preset tuned for Muon puts back
    nanoGPT's recipe (ADAMW_RECIPES), not only the optimizer."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if overrides.get("optimizer") == "adamw" and preset in ADAMW_RECIPES:
        values.update(ADAMW_RECIPES[preset])  # nanoGPT's recipe, not the one tuned for Muon; typed flags win
    return values


def check_new_run(overrides: dict[str, Any], preset: str | None) -> None:
    """Refuse a new run's impossible settings (`--beta1 2`, a NaN learning rate) before data or torch is touched.

    The device, so the default preset, is not known yet: a setting is refused here only when it fails with
    every preset the run could get; `resolve` checks again once the device is known.
    """
    if preset is not None:
        candidates: list[str | None] = [preset]
    elif overrides.get("init_from"):
        candidates = ["finetune"]
    else:  # size flags change a default preset's shape and keep its recipe
        candidates = list(dict.fromkeys(default_preset(d) for d in ("cpu", "cuda")))
    errors = []
    for name in candidates:
        try:
            resolve(overrides, name)
            return
        except ConfigError as e:
            errors.append(e)
    raise errors[0]
