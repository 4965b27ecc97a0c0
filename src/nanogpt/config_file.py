"""`nanogpt train --config FILE`: an experiment's settings kept in a file (nanoGPT's `config/*.py` habit, as
TOML), or a run's saved `model_step_N.config.json` fed back to train it again.

A TOML file is flat: its keys are the train command's flag names without the leading dashes, with dashes or
underscores (`eval-iters`, `eval_iters`, `layer-count`), or a setting's own name (`n_layer`); each value has the
flag's type (`steps = 2000`, not `"2000"`). A saved config.json gives every setting its run resolved, less the
ones that belong to that run alone (its folder and its vocabulary size); the preset it names comes with it.
Flags typed on the command line win over the file (train_command.py merges them). A bad key or value is one
line naming the file and the key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import UserError
from .store.files import check_size, read_json

CONFIG_LIMIT = 64 << 20  # a saved config.json holds the vocabulary (a BPE's merges): as large as checkpoint JSON
# the settings of a saved config.json that belong to the run that wrote it, not to a run trained from it
_RUN_OWN = ("out_dir", "vocab_size")
# flags that make no sense in a file: they are questions or name the file itself
_NOT_IN_FILE = ("help", "config")


def _keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every name a file may use for a train flag -> the flag's action."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest in _NOT_IN_FILE or not action.option_strings:
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                keys[option[2:]] = keys[option[2:].replace("-", "_")] = action
        keys[action.dest] = action
    return keys


def _typed(action: argparse.Action, key: str, value: Any, path: Path) -> Any:
    """`value` checked against the flag's type and choices (a file has not been through argparse)."""
    flag = action.option_strings[-1]
    if action.nargs == 0:  # --headless, --compile/--no-compile: true or false
        kind: type = bool
    else:
        kind = action.type if action.type in (int, float) else str
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise UserError(f"{path}: {key} ({flag}) must be {_kind_name(kind)}, got {value!r}"[:300])
    if kind is str and callable(action.type):
        try:
            value = action.type(value)  # the empty-path check of flags._refuse_empty_paths
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise UserError(f"{path}: {key} ({flag}): {e}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{path}: {key} ({flag}) must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}[kind]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise UserError(f"{path}: reading TOML needs Python 3.11 or the tomli package") from None
    check_size(path, "config file", CONFIG_LIMIT)
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None


def _saved_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config.json as flat settings: its model and train tables, less the run's own, and its
    preset (runs since the preset was recorded name it)."""
    flat = {**raw["model"], **raw["train"]}
    for key in _RUN_OWN:
        flat.pop(key, None)
    if isinstance(raw.get("preset"), str):
        flat["preset"] = raw["preset"]
    return flat


def read_config_file(path_text: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The settings of config file `path_text` for the train command `parser`: {flag's dest: value}."""
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"config file not found: {path}" if not path.exists() else f"config file {path} is not a file")
    if path.suffix == ".json":
        raw = read_json(path, "config file", CONFIG_LIMIT)
        saved = isinstance(raw, dict) and isinstance(raw.get("model"), dict) and isinstance(raw.get("train"), dict)
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a config file holds a table of settings")
        raw = _saved_settings(raw) if saved else raw
    else:
        raw, saved = _read_toml(path), False
    keys = _keys(parser)
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        action = keys.get(key)
        if action is None:
            if saved:
                continue  # a setting of another version of nanogpt, or one no flag sets
            raise UserError(f"{path}: unknown setting {key!r}{_close(key, keys)}")
        if value is None:
            continue  # JSON's null: a setting left at its default
        settings[action.dest] = _typed(action, key, value, path)
    return settings


def _close(key: str, keys: dict[str, argparse.Action]) -> str:
    import difflib

    close = difflib.get_close_matches(key.replace("_", "-"), [k for k in keys if "_" not in k], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else " (keys are the train flags without their dashes)"


def merge(ns: argparse.Namespace, settings: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Lay the file's `settings` under what was typed: a setting flag not typed is absent from `ns` (its default
    is argparse.SUPPRESS); another flag not typed holds its default (`defaults`)."""
    for dest, value in settings.items():
        if not hasattr(ns, dest) or (dest in defaults and getattr(ns, dest) == defaults[dest]):
            setattr(ns, dest, value)
