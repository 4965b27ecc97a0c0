"""`nanogpt train`'s wiring, between the parsed flags and the engine: the data it names (the bundled corpus
when none), the checkpoint it resumes, the engine built through the gate (train/gate.py), the trackers,
the front end (the UI on a terminal, headless otherwise and under torchrun), and torchrun's teardown order.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from .cli import checkpoint_given
from .config import DATA_FIELDS, ModelConfig, TrainConfig
from .errors import UserError
from .presets import check_new_run
from .runtime import distributed


def overrides_of(ns: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed: every ModelConfig and TrainConfig field given as a flag."""
    names = [f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)]
    return {name: getattr(ns, name) for name in names if hasattr(ns, name)}


def with_config_file(ns: argparse.Namespace) -> argparse.Namespace:
    """`ns` with the settings of `--config FILE` laid under the flags typed (config_file.py)."""
    if getattr(ns, "config", None) is None:
        return ns
    from .config_file import merge, read_config_file
    from .flags import build_parser, subparsers

    parser = subparsers(build_parser())["train"]
    defaults = {a.dest: a.default for a in parser._actions if a.default is not argparse.SUPPRESS}
    merge(ns, read_config_file(ns.config, parser), defaults)
    return ns


def train(ns: argparse.Namespace) -> int:
    """Run `nanogpt train` to its end; the process exit code."""
    ns = with_config_file(ns)
    overrides = overrides_of(ns)
    if ns.resume_training is None:  # a resume's settings are its checkpoint's: checked once it is read
        check_new_run(overrides, ns.preset)  # before the data is prepared or torch imported (seconds)
    from .runtime.machine import ProcessOptions
    from .train.setup import build_trainer

    resume = checkpoint_given(ns.resume_training, best=False)
    compare = None
    if ns.compare is not None:  # read first: a wrong path is one line before training starts
        from .plot import read_run

        run = read_run(ns.compare)
        compare = (run.name, run.log)
    if resume is None and not any(k in overrides for k in DATA_FIELDS):
        from .prepare import bundled_dataset

        overrides["data_dir"] = str(bundled_dataset())  # no data named: the bundled corpus (prepared once)
    options = ProcessOptions.from_env(reprobe_dtype=ns.reprobe_dtype)  # alike in every torchrun rank
    if ns.plan:
        return _show_plan(overrides, ns.preset, resume, options)
    trainer = build_trainer(overrides, preset=ns.preset, resume=resume, options=options)
    is_main, hardware, out_dir = trainer.hardware.is_main, trainer.hardware, trainer.train_cfg.out_dir
    if is_main:
        for note in trainer.notes:
            print(note, file=sys.stderr, flush=True)
    from .trackers import open_trackers

    # rank 0 only: a torchrun job is one run to a tracker
    trackers = open_trackers(ns.tensorboard, ns.wandb, out_dir, resume) if is_main else []
    try:
        code = _front_end(ns, trainer, hardware, compare, trackers, resumed=resume is not None)
    finally:
        for tracker in trackers:
            tracker.close()  # the run ended however it ended: flush what was logged
    del trainer  # under torchrun: DDP and its pending gloo work go before the process group does
    distributed.leave()
    return code


def _show_plan(overrides: dict[str, Any], preset: str | None, resume: str | None, options: Any) -> int:
    """`train --time T --plan`: the gate's notes (the plan line first among them) and nothing trained."""
    from .train.gate import resolve_run

    if "time" not in overrides:
        raise UserError("--plan prints the plan of --time: give --time too")
    run = resolve_run(overrides, preset, resume, options)
    if run.hardware.is_main:
        for note in run.notes:
            print(note)
    distributed.leave()
    return 0


def _front_end(
    ns: argparse.Namespace, engine: Any, hardware: Any, compare: tuple[str, list[dict]] | None, trackers: list,
    resumed: bool,
) -> int:
    """Run `engine` headless or in the UI, the trackers hearing every event."""
    from .runtime.distributed import under_torchrun
    from .runtime.machine import training_process

    if ns.headless or under_torchrun() or not sys.stdout.isatty():
        from .headless import run_headless

        if compare is not None and hardware.is_main:
            print("note: --compare draws in the UI only; compare headless runs with `nanogpt plot`", file=sys.stderr)
        with training_process(hardware):
            return run_headless(engine, quiet=not hardware.is_main, listeners=trackers)
    from .tui.app import run_tui

    with training_process(hardware, ui=True):
        return run_tui(engine, start_paused=resumed, compare=compare, listeners=trackers)
