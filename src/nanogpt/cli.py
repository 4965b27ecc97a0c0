"""`nanogpt prepare | train | generate | export | plot`: parse flags (flags.py), hand them to the module that
does the work.

Mistakes a user can make raise `UserError`; here they become one line on stderr and exit code 1. A bare
`nanogpt` prints the commands and exits 0 (it is a question, not a mistake).
"""

from __future__ import annotations

import argparse
import codecs
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
from .files import discard_output, flush_output
from .flags import FlagError, build_parser, reject_extras, subparsers
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


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """The command line, or a FlagError (flags._Parser) with argparse's own one line."""
    commands = subparsers(parser)
    if not args[0].startswith("-") and args[0] not in commands:  # argparse lists the choices but guesses none
        close = difflib.get_close_matches(args[0], list(commands), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        parser.error(f"unknown command {args[0]!r} (commands: {', '.join(commands)}){hint}")
    ns, extras = parser.parse_known_args(args)
    if ns.command is None:
        parser.error("give a command: " + ", ".join(commands))
    if extras:
        reject_extras(commands[ns.command], ns.command, extras)
    return ns


def _os_error_line(e: OSError) -> str:
    """An OSError as `PATH: reason` (a path too long, unreadable, on a full or read-only disk), the path
    shortened in the middle when it is itself the problem (a name over 255 bytes)."""
    def shown(name: object) -> str:
        text = os.fsdecode(name) if isinstance(name, (str, bytes)) else str(name)
        return text if len(text) <= 160 else f"{text[:70]}...{text[-70:]} ({len(text)} characters)"

    reason = e.strerror or str(e) or type(e).__name__
    if e.filename is None:
        return reason
    names = shown(e.filename) + (f" -> {shown(e.filename2)}" if e.filename2 is not None else "")
    return f"{names}: {reason}"


def _refuse(line: str) -> int:
    """Say `line` once (under torchrun every rank fails alike: rank 0 says it) and tell torchrun's report."""
    _settle_stdout()
    if distributed.rank() == 0:
        print(line, file=sys.stderr)
    _tell_torchrun(line)
    return 1


def _settle_stdout() -> bool:
    """Flush standard output; when it cannot be written (a closed pipe, a full disk), point it at /dev/null
    so that the interpreter's own flush at exit does not print a second error, and return False."""
    try:
        sys.stdout.flush()
        return True
    except (OSError, ValueError):
        discard_output()
        return False


def _path_bytes_or_escape(error: UnicodeError) -> tuple[str | bytes, int]:
    """The encoding error handler of our output: a path named in non-UTF-8 bytes (held by Python as lone
    surrogates U+DC80-U+DCFF) is written back as those bytes, so it can be pasted; anything else the stream
    cannot show becomes a backslash escape."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    bad = error.object[error.start : error.end]
    if error.encoding.lower().replace("-", "") == "utf8" and all(0xDC80 <= ord(c) <= 0xDCFF for c in bad):
        return bytes(ord(c) - 0xDC00 for c in bad), error.end
    return codecs.backslashreplace_errors(error)


codecs.register_error("nanogpt-output", _path_bytes_or_escape)


def _readable_output() -> None:
    """Standard output and error never stop a command over a character (_path_bytes_or_escape): with
    PYTHONIOENCODING=ascii, generate's text keeps flowing, escaped where it must be (generate says so)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="nanogpt-output")
        except (AttributeError, ValueError, OSError):  # not a text stream of the io module: left as it is
            pass


def _out_of_memory(e: BaseException) -> bool:
    """True for torch's out-of-memory errors: the CPU allocator's RuntimeError, CUDA's OutOfMemoryError."""
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


HANDLERS = {
    "prepare": _cmd_prepare, "train": _cmd_train, "generate": _cmd_generate, "export": _cmd_export,
    "plot": _cmd_plot,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # a bare `nanogpt`: what can it do?
        parser.print_help()
        return 0
    _readable_output()
    command = "nanogpt"
    try:
        ns = _parse(parser, args)
        command = f"nanogpt {ns.command}"
        code = HANDLERS[ns.command](ns)
        flush_output()  # a full disk behind stdout is this command's failure, not the interpreter's at exit
        return code
    except FlagError as e:  # argparse's line names the subcommand itself
        return _refuse(str(e))
    except UserError as e:
        return _refuse(f"{command}: error: {e}")
    except BrokenPipeError:  # e.g. `nanogpt generate ... | head`
        discard_output()
        return 0
    except OSError as e:  # what the system refused about a path or a file the user named: one line, not a traceback
        return _refuse(f"{command}: error: {_os_error_line(e)}")
    except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeErrors of their own
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise  # a bug of ours: its traceback is what gets it fixed
        return _refuse(f"{command}: error: out of memory (a setting or a file asks for more than this machine has)")
    except KeyboardInterrupt:  # a Ctrl-C outside the training loop (which handles its own)
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
