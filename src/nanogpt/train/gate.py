"""The gate: everything a run takes from outside is checked here, once, before anything costly is done.

`resolve_run` turns the flags typed (`overrides`), a preset, a checkpoint to resume (or a Hugging Face
model to start from), the dataset, the run folder and this process's options into one trusted `Run`: the
settings resolved and bounded (config.py), the checkpoint read and verified (checkpoint/), the data opened
(data.py), the folder placed (store/runs.py), the memory fit checked and only then the hardware resolved
(its `--dtype auto` probe builds the model and times a step, which an impossible size would hang in). The
readers it calls refuse what they read in one line (UserError); past this point the loop, the step, the
model and the data samplers trust what they are handed and check nothing again.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

from .. import checkpoint, config, data, lineage, presets, schedule, tokenizers
from ..checkpoint.store import MAX_COUNTER
from ..errors import UserError
from ..interop import hf_import
from ..runtime import distributed, fit, machine
from ..store import runs
from . import plan
from .step import lr_at

DATA_FIELDS = config.DATA_FIELDS
SCHEDULE_FIELDS = ("steps", "learning_rate", "min_learning_rate", "lr_schedule", "warmup_steps", "decay_fraction",
                   "schedule_steps")


class Run(NamedTuple):
    """A run resolved: its settings, data and hardware, what it starts from, and its time budget (--time)."""

    model_cfg: config.ModelConfig
    train_cfg: config.TrainConfig
    tokens: data.TokenData
    hardware: machine.Hardware
    saved: checkpoint.Checkpoint | None  # the checkpoint it resumes
    imported: hf_import.Imported | None  # the weights it starts from (--init-from)
    notes: list[str]  # for the user
    lineage: list[dict[str, Any]]  # how its weights came to be, this start last (lineage.py)
    budget: plan.Budget | None = None  # --time: the loop's clock


def resolve_run(
    overrides: dict[str, Any],
    preset: str | None = None,
    resume: str | None = None,
    options: machine.ProcessOptions | None = None,
) -> Run:
    """The run's settings, data and hardware (see setup.build_trainer); UserError for what the user got wrong.
    `options`: how this process runs (machine.ProcessOptions; by default from the environment)."""
    options = options if options is not None else machine.ProcessOptions.from_env()
    notes: list[str] = []
    saved = checkpoint.read(resume) if resume is not None else None
    model_cfg, train_cfg, preset = _settings(overrides, preset, saved)
    budget_s = plan.check_flags(train_cfg, set(overrides), resumed=saved is not None)
    if saved is not None and budget_s is not None:  # --resume-training RUN --time 5m: five more minutes
        saved, train_cfg, note = _extension(saved, train_cfg, budget_s)
        notes.append(note)
    imported = None  # weights to start from (--init-from); a resumed run has its own
    if saved is None and train_cfg.init_from:
        imported = hf_import.load_source(train_cfg.init_from)
        model_cfg = hf_import.take_architecture(model_cfg, imported, overrides)
    if saved is not None:
        train_cfg = _check_resume(saved, model_cfg, train_cfg, overrides, notes)
    history = _lineage(saved, preset, overrides, notes, imported.source if imported is not None else None)
    _check_counter_room(train_cfg, saved)
    # the run folder: a resume writes beside its checkpoint, and no run replaces another's files (runs.py)
    out_dir, note = runs.place(train_cfg.out_dir, typed="out_dir" in overrides,
                               resumed=saved.stem if saved is not None else None, step=saved.step if saved else 0)
    notes += [note] if note else []
    train_cfg, tokens = _open_data(dataclasses.replace(train_cfg, out_dir=out_dir))
    if saved is not None:
        _check_resume_vocabulary(saved, tokens)
    if imported is not None:
        hf_import.check_data(imported, tokens.meta, tokens.source)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tokens.vocab_size)
    # every check that can refuse the run comes before resolve_hardware: its `--dtype auto` probe builds this
    # model and times a step, which an impossible size would hang in or die of
    data.check_block_size(tokens, model_cfg.block_size)
    _check_fits(model_cfg, train_cfg)
    hardware = machine.resolve_hardware(model_cfg, train_cfg, options)  # after the vocabulary: the dtype probe needs it
    notes += [hardware.dtype_probe] if hardware.dtype_probe else []
    budget = None
    if budget_s is not None:
        if saved is None:  # the plan: shape, steps and evaluations for this budget, from measured step times
            # a model started from weights keeps their shape and context: the plan sizes only the rest
            typed = set(overrides) | (plan.SHAPE_FIELDS if imported is not None else set())
            model_cfg, train_cfg, hardware = _timed_plan(budget_s, model_cfg, train_cfg, tokens, hardware, typed,
                                                         options.reprobe_dtype, notes)
            _check_counter_room(train_cfg, saved)
        typed_interval = "validation_interval" in overrides or saved is not None
        most = plan.passes_steps(train_cfg, model_cfg, len(tokens.train), hardware.world_size)
        budget = plan.Budget(budget_s, saved.step if saved else 0, not typed_interval, most)
    notes += _shard_notes(model_cfg, train_cfg, hardware)
    if train_cfg.seed == 0:
        # under torchrun every rank must use rank 0's pick
        seed = distributed.broadcast_int(secrets.randbelow(2**31 - 1) + 1, hardware.device)
        train_cfg = dataclasses.replace(train_cfg, seed=seed)
        notes.append(f"seed 0: using random seed {seed} (pass --seed {seed} to repeat)")
    return Run(model_cfg, train_cfg, tokens, hardware, saved, imported, notes, history, budget)


def _timed_plan(budget_s: float, model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, tokens: data.TokenData,
                hardware: machine.Hardware, typed: set[str], reprobe: bool, notes: list[str]
                ) -> tuple[config.ModelConfig, config.TrainConfig, machine.Hardware]:
    """--time's plan (plan.fit), said in `notes`, with the hardware it trains on. `--dtype auto` measured the
    preset's step; the plan's may be faster in the other precision: then the plan is made again with step times in
    that one (cached per precision)."""
    planned = plan.fit(budget_s, model_cfg, train_cfg, tokens, hardware, typed, reprobe)
    # the preset's step was measured already (with --reprobe-dtype, measuring it again would only repeat that)
    other_step = (planned.model_cfg, planned.train_cfg.batch_size) != (model_cfg, train_cfg.batch_size)
    for_plan = machine.for_shape(hardware, planned.model_cfg, planned.train_cfg, reprobe) if other_step else hardware
    if (for_plan.dtype, for_plan.ns_dtype) != (hardware.dtype, hardware.ns_dtype):
        hardware = for_plan
        notes += [hardware.dtype_probe] if hardware.dtype_probe else []
        planned = plan.fit(budget_s, model_cfg, train_cfg, tokens, hardware, typed, reprobe)
    # a plan with dropout (rules.with_dropout) trains on one shard, as its probe timed it and as a resume will, in
    # the precision measured for that step: said here, as the preset's is
    if planned.hardware is not hardware and planned.hardware.dtype_probe:
        notes.append(planned.hardware.dtype_probe)
    notes.append(planned.line)
    return planned.model_cfg, planned.train_cfg, planned.hardware


def _check_fits(model_cfg: config.ModelConfig, train_cfg: config.TrainConfig) -> None:
    """The memory rule (fit.py) for this process's device; sharded when --shard is given under torchrun."""
    device = distributed.local_device(machine.resolve_device(train_cfg.device))
    shard = train_cfg.shard and distributed.under_torchrun()
    fit.check_fits(model_cfg, train_cfg, device, distributed.world_size(), shard=shard)


