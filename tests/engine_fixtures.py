"""Fixtures for the engine tests: Tiny Shakespeare prepared at character level, and tiny model settings.

The `shakespeare_dir` fixture is registered in conftest.py; tests import the settings from here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanogpt.prepare import prepare

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

# 2 layers, 32 wide, block 32: a few ms per step on CPU, still a real GPT
TINY = {
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
    "block_size": 32,
    "batch_size": 8,
    "eval_iters": 4,
    "device": "cpu",
    "compile": False,
    "dtype": "float32",
    "log_interval": 1,
    "validation_interval": 0,
    "warmup_steps": 5,
}
TINY_FLAGS = [
    "--layer-count",
    "2",
    "--head-count",
    "2",
    "--embedding-size",
    "32",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--eval-iters",
    "4",
    "--device",
    "cpu",
    "--no-compile",
    "--dtype",
    "float32",
]


def prepare_char(text: str, out: Path) -> Path:
    """A char-level dataset (train.bin, val.bin, vocab.json; 90/10 split) of `text`, written by `nanogpt prepare`."""
    out.mkdir(parents=True, exist_ok=True)
    src = out / "input.txt"
    src.write_text(text, encoding="utf-8")
    prepare(str(src), tokenizer="char", out_dir=str(out), val_fraction=0.1, strip_gutenberg=False)
    return out


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Shakespeare prepared at character level (skips when the shared data is absent)."""
    if not SHARED_TEXT.is_file():
        pytest.skip(f"shared data not found at {SHARED_TEXT}")
    return prepare_char(SHARED_TEXT.read_text(encoding="utf-8"), tmp_path_factory.mktemp("shakespeare"))


@pytest.fixture(scope="session")
def mixology_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-source mixology folder (25% Alice, 75% Shakespeare) prepared at character level by the CLI."""
    alice = SHARED_TEXT.with_name("gutenberg_alice.txt")
    if not SHARED_TEXT.is_file() or not alice.is_file():
        pytest.skip(f"shared data not found at {SHARED_TEXT.parent}")
    from nanogpt.cli import main

    root = tmp_path_factory.mktemp("mixology")
    for name, text in (("25_alice", alice), ("75_shakespeare", SHARED_TEXT)):
        (root / "mix" / name).mkdir(parents=True)
        (root / "mix" / name / text.name).write_text(text.read_text(encoding="utf-8"), encoding="utf-8")
    out = root / "data"
    assert main(["prepare", str(root / "mix"), "--tokenizer", "char", "--strip-gutenberg", "--out-dir", str(out)]) == 0
    return out
