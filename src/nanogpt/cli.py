"""`nanogpt prepare | train | generate | export`: parse flags, hand them to the module that does the work.

Train flags are generated from the fields of `ModelConfig` and `TrainConfig` (config.py), so a setting's
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
from .config import PRESETS, ModelConfig, TrainConfig, field_flag, field_help
from .errors import UserError


def _add_config_flags(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    group = parser.add_argument_group(title)
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        kind = hints[f.name]
        default = f.default
        shown = "" if default is None else f" (default: {default})"
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=field_help(f) + shown)
        if kind in (bool, bool | None):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            base = {int: int, float: float, str: str, int | None: int, str | None: str}.get(kind, str)
            kw["type"] = base
            kw["metavar"] = {int: "N", float: "X"}.get(
                base, "PATH" if "dataset" in f.name or "dir" in f.name or "metadata" in f.name else "TEXT"
            )
            kw["metavar"] = f.metadata.get("metavar", kw["metavar"])
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
    p.add_argument(
        "source", nargs="?", metavar="SOURCE", help="text file or mixology folder (default: bundled Tiny Shakespeare)"
    )
    p.add_argument(
        "--tokenizer",
        default="char",
        help="char (one token per character) or gpt2 (OpenAI's GPT-2 BPE) (default: char)",
    )
    p.add_argument(
        "--out-dir",
        default=None,
        help="output folder (default: the folder of SOURCE; data/tinyshakespeare for the bundled corpus)",
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="fraction of each source kept for validation (default: 0.1)"
    )
    p.add_argument("--strip-gutenberg", action="store_true", help="remove Project Gutenberg headers and footers")

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
    g.add_argument("--tokens-to-generate", type=int, default=200, help="number of tokens to generate (default: 200)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 means greedy (default: 1.0)")
    g.add_argument("--top-k", type=int, default=None, help="sample only from the K most likely tokens")
    g.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling: the smallest set of tokens with probability >= P"
    )
    g.add_argument("--seed", type=int, default=1337, help="random seed; 0 picks a random one (default: 1337)")
    g.add_argument("--prompt", default="", help="text to start from; \\n escapes are decoded (default: empty)")
    g.add_argument(
        "--vocab-metadata", default=None, help="vocab.json to use instead of the checkpoint's own vocabulary"
    )
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="device (default: auto)")
    g.add_argument(
        "--window-slide",
        type=int,
        default=None,
        metavar="N",
        help="when the text outgrows the context, drop the oldest N tokens and go on (default: half the "
        "block size, which lets the KV cache do its job; 1 = nanoGPT's exact crop, several times slower)",
    )
    e = sub.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face GPT-2 folder (transformers, llama.cpp's GGUF converter)",
        description="Write checkpoint STEM as a Hugging Face GPT-2 folder OUT_DIR: config.json, "
        "model.safetensors, generation_config.json, tokenizer files and a README.md model card. "
        "OUT_DIR must not exist (or be empty); it appears whole or not at all.",
    )
    e.add_argument("stem", metavar="STEM", help="checkpoint stem, e.g. out/model_step_2000 (or one of its files)")
    e.add_argument("out_dir", metavar="OUT_DIR", help="the folder to create")
    return parser


def _config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    names = [f.name for cls in (ModelConfig, TrainConfig) for f in dataclasses.fields(cls)]
    return {name: getattr(ns, name) for name in names if hasattr(ns, name)}


def _cmd_prepare(ns: argparse.Namespace) -> int:
    from .prepare import prepare

    prepare(
        ns.source,
        tokenizer=ns.tokenizer,
        out_dir=ns.out_dir,
        val_fraction=ns.val_fraction,
        strip_gutenberg=ns.strip_gutenberg,
    )
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    from .distributed import under_torchrun
    from .engine import build_trainer

    trainer = build_trainer(_config_overrides(ns), preset=ns.preset, resume=ns.resume_training)
    if ns.headless or under_torchrun() or not sys.stdout.isatty():
        from .headless import run_headless

        return run_headless(trainer)
    from .tui.app import run_tui

    return run_tui(trainer, start_paused=ns.resume_training is not None)


def _cmd_generate(ns: argparse.Namespace) -> int:
    from .generate import generate_cli

    return generate_cli(
        ns.stem,
        tokens=ns.tokens_to_generate,
        temperature=ns.temperature,
        top_k=ns.top_k,
        top_p=ns.top_p,
        seed=ns.seed,
        prompt=ns.prompt,
        vocab_metadata=ns.vocab_metadata,
        device=ns.device,
        slide=ns.window_slide,
    )


def _cmd_export(ns: argparse.Namespace) -> int:
    from .export import export

    print(f"exported {ns.stem} to {export(ns.stem, ns.out_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    handler = {
        "prepare": _cmd_prepare, "train": _cmd_train, "generate": _cmd_generate, "export": _cmd_export
    }[ns.command]
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
