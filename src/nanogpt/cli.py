"""`nanogpt prepare | train | generate`: parse flags, hand them to the module that does the work.

Train and generate flags come from the fields of `ModelConfig`, `TrainConfig`, `GenerateConfig` (config.py): a setting's
flag, help text and saved name never drift apart. Every flag defaults to "not given" (argparse.SUPPRESS),
so that we know which values the user typed: those win over a preset and over a resumed checkpoint.
Mistakes a user can make raise `UserError`; here they become one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, get_type_hints

from . import __version__
from .config import PRESETS, GenerateConfig, ModelConfig, PrepareConfig, TrainConfig, field_flag, field_help
from .errors import UserError


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind = hints[f.name]
        default = f.default
        shown = "" if default is None or "(default" in field_help(f) else f" (default: {default})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=field_help(f) + shown)
        if kind in (bool, bool | None):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            base = {int: int, float: float, str: str, int | None: int, float | None: float, str | None: str}.get(
                kind, str
            )
            kw["type"] = base
            kw["metavar"] = {int: "N", float: "X"}.get(
                base, "PATH" if "dataset" in f.name or "dir" in f.name or "metadata" in f.name else "TEXT"
            )
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
                kw["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        group.add_argument(field_flag(f), **kw)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 1, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(1, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nanogpt",
        description="Pre-train a small GPT-2-style language model from scratch on your own text.",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "prepare",
        help="tokenize a text file or a mixology folder into train.bin / val.bin / vocab.json",
        description="Tokenize text into train.bin, val.bin and vocab.json. SOURCE is a text file or a "
        "'mixology' folder whose sub-folders NN_name/ hold NN percent of the tokens. Without SOURCE, "
        "prepares the bundled Tiny Shakespeare corpus.",
    )
    source = next(f for f in dataclasses.fields(PrepareConfig) if f.name == "source")
    p.add_argument("source", nargs="?", default=None, metavar="SOURCE", help=field_help(source))
    _add_config_flags(p, PrepareConfig, "settings")

    t = sub.add_parser(
        "train",
        help="train a model (live UI on a terminal, headless otherwise)",
        description="Train a GPT from scratch. With no data options it trains on the bundled Tiny "
        "Shakespeare; with no preset and no size flags it uses cpu-small on CPU/MPS and baby-gpt on CUDA.",
    )
    t.add_argument(
        "--preset", default=None, choices=list(PRESETS), help="model size and schedule in one go; explicit flags win"
    )
    t.add_argument(
        "--resume-training", default=None, metavar="STEM", help="continue from a checkpoint, e.g. out/model_step_500"
    )
    t.add_argument(
        "--headless", action="store_true", help="no UI: progress lines (automatic when stdout is not a terminal)"
    )
    _add_config_flags(t, ModelConfig, "model")
    _add_config_flags(t, TrainConfig, "training")

    g = sub.add_parser(
        "generate",
        help="generate text from a saved checkpoint",
        description="Generate text from a checkpoint. Only the text goes to stdout, streamed as it is made.",
    )
    g.add_argument("stem", metavar="STEM", help="checkpoint stem, e.g. out/model_step_2000 (or its .safetensors file)")
    _add_config_flags(g, GenerateConfig, "sampling")
    return parser


def _config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    names = [f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)]
    return {name: getattr(ns, name) for name in names if hasattr(ns, name)}


def _cmd_prepare(ns: argparse.Namespace) -> int:
    from .prepare import prepare

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(PrepareConfig) if hasattr(ns, f.name)}
    prepare(**given)
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    from .distributed import under_torchrun
    from .engine import DATA_FIELDS, build_trainer
    from .runtime import training_process

    overrides = _config_overrides(ns)
    if ns.resume_training is None and not any(k in overrides for k in DATA_FIELDS):
        from .prepare import bundled_dataset

        overrides["data_dir"] = str(bundled_dataset())  # no data named: the bundled corpus (prepared once)
    trainer = build_trainer(overrides, preset=ns.preset, resume=ns.resume_training)
    if trainer.is_main:
        for note in trainer.notes:
            print(note, file=sys.stderr, flush=True)
    if ns.headless or under_torchrun() or not sys.stdout.isatty():
        from .headless import run_headless

        with training_process(trainer.hardware):
            return run_headless(trainer)
    from .tui.app import run_tui

    with training_process(trainer.hardware, ui=True):
        return run_tui(trainer, start_paused=ns.resume_training is not None)


def _cmd_generate(ns: argparse.Namespace) -> int:
    from .generate import generate_cli

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(GenerateConfig) if hasattr(ns, f.name)}
    return generate_cli(ns.stem, GenerateConfig(**given))


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {"prepare": _cmd_prepare, "train": _cmd_train, "generate": _cmd_generate}[ns.command]
    try:
        return handler(ns)
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: say it once
            print(f"nanogpt {ns.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a Ctrl-C outside the training loop (which handles its own)
        print(f"nanogpt {ns.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nanogpt generate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
