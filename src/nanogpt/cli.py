"""`nanogpt prepare | train | generate | export | plot`: parse flags (flags.py), hand them to the module that
does the work.

Mistakes a user can make raise `UserError`; here they become one line on stderr and exit code 1. A bare
`nanogpt` prints the commands and exits 0 (it is a question, not a mistake).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import time
from pathlib import Path
import sys
from typing import TYPE_CHECKING, Any

from . import distributed
from .config import GenerateConfig, ModelConfig, PrepareConfig, TrainConfig
from .errors import UserError
from .flags import build_parser, reject_extras, subparsers
from .presets import check_new_run

if TYPE_CHECKING:  # imported when training starts, not to parse flags
    from .train.loop import Trainer


def _checkpoint_given(path: str | None, best: bool = True) -> str | None:
    """A checkpoint as typed; a run folder means its best by validation loss (`best`) or its latest (a resume),
    and we say which (stderr, runs.pick). A stem that names nothing is refused with what its folder holds."""
    if path is None:
        return path
    from .runs import check_exists, pick

    if not Path(path).is_dir():
        check_exists(path)
        return path
    stem, line = pick(path, best)
    if distributed.rank() == 0:
        print(line, file=sys.stderr, flush=True)
    return str(stem)


def _config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    names = [f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)]
    return {name: getattr(ns, name) for name in names if hasattr(ns, name)}


def _cmd_prepare(ns: argparse.Namespace) -> int:
    from .prepare import prepare

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(PrepareConfig) if hasattr(ns, f.name)}
    prepare(**given)
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    overrides = _config_overrides(ns)
    if ns.resume_training is None:  # a resume's settings are its checkpoint's: checked once it is read
        check_new_run(overrides, ns.preset)  # before the data is prepared or torch imported (seconds)
    if ns.reprobe_dtype:  # read by dtype_probe, in every torchrun rank alike
        os.environ["NANOGPT_REPROBE_DTYPE"] = "1"
    from .config import DATA_FIELDS
    from .train.setup import build_trainer

    ns.resume_training = _checkpoint_given(ns.resume_training, best=False)
    compare = None
    if ns.compare is not None:  # read first: a wrong path is one line before training starts
        from .plot import read_run

        run = read_run(ns.compare)
        compare = (run.name, run.log)
    if ns.resume_training is None and not any(k in overrides for k in DATA_FIELDS):
        from .prepare import bundled_dataset

        overrides["data_dir"] = str(bundled_dataset())  # no data named: the bundled corpus (prepared once)
    trainer = build_trainer(overrides, preset=ns.preset, resume=ns.resume_training)
    if trainer.is_main:
        for note in trainer.notes:
            print(note, file=sys.stderr, flush=True)
    from .trackers import open_trackers

    # rank 0 only: a torchrun job is one run to a tracker
    out_dir, resumed = trainer.train_cfg.out_dir, ns.resume_training
    trackers = open_trackers(ns.tensorboard, ns.wandb, out_dir, resumed) if trainer.is_main else []
    try:
        code = _train(ns, trainer, compare, trackers)
    finally:
        for tracker in trackers:
            tracker.close()  # the run ended however it ended: flush what was logged
    del trainer  # under torchrun: DDP and its pending gloo work go before the process group does
    distributed.leave()
    return code


def _train(
    ns: argparse.Namespace, trainer: Trainer, compare: tuple[str, list[dict]] | None, trackers: list
) -> int:
    """Run `trainer` headless or in the UI, the trackers hearing every event."""
    from .distributed import under_torchrun
    from .runtime import training_process

    if ns.headless or under_torchrun() or not sys.stdout.isatty():
        from .headless import run_headless

        if compare is not None and trainer.is_main:
            print("note: --compare draws in the UI only; compare headless runs with `nanogpt plot`", file=sys.stderr)
        with training_process(trainer.hardware):
            return run_headless(trainer, listeners=trackers)
    from .tui.app import run_tui

    with training_process(trainer.hardware, ui=True):
        return run_tui(trainer, start_paused=ns.resume_training is not None, compare=compare, listeners=trackers)


def _cmd_generate(ns: argparse.Namespace) -> int:
    from .generate import generate_cli

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(GenerateConfig) if hasattr(ns, f.name)}
    return generate_cli(_checkpoint_given(ns.stem), GenerateConfig(**given))


def _tell_torchrun(line: str) -> None:
    """Under torchrun, hand our one line to its failure report, so it is the last thing printed.

    torchrun prints its own traceback when a process exits non-zero; the report at the end shows the
    process's error file, which torchrun names in TORCHELASTIC_ERROR_FILE (a string message is shown as is).
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            Path(path).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))
        except OSError:
            pass  # the report falls back to torchrun's generic line; ours was printed already


def _cmd_export(ns: argparse.Namespace) -> int:
    from .export import export

    if ns.format == "gguf":
        from .gguf_export import export_gguf

        stem = _checkpoint_given(ns.stem)
        out, notes = export_gguf(stem, ns.out_dir, ns.dtype or "float32")
        for note in notes:
            print(note, file=sys.stderr)
        print(f"exported {stem} to {out}")
        return 0
    if ns.dtype is not None:
        raise UserError("--dtype is for --format gguf; the Hugging Face folder keeps the checkpoint's float32")
    stem = _checkpoint_given(ns.stem)
    print(f"exported {stem} to {export(stem, ns.out_dir)}")
    return 0


def _cmd_plot(ns: argparse.Namespace) -> int:
    from .plot import parse_size, plot

    print(f"wrote {plot(ns.runs, ns.output, *parse_size(ns.size), metric=ns.metric)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # a bare `nanogpt`: what can it do?
        parser.print_help()
        return 0
    commands = subparsers(parser)
    if not args[0].startswith("-") and args[0] not in commands:  # argparse lists the choices but guesses none
        close = difflib.get_close_matches(args[0], list(commands), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        parser.error(f"unknown command {args[0]!r} (commands: {', '.join(commands)}){hint}")
    ns, extras = parser.parse_known_args(args)
    if ns.command is None:
        parser.error("give a command: " + ", ".join(subparsers(parser)))
    if extras:
        reject_extras(subparsers(parser)[ns.command], ns.command, extras)
    handler = {
        "prepare": _cmd_prepare, "train": _cmd_train, "generate": _cmd_generate, "export": _cmd_export,
        "plot": _cmd_plot,
    }[ns.command]
    try:
        return handler(ns)
    except UserError as e:
        line = f"nanogpt {ns.command}: error: {e}"
        if distributed.rank() == 0:  # under torchrun every rank fails alike: say it once
            print(line, file=sys.stderr)
        _tell_torchrun(line)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C outside the training loop (which handles its own)
        print(f"nanogpt {ns.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nanogpt generate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