def _shard_notes(model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, hardware: machine.Hardware) -> list[str]:
    """What a sharded run holds per process; or that --shard without torchrun shards nothing."""
    if hardware.shard:
        return [fit.holding(model_cfg, train_cfg, hardware.world_size)]
    if train_cfg.shard:
        return ["note: --shard shards over the processes torchrun starts; one process alone trains unsharded"]
    return []


# ----------------------------------------------------------------------------- settings and resume checks
def _settings(
    overrides: dict[str, Any], preset: str | None, saved: checkpoint.Checkpoint | None
) -> tuple[config.ModelConfig, config.TrainConfig, str | None]:
    """Defaults (or the checkpoint's), then the preset, then the flags typed; and the preset applied. A new run
    that names none gets the device's default preset, size flags or not: `--layer-count 2` changes the shape
    and keeps the preset's recipe (optimizer, schedule, batch)."""
    base = (saved.model_cfg, saved.train_cfg) if saved is not None else None
    device = machine.resolve_device(overrides.get("device") or (saved.train_cfg.device if saved else "auto"))
    if saved is None and preset is None and overrides.get("init_from"):
        preset = "finetune"  # the weights fix the shape; the schedule is a fine-tune's
    if saved is None and preset is None:
        preset = presets.default_preset(device.type)
    if base is not None and any(k in overrides for k in DATA_FIELDS):
        # new data options replace the saved ones as a group (a new --data-dir drops the saved file paths)
        base = (base[0], dataclasses.replace(base[1], **{f: None for f in DATA_FIELDS}))
    resolved = presets.resolve(overrides, preset, base=base)
    if saved is not None and overrides.get("init_from"):
        raise UserError("--init-from starts a new run and --resume-training continues one: give only one")
    return (*resolved, preset)


