"""A setting's field and what comes from it: its flag, its help text, its JSON in a checkpoint's config.json.

config.py declares the settings with `opt` and re-exports these; nothing here knows a particular setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

from .errors import UserError


class ConfigError(UserError):
    """A setting (or a combination of settings) a user gave is invalid; the message is one clear line."""


def opt(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field that carries its own `--help` text and (optionally) a flag name."""
    return field(default=default, metadata={"help": help, "flag": flag, **kw})


def flag_name(name: str) -> str:
    """The long command-line flag of a setting called `name`: `--name-with-dashes`."""
    return "--" + name.replace("_", "-")


def field_flag(f: dataclasses.Field) -> str:
    """The long command-line flag of a field: its `flag` metadata, else `--name-with-dashes`."""
    return f.metadata.get("flag") or flag_name(f.name)


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _json_type_ok(value: Any, kind: Any) -> bool:
    """Whether a JSON value has a field's type: int is an int (not 2.0, not true), float also takes an int."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return any(_json_type_ok(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from JSON, ignoring keys this version does not know.

    Each value must have its field's type (ConfigError otherwise): a file is not argparse, nothing has
    converted it, and `"n_layer": 2.0` or `"learning_rate": "fast"` would fail later, deep inside torch.
    """
    hints = typing.get_type_hints(cls)
    values = {k: v for k, v in data.items() if k in hints}
    for name, value in values.items():
        if not _json_type_ok(value, hints[name]):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            raise ConfigError(f"{name} must be of type {_type_name(hints[name])}, got {shown}")
    return cls(**values)


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("NoneType", "None")
