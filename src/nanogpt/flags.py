"""The command line's parser: `nanogpt prepare | train | generate | export | plot | runs` and their flags.

Train, prepare and generate flags come from the fields of `ModelConfig`, `TrainConfig`, `PrepareConfig` and
`GenerateConfig` (config.py): a setting's flag, help text and saved name never drift apart. Every such flag
defaults to "not given" (argparse.SUPPRESS), so that cli.py knows which values the user typed: those win over
a preset and over a resumed checkpoint. A mistyped flag is refused with the closest real one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import Any, get_type_hints

from . import __version__
from .config import GenerateConfig, ModelConfig, PrepareConfig, TrainConfig, field_flag, field_help
from .presets import PRESETS, default_preset

# The presets a run gets when it names none: what `train --help` shows as the defaults they set.
DEFAULT_PRESETS = tuple(dict.fromkeys(default_preset(d) for d in ("cpu", "cuda")))


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind = hints[f.name]
        shown = "" if "(default" in field_help(f) else _default_text(f)
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=field_help(f) + shown)
        if kind in (bool, bool | None):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            base = {int: int, float: float, str: str, int | None: int, float | None: float, str | None: str}.get(
                kind, str
            )
            kw["type"] = base
            kw["metavar"] = f.metadata.get("metavar")  # else _uniform_metavars names it
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        group.add_argument(field_flag(f), **kw)


def _default_text(f: dataclasses.Field) -> str:
    """' (default: X)'; for a setting the presets choose, the values of the two default presets."""
    if not any(f.name in PRESETS[name] for name in DEFAULT_PRESETS):
        return "" if f.default is None else f" (default: {f.default})"
    # a default preset that leaves the setting alone runs with the field's own default
    by_preset = {name: PRESETS[name].get(f.name, f.default) for name in DEFAULT_PRESETS}
    if len(set(by_preset.values())) == 1:
        return f" (default: {next(iter(by_preset.values()))}, from the preset)"
    return " (default: from the preset: " + ", ".join(f"{v} for {k}" for k, v in by_preset.items()) + ")"


class FlagError(Exception):
    """A bad command line: argparse's one line (`nanogpt train: error: ...`), said by cli.main like any other
    user error (once under torchrun, exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit code 1, like every other user error.

    Abbreviations are off: `--step` must not silently mean `--steps` (nor break when a flag is added).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise FlagError(f"{self.prog}: error: {message}")


def _uniform_metavars(parser: argparse.ArgumentParser) -> None:
    """Name every flag's value the same way in every subcommand's help: N, X, {a,b}, PATH or TEXT."""
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and action.metavar is None:
            if action.choices is not None:
                action.metavar = "{" + ",".join(map(str, action.choices)) + "}"
            elif action.type in (int, float):
                action.metavar = "N" if action.type is int else "X"
            elif any(w in action.dest for w in ("dir", "path", "metadata", "dataset", "file")):
                action.metavar = "PATH"
            else:
                action.metavar = "TEXT"


# The metavars of the arguments that name a file or folder (_uniform_metavars' PATH, and the ones set by hand)
_PATH_METAVARS = ("PATH", "STEM", "DIR", "OUT", "FILE", "SOURCE", "RUN_OR_STEM")


def _refuse_empty_paths(parser: argparse.ArgumentParser) -> None:
    """Refuse '' for every argument that names a file or folder: Path('') is '.', so `--out-dir ''` would
    train into the current folder, and '' anywhere else names something the user did not mean."""
    for action in parser._actions:
        if action.metavar in _PATH_METAVARS:
            action.type = _nonempty(action.type or str)


def _nonempty(kind: Any) -> Any:
    def path(text: str) -> Any:
        if not text:
            raise argparse.ArgumentTypeError("an empty path names no file or folder")
        return kind(text)

    return path


# Other tools' names for our flags (nanoGPT's config names, common shorthands): a prefix or spelling match
# would point elsewhere (`--lr` is a prefix of `--lr-schedule`, not what someone typing it means).
_OTHER_NAMES = {
    "--lr": "--learning-rate",
    "--min-lr": "--min-learning-rate",
    "--max-iters": "--steps",
    "--eval-interval": "--validation-interval",
    "--warmup-iters": "--warmup-steps",
    "--n-layer": "--layer-count",
    "--n-head": "--head-count",
    "--n-embd": "--embedding-size",
    "--gradient-accumulation-steps": "--grad-accum",
}


def _unknown_flag_hint(arg: str, parser: argparse.ArgumentParser) -> str:
    """'; did you mean --steps?' for --setps, --step, --learning_rate or --max_iters (nanoGPT's spelling)."""
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    dashed = "--" + arg.split("=", 1)[0].lstrip("-").replace("_", "-")
    if _OTHER_NAMES.get(dashed) in flags:
        return f"; did you mean {_OTHER_NAMES[dashed]}?"
    longer = [f for f in flags if f.startswith(dashed)]  # an abbreviation, which we do not accept
    close = [dashed] if dashed in flags else longer or difflib.get_close_matches(dashed, flags, n=1, cutoff=0.6)
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def _stray_argument_hint(command: str, arg: str) -> str:
    """What to type instead of a positional argument that `command` does not take."""
    if command != "train":
        return ""
    path = Path(arg)
    if path.is_dir() and (path / "vocab.json").is_file():
        return f"; to train on this prepared folder: nanogpt train --data-dir {arg}"
    if path.exists() or path.suffix:  # most likely a text to train on
        return f"; train reads prepared data: run `nanogpt prepare {arg}` first, then train with --data-dir"
    return "; train takes no positional arguments (give the data with --data-dir)"


def reject_extras(parser: argparse.ArgumentParser, command: str, extras: list[str]) -> None:
    """argparse's 'unrecognized arguments', said by the subcommand, with what was probably meant."""
    flag = next((a for a in extras if a.startswith("-")), None)
    hint = _unknown_flag_hint(flag, parser) if flag else _stray_argument_hint(command, extras[0])
    parser.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


STEM_HELP = "checkpoint stem, e.g. out/model_step_2000, one of its files, or a run folder (its best checkpoint by " \
    "validation loss)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nanogpt",
        description="Pre-train a small GPT-2-style language model from scratch on your own text.",
    )
    parser.add_argument("--version", action="version", version=f"nanogpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

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

    _add_train(sub)

    g = sub.add_parser(
        "generate",
        help="generate text from a saved checkpoint",
        description="Generate text from a checkpoint. Only the text goes to stdout, streamed as it is made.",
    )
    g.add_argument("stem", metavar="STEM", help=STEM_HELP)
    _add_config_flags(g, GenerateConfig, "sampling")
    _add_export_and_plot(sub)
    for subparser in subparsers(parser).values():
        _uniform_metavars(subparser)
        _refuse_empty_paths(subparser)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`nanogpt train`: its own flags, then every ModelConfig and TrainConfig field."""
    t = sub.add_parser(
        "train",
        help="train a model (live UI on a terminal, headless otherwise)",
        description="Train a GPT from scratch. With no data options it trains on the bundled Tiny "
        "Shakespeare; with no preset and no size flags it uses cpu-small on CPU/MPS and baby-gpt on CUDA.",
    )
    t.add_argument(
        "--config", default=None, metavar="FILE", help="read settings from FILE: a TOML file whose keys are these "
        "flags without their dashes (eval_iters = 40), or a run's saved model_step_N.config.json to train it "
        "again; flags typed here win"
    )
    t.add_argument(
        "--preset", default=None, choices=list(PRESETS), help="model size and schedule in one go; explicit flags win"
    )
    t.add_argument(
        "--resume-training",
        default=None,
        metavar="STEM",
        help="continue from a checkpoint, e.g. out/model_step_500, or a run folder (its latest)",
    )
    t.add_argument(
        "--headless", action="store_true", help="no UI: progress lines (automatic when stdout is not a terminal)"
    )
    t.add_argument(
        "--plan", action="store_true", help="with --time: print the plan (shape, batch, steps) and exit, training "
        "nothing"
    )
    t.add_argument(
        "--reprobe-dtype", action="store_true", help="--dtype auto on a CPU: time the step in float32 and bfloat16 "
        "again instead of reusing the cached verdict, which otherwise stays (a near tie or a busy machine gave "
        "float32); NANOGPT_REPROBE_DTYPE=1 does the same"
    )
    t.add_argument(
        "--compare", default=None, metavar="STEM", help="the UI draws this earlier run's curves faintly beside the "
        "live one (a checkpoint stem or a folder of checkpoints)"
    )
    t.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log to TensorBoard event files in DIR (needs the tensorboard extra)")
    t.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log to Weights & Biases project PROJECT (WANDB_MODE=offline works; needs the wandb "
                   "extra)")
    _add_config_flags(t, ModelConfig, "model")
    _add_config_flags(t, TrainConfig, "training")


def _add_export_and_plot(sub: argparse._SubParsersAction) -> None:
    """The commands that read finished runs."""
    e = sub.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face GPT-2 folder, or as a GGUF file (llama.cpp, Ollama, LM Studio)",
        description="Write checkpoint STEM as a Hugging Face GPT-2 folder OUT (config.json, model.safetensors, "
        "generation_config.json, tokenizer files and a README.md model card), or with --format gguf as one "
        "GGUF file OUT that llama.cpp, Ollama and LM Studio run. OUT must not exist (a folder may be empty); "
        "it appears whole or not at all.",
    )
    e.add_argument("stem", metavar="STEM", help=STEM_HELP)
    e.add_argument("out_dir", metavar="OUT", help="the folder (hf) or file (gguf) to create")
    e.add_argument("--format", default="hf", choices=("hf", "gguf"), help="hf: a Hugging Face folder; gguf: one "
                   "file for llama.cpp (default: hf)")
    e.add_argument("--dtype", default=None, metavar="{float32,float16,bfloat16}",
                   help="GGUF weight type; LayerNorm gains and biases stay float32 (default: float32)")
    pl = sub.add_parser(
        "plot",
        help="draw the loss curves of one or more runs into a PNG or SVG (needs the plot extra)",
        description="Draw training and validation loss (and each mixology source's) of the runs on one chart; "
        "the legend names each run by its folder and the settings that differ.",
    )
    pl.add_argument("runs", nargs="+", metavar="RUN_OR_STEM", help="a folder of checkpoints or a checkpoint stem")
    pl.add_argument("-o", "--output", required=True, metavar="FILE", help="the image to write: .png or .svg")
    pl.add_argument("--size", default="1000x600", metavar="WxH", help="image size in pixels (default: 1000x600)")
    pl.add_argument("--metric", choices=("loss", "bpb"), default="loss", help="y axis: loss, or bpb (bits per byte)")
    r = sub.add_parser(
        "runs",
        help="list the runs in a folder, newest first: preset or shape, tokenizer, steps, best validation, time",
        description="List the runs (folders of checkpoints) in FOLDER, its sub-folders and theirs, newest first: "
        "one line each with its preset (and how many settings were changed) or shape, tokenizer, steps done, "
        "best validation (bits per byte) and the step it was reached at, time trained, and when it was saved.",
    )
    r.add_argument("folder", nargs="?", default=".", metavar="FOLDER", help="where to look (default: .)")
    r.add_argument("--json", action="store_true", help="one JSON list for scripts, every field of every run")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)