def _lineage(
    saved: checkpoint.Checkpoint | None, preset: str | None, overrides: dict[str, Any], notes: list[str],
    imported: str | None,
) -> list[dict[str, Any]]:
    """The run's lineage: the checkpoint's, then this start (what was typed that differs from what it had)."""
    if saved is not None:
        before = {**config.to_dict(saved.model_cfg), **config.to_dict(saved.train_cfg)}
        changed = lineage.changed_from(overrides, before)
        return [*saved.lineage, lineage.entry("resume", at_step=saved.step, source=str(saved.stem), preset=None,
                                              changed=changed)]
    changed = lineage.changed_from(overrides, presets.preset_values(preset, overrides))
    start = "init-from" if overrides.get("init_from") else "new"
    return [lineage.entry(start, at_step=0, source=imported, preset=preset, changed=changed)]


def _check_resume(
    saved: checkpoint.Checkpoint,
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    overrides: dict[str, Any],
    notes: list[str],
) -> config.TrainConfig:
    """What a resume may not change (shape, optimizer, steps already done); the batch it keeps."""
    _check_resume_shape(saved.model_cfg, model_cfg, saved.stem)
    if train_cfg.optimizer != saved.train_cfg.optimizer:  # its saved state is the other optimizer's
        raise UserError(
            f"--optimizer {train_cfg.optimizer} conflicts with checkpoint {saved.stem}, trained with "
            f"{saved.train_cfg.optimizer} (a resumed run keeps its optimizer)"
        )
    # --grad-accum is per process: on another world size keep the checkpoint's effective batch
    train_cfg, note = keep_effective_batch(train_cfg, saved.train_cfg, saved.world_size, overrides, saved.stem)
    notes += [note] if note else []
    if train_cfg.steps <= saved.step:
        raise UserError(
            f"checkpoint {saved.stem} has done {saved.step} steps and --steps is {train_cfg.steps}: "
            f"give --steps above {saved.step} to train further"
        )
    train_cfg, note = _steps_extension(saved, train_cfg, overrides)
    note = note or _schedule_note(saved, train_cfg)
    notes += [note] if note else []
    return train_cfg


def _steps_extension(
    saved: checkpoint.Checkpoint, cfg: config.TrainConfig, overrides: dict[str, Any]
) -> tuple[config.TrainConfig, str | None]:
    """A finished run extended (a larger --steps, no other schedule flag typed) keeps the schedule it finished:
    it goes on at its last learning rate, where a re-stretched schedule would warm up or climb back to its peak."""
    old, done = saved.train_cfg, saved.step
    typed = any(f in overrides for f in SCHEDULE_FIELDS if f != "steps") or "time" in overrides  # --time: its own
    if typed or cfg.steps <= old.steps or done < (old.schedule_steps or old.steps):
        return cfg, None
    cfg = dataclasses.replace(cfg, schedule_steps=old.schedule_steps or old.steps)
    return cfg, (
        f"note: extending finished run {saved.stem} from step {done} to {cfg.steps}: the learning rate stays at its "
        f"last value, {lr_at(old, done - 1):.2e} (no new warm-up or decay; --schedule-steps {cfg.steps} stretches "
        "the schedule over the new length instead)"
    )


