"""Fixtures for the tests: the bundled Tiny Shakespeare (as text and prepared), a Gutenberg-like book, tiny settings.

Every text here comes from the corpus bundled in the package or is made here, so a clone without ../shared
runs these tests. The fixtures are registered in conftest.py; tests import the settings from here.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources
from pathlib import Path

import pytest

from nanogpt.prepare import prepare

# sha256 of karpathy's char-rnn tinyshakespeare/input.txt, which the package bundles (gzipped)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
GUTENBERG_START = "*** START OF THE PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***"
GUTENBERG_END = "*** END OF THE PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***"


@functools.cache
def shakespeare_text() -> str:
    """Tiny Shakespeare, read from the gzip bundled in the package (what `nanogpt prepare` with no source reads)."""
    data = (resources.files("nanogpt") / "data" / "tinyshakespeare.txt.gz").read_bytes()
    return gzip.decompress(data).decode("utf-8")


@functools.cache
def gutenberg_book() -> str:
    """A raw Project Gutenberg file as gutenberg.org serves it: CRLF lines, a licence header and footer.

    Its body (120k characters, about Alice's) is a slice of Tiny Shakespeare with its case swapped, so that it
    is a text of its own: no 300 characters of it occur in Tiny Shakespeare.
    """
    body = shakespeare_text()[-120_000:].swapcase()
    header = (
        "The Project Gutenberg eBook of Alice's Adventures in Wonderland\n    \n"
        "This ebook is for the use of anyone anywhere in the United States and\nmost other parts of the world "
        "at no cost and with almost no restrictions\nwhatsoever.\n\nTitle: Alice's Adventures in Wonderland\n\n"
    )
    footer = "".join(  # the licence: about 12% of a real book's file
        f"\n\nSection {i}. General Terms of Use and Redistributing Project Gutenberg(TM) electronic works\n\n"
        "1.A. By reading or using any part of this Project Gutenberg(TM) electronic work, you indicate that\n"
        "you have read, understand, agree to and accept all the terms of this license and intellectual\n"
        "property (trademark/copyright) agreement. If you do not agree to abide by all the terms of this\n"
        "agreement, you must cease using and return or destroy all copies in your possession.\n"
        for i in range(1, 51)
    )
    text = (
        f"{header}{GUTENBERG_START}\n[Illustration]\n\nCHAPTER I.\nDown the Rabbit-Hole\n\n{body}\n"
        f"THE END\n\n{GUTENBERG_END}{footer}"
    )
    return text.replace("\n", "\r\n")


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
    # nanoGPT's AdamW recipe: the CPU default preset's Muon one stays with any size flag (issue 34)
    "optimizer": "adamw",
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
    "--optimizer",
    "adamw",
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
    """The bundled Tiny Shakespeare prepared at character level."""
    return prepare_char(shakespeare_text(), tmp_path_factory.mktemp("shakespeare"))


@pytest.fixture(scope="session")
def mixology_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-source mixology folder (25% a Gutenberg book, 75% Shakespeare) prepared at character level by the CLI."""
    from nanogpt.cli import main

    root = tmp_path_factory.mktemp("mixology")
    for name, text in (("25_alice", gutenberg_book()), ("75_shakespeare", shakespeare_text())):
        (root / "mix" / name).mkdir(parents=True)
        (root / "mix" / name / f"{name[3:]}.txt").write_bytes(text.encode("utf-8"))
    out = root / "data"
    assert main(["prepare", str(root / "mix"), "--tokenizer", "char", "--strip-gutenberg", "--out-dir", str(out)]) == 0
    return out


# A run that overfits at once (tests/test_best.py, test_tui.py): a 0.4M-parameter model at a constant 3e-3 on the
# 1,500 training characters of `overfit_dir`, evaluated every 10 steps; its validation loss turns within ~100 steps.
OVERFIT = {
    "n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 16, "batch_size": 16, "eval_iters": 4, "device": "cpu",
    "compile": False, "dtype": "float32", "optimizer": "adamw", "learning_rate": 3e-3, "min_learning_rate": 3e-3,
    "warmup_steps": 0, "validation_interval": 10, "log_interval": 50, "eval_sample_tokens": 0,
}


@pytest.fixture(scope="session")
def overfit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10,000 characters of the bundled Tiny Shakespeare, 85% kept for validation: a model learns the other 1,500
    by heart."""
    out = tmp_path_factory.mktemp("overfit")
    (out / "input.txt").write_text(shakespeare_text()[:10_000], encoding="utf-8")
    prepare(str(out / "input.txt"), tokenizer="char", out_dir=str(out), val_fraction=0.85, strip_gutenberg=False)
    return out


@pytest.fixture(scope="session")
def trained(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 3 steps on Tiny Shakespeare (char) and saved: its stem (model_step_3). Tests copy
    it before editing it."""
    from nanogpt.train.setup import build_trainer

    out = tmp_path_factory.mktemp("trained")
    finished = build_trainer({**TINY, "steps": 3, "data_dir": str(shakespeare_dir), "out_dir": str(out)}).run(
        lambda event: None
    )
    assert finished.reason == "completed"
    return Path(finished.stem)
