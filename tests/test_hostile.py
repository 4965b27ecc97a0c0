"""Hostile and damaged input (issue 16, items 7-10): each case is refused with one line and exit code 1,
before anything large is allocated, through the real CLI on real small files.

One table per kind of input: flags, checkpoint files edited by hand, vocabularies, prepare's sources.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_fixtures import TINY, TINY_FLAGS

from nanogpt.cli import main
from nanogpt.engine import build_trainer


def run(capsys, *args: str) -> tuple[int, str]:
    """`nanogpt ARGS` in this process: (exit code, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own checks exit from inside parse_args
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, message: str) -> None:
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err


@pytest.fixture(scope="module")
def trained(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 3 steps and saved: its stem (model_step_3)."""
    out = tmp_path_factory.mktemp("hostile_ckpt")
    finished = build_trainer({**TINY, "steps": 3, "data_dir": str(shakespeare_dir), "out_dir": str(out)}).run(
        lambda event: None
    )
    assert finished.reason == "completed"
    return Path(finished.stem)


# ----------------------------------------------------------------------------- flags (items 9, 10)
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "nan"], "--learning-rate must be a positive number"),
        (["--learning-rate", "inf"], "--learning-rate must be a positive number"),
        (["--beta1", "2"], "--beta1 must be in [0, 1)"),
        (["--beta1", "nan"], "--beta1 must be in [0, 1)"),
        (["--beta2", "-0.5"], "--beta2 must be in [0, 1)"),
        (["--seed", "99999999999999999999"], "--seed must be in [0, 9223372036854775807]"),
        (["--grad-clip", "nan"], "--grad-clip must be >= 0"),
        (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
        (["--weight-decay", "-0.1"], "--weight-decay must be a number >= 0"),
        (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
        (["--min-learning-rate", "nan"], "--min-learning-rate must be in [0, --learning-rate]"),
    ],
)
def test_impossible_training_flags_are_one_line(
    flags: list[str], message: str, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    code, err = run(
        capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(shakespeare_dir),
        "--out-dir", str(out), *flags,
    )
    assert_one_line(code, err, message)
    assert not out.exists()


def test_generate_refuses_a_seed_torch_cannot_take(trained: Path, capsys) -> None:
    code, err = run(capsys, "generate", str(trained), "--seed", "99999999999999999999")
    assert_one_line(code, err, "--seed must be in [0, 9223372036854775807]")