def _check_counter_room(train_cfg: config.TrainConfig, saved: checkpoint.Checkpoint | None) -> None:
    """The run's micro-batches must fit the 64-bit batch counter (it numbers the batches drawn, and is saved):
    a checkpoint whose counter has passed it could not be read back, so a run is refused before it starts."""
    step, counter = (saved.step, saved.batch_counter) if saved is not None else (0, 0)
    need = (train_cfg.steps - step) * train_cfg.grad_accum * distributed.world_size()
    if counter + need <= MAX_COUNTER:
        return
    done = f"checkpoint {saved.stem} has counted {counter:,} micro-batches and " if saved is not None else ""
    more = " more" if saved is not None else ""
    raise UserError(
        f"{done}--steps {train_cfg.steps:,} needs {need:,}{more} micro-batches, past the most a checkpoint can count "
        f"({MAX_COUNTER:,}); give fewer --steps"
    )


def _check_resume_shape(saved: config.ModelConfig, resolved: config.ModelConfig, stem: Path) -> None:
    for name in config.SHAPE_FIELDS:
        if name == "vocab_size":
            continue  # checked against the data separately
        if getattr(saved, name) != getattr(resolved, name):
            f = next(f for f in dataclasses.fields(config.ModelConfig) if f.name == name)
            raise UserError(
                f"{config.field_flag(f)} {getattr(resolved, name)} conflicts with checkpoint {stem}, "
                f"which has {getattr(saved, name)} (a resumed model keeps its shape)"
            )


def _check_resume_vocabulary(saved: checkpoint.Checkpoint, tokens: data.TokenData) -> None:
    vocab = saved.tokenizer
    # the kind, size, characters and (for a learned BPE) merges: another BPE of the same size is other ids
    if vocab.get("vocab_size") != tokens.vocab_size or not tokenizers.same_vocabulary(vocab, tokens.meta):
        raise UserError(
            f"the data's vocabulary ({tokens.source}) differs from checkpoint {saved.stem}'s "
            f"({vocab.get('vocab_size')} tokens): resume on data prepared with the same vocabulary"
        )


def keep_effective_batch(
    train_cfg: config.TrainConfig, saved: config.TrainConfig, saved_world: int, explicit: Collection[str], stem: Path
) -> tuple[config.TrainConfig, str | None]:
    """On resume with another number of processes, adjust --grad-accum to keep the effective batch.

    --grad-accum is per process (the effective batch is batch x grad_accum x world size), so a checkpoint
    saved by 8 processes x 1 resumes on 2 processes with 4 and on one device with 8. An explicit
    --grad-accum, or a --batch-size other than the saved one, wins; so does a world size that does not
    divide the saved batch (then the effective batch changes). Returns the settings and a note for the user.
    """
    world = distributed.world_size()
    if (
        saved_world == world
        or "grad_accum" in explicit
        or (train_cfg.batch_size, train_cfg.grad_accum) != (saved.batch_size, saved.grad_accum)
    ):
        return train_cfg, None
    sequences = saved.batch_size * saved.grad_accum * saved_world
    if (saved.grad_accum * saved_world) % world:
        return train_cfg, (
            f"note: checkpoint {stem} was trained with {sequences} sequences per step on {_procs(saved_world)}; "
            f"{world} processes cannot keep that with --batch-size {saved.batch_size}, "
            "so the effective batch "
            f"is now {saved.batch_size * saved.grad_accum * world}"
        )
    grad_accum = saved.grad_accum * saved_world // world
    if grad_accum > config.MAX_GRAD_ACCUM:
        raise UserError(
            f"checkpoint {stem} was trained on {_procs(saved_world)} x {saved.grad_accum} accumulation: keeping "
            f"its batch on {world} would take --grad-accum {grad_accum:,} (at most {config.MAX_GRAD_ACCUM:,}); "
            "give --grad-accum"
        )
    note = (
        f"note: checkpoint {stem} was trained on {_procs(saved_world)} x "
        f"{saved.grad_accum} accumulation; using --grad-accum {grad_accum} on {world} to keep its effective "
        f"batch of {sequences} sequences"
    )
    return dataclasses.replace(train_cfg, grad_accum=grad_accum), note


def _procs(n: int) -> str:
    return f"{n} process" + ("es" if n != 1 else "")


