"""`nanogpt prepare | train | generate | export | plot | runs`: parse flags (flags.py), hand them to the module
that does the work (train: train_command.py).

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

from .runtime import distributed
from .config import GenerateConfig, PrepareConfig
from .errors import ABANDONED, UserError
from .store.files import discard_output, flush_output
from .flags import FlagError, build_parser, reject_extras, subparsers


def checkpoint_given(path: str | None, best: bool = True) -> str | None:
    """A checkpoint as typed; a run folder means its best by validation loss (`best`) or its latest (a resume),
    and we say which (stderr, runs.pick). A stem that names nothing is refused with what its folder holds."""
    if path is None:
        return path
    from .store.runs import check_exists, pick

    if not Path(path).is_dir():
        check_exists(path)
        return path
    stem, line = pick(path, best)
    if distributed.rank() == 0:
        print(line, file=sys.stderr, flush=True)
    return str(stem)


def _cmd_train(ns: argparse.Namespace) -> int:
    from .train_command import train

    return train(ns)


def _cmd_prepare(ns: argparse.Namespace) -> int:
    from .prepare import prepare

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(PrepareConfig) if hasattr(ns, f.name)}
    prepare(**given)
    return 0


def _cmd_generate(ns: argparse.Namespace) -> int:
    from .generate import generate_cli

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(GenerateConfig) if hasattr(ns, f.name)}
    return generate_cli(checkpoint_given(ns.stem), GenerateConfig(**given))


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
    from .interop.export import export

    if ns.format == "gguf":
        from .interop.gguf_export import export_gguf

        stem = checkpoint_given(ns.stem)
        out, notes = export_gguf(stem, ns.out_dir, ns.dtype or "float32")
        for note in notes:
            print(note, file=sys.stderr)
        print(f"exported {stem} to {out}")
        return 0
    if ns.dtype is not None:
        raise UserError("--dtype is for --format gguf; the Hugging Face folder keeps the checkpoint's float32")
    stem = checkpoint_given(ns.stem)
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


OTHER_RANK_WAIT_S = 10  # how long a rank other than 0 waits before it exits on a refusal (_refuse)


def _refuse(line: str) -> int:
    """Say `line` once (under torchrun every rank fails alike: rank 0 says it) and tell torchrun's report."""
    _settle_stdout()
    if distributed.is_main():
        print(line, file=sys.stderr)
    _tell_torchrun(line)
    if not distributed.is_main():
        # the moment one rank exits, torchrun stops the others: this one waits (stopped as soon as rank 0 exits) so
        # that rank 0, failing alike, says the line first; a CI run lost it when rank 1 got there a second sooner
        time.sleep(OTHER_RANK_WAIT_S)
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


def _readable_output() -> None:
    """Standard output and error never stop a command over a character (_path_bytes_or_escape): with
    PYTHONIOENCODING=ascii, generate's text keeps flowing, escaped where it must be (generate says so)."""
    codecs.register_error("nanogpt-output", _path_bytes_or_escape)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="nanogpt-output")
        except (AttributeError, ValueError, OSError):  # not a text stream of the io module: left as it is
            pass


def _out_of_memory(e: BaseException) -> bool:
    """True for torch's out-of-memory errors: the CPU allocator's RuntimeError, CUDA's OutOfMemoryError."""
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _cmd_runs(ns: argparse.Namespace) -> int:
    from .store.listing import as_json, list_runs, table

    rows = list_runs(ns.folder)
    if ns.json:
        print(json.dumps(as_json(rows), indent=1))
    elif not rows:
        print(f"no runs in {ns.folder} (a run is a folder of model_step_N checkpoints)", file=sys.stderr)
    else:
        print("\n".join(table(rows)))
    return 0


HANDLERS = {
    "prepare": _cmd_prepare, "train": _cmd_train, "generate": _cmd_generate, "export": _cmd_export,
    "plot": _cmd_plot, "runs": _cmd_runs,
}


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if argv is None and any(t.is_alive() for t in ABANDONED):
        # a thread running foreign code was left behind by a stop (Ctrl-C, SIGTERM): the interpreter's shutdown
        # would end it by unwinding through that code, which aborts the process ("FATAL: exception not
        # rethrown", exit -6) after the one-line error. Its files are cleaned up already: end here.
        try:
            flush_output()
        finally:
            os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
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
        if distributed.lost_peer(e):  # under torchrun: another node or process died
            return _refuse(f"{command}: error: {distributed.lost_peer(e)}")
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise  # a bug of ours: its traceback is what gets it fixed
        return _refuse(f"{command}: error: out of memory (a setting or a file asks for more than this machine has)")
    except KeyboardInterrupt:  # a Ctrl-C outside the training loop (which handles its own)
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