def _schedule_note(saved: checkpoint.Checkpoint, cfg: config.TrainConfig) -> str | None:
    """One line on what a resume that changes the schedule (a larger --steps, most often) does to the
    learning rate: its value at the last step done and at the next one. None when nothing changed."""
    old, done = saved.train_cfg, saved.step
    total = {"steps": (old.schedule_steps or old.steps, cfg.schedule_steps or cfg.steps)}  # what the rate follows
    values = {f: total.get(f, (getattr(old, f), getattr(cfg, f))) for f in SCHEDULE_FIELDS if f != "schedule_steps"}
    changed = [f for f, (a, b) in values.items() if a != b]
    if not changed or done == 0 or done >= cfg.steps:
        return None
    what = ", ".join(f"{config.flag_name(f)} {values[f][0]} -> {values[f][1]}" for f in changed)
    before, after = lr_at(old, done - 1), lr_at(cfg, done)
    note = (
        f"note: resuming with a new schedule ({what}): the learning rate was {before:.2e} at step {done} "
        f"and is {after:.2e} at step {done + 1}"
    )
    if cfg.lr_schedule == "wsd":
        start = schedule.decay_start(values["steps"][1], cfg.decay_fraction)
        note += f"; it decays linearly from step {max(start, done) + 1} to {values['steps'][1]}"
        if after > 1.1 * before:
            note += " (the checkpoint's decay had begun, so the rate climbs back up first)"
        return note
    if cfg.lr_schedule == "cosine":
        note += f"; the cosine is re-stretched to end at step {values['steps'][1]}"
        if abs(after - before) > 0.1 * before:
            note += " (a jump: --lr-schedule wsd extends a run smoothly until its decay has begun)"
    return note


def _extension(
    saved: checkpoint.Checkpoint, train_cfg: config.TrainConfig, budget_s: float
) -> tuple[checkpoint.Checkpoint, config.TrainConfig, str]:
    """`--resume-training RUN --time T`: the run trained T longer. A timed WSD run kept its last step before the
    decay (plan.Budget.keeps): the extension goes on from there at the stable rate for T, then decays over as many
    steps as the first decay had, so it lands on its lowest loss again. Without that checkpoint it goes on at the
    learning rate it ended on (no warm-up again)."""
    old = saved.train_cfg
    durations = sorted(e["duration_ms"] for e in saved.log[-50:] if isinstance(e.get("duration_ms"), (int, float)))
    step_ms = old.plan_step_ms or (durations[len(durations) // 2] if durations else None)
    if not step_ms or step_ms <= 0:
        raise UserError(f"checkpoint {saved.stem} has no step times to plan --time with: give --steps")
    more = plan.steps_in(budget_s, step_ms / 1000, train_cfg)
    start = schedule.decay_start(old.steps, old.decay_fraction)
    stable = saved.stem.parent / f"model_step_{start}"
    if old.lr_schedule == "wsd" and start < saved.step and Path(f"{stable}{checkpoint.MANIFEST}").is_file():
        saved = checkpoint.read(str(stable))
        total = start + more + (old.steps - start)
        cfg = dataclasses.replace(train_cfg, steps=total, decay_fraction=(old.steps - start) / total)
        return saved, cfg, (f"--time {train_cfg.time}: from {stable} (before its decay), {more:,} more steps at the "
                            f"stable rate, then the decay again, to step {total:,}")
    lr = lr_at(old, saved.step - 1)
    scale = lr / old.learning_rate
    cfg = dataclasses.replace(train_cfg, steps=saved.step + more, lr_schedule="constant", warmup_steps=0,
                              learning_rate=lr, min_learning_rate=min(old.min_learning_rate, lr),
                              muon_learning_rate=old.muon_learning_rate * scale)
    return saved, cfg, (f"--time {train_cfg.time}: {more:,} more steps at the learning rate {saved.stem} ended on "
                        f"({lr:.2e}, no warm-up again), to step {saved.step + more:,}")


# ----------------------------------------------------------------------------- building the parts
def _open_data(train_cfg: config.TrainConfig) -> tuple[config.TrainConfig, data.TokenData]:
    """Open the dataset the config names, with absolute paths in the config to save (so that a resume from
    another folder finds the same data)."""
    given = {f: getattr(train_cfg, f) for f in DATA_FIELDS if getattr(train_cfg, f) is not None}
    absolute = {f: str(Path(value).absolute()) for f, value in given.items()}
    train_cfg = dataclasses.replace(train_cfg, **absolute)
    tokens = data.load(
        train_cfg.data_dir, train_cfg.training_dataset, train_cfg.validation_dataset, train_cfg.vocab_metadata
    )
    return train_cfg, tokens


