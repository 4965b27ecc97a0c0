"""Hostile input, round three (issue 25 items 11 and 13): `plot`'s output and size, the fields of a training
log wherever it is read (plot, --compare, a resume into the UI or headless), values no chart can draw, and
settings only the UI uses.

Each is one line on stderr and exit code 1, through the real CLI, with nothing written.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS
from test_hostile import FILE_SIZE, assert_one_line, copy_checkpoint, edit_json, run, run_limited
from test_tui import wait_for

from nanogpt import checkpoint
from nanogpt.plot import read_run
from nanogpt.train.setup import build_trainer
from nanogpt.tui.app import TrainingApp

SRC = Path(__file__).resolve().parents[1] / "src"


# ----------------------------------------------------------------------------- item 11: plot's output
@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("100000x100000", "--size 100000x100000 is larger than a chart is drawn"),
        ("65000x65000", "--size 65000x65000 is larger than a chart is drawn"),
        ("16000x16000", "--size 16000x16000 is larger than a chart is drawn"),  # each side fits; the whole does not
        ("99999999999999999999x600", "--size 999999...(20 digits)x600 is larger"),
        ("9" * 5000 + "x600", "--size 999999...(5000 digits)x600 is larger"),  # past int()'s 4,300 digits
    ],
)
def test_a_chart_larger_than_can_be_drawn_is_one_line(size: str, message: str, trained: Path, tmp_path: Path) -> None:
    """Refused before matplotlib allocates (std::bad_alloc under a 3 GiB address space before)."""
    ((code, err),) = run_limited(["plot", str(trained), "-o", str(tmp_path / "c.png"), "--size", size])
    assert_one_line(code, err, message)
    assert not any(tmp_path.iterdir())


def test_the_largest_chart_allowed_is_drawn(trained: Path, tmp_path: Path, capsys) -> None:
    assert run(capsys, "plot", str(trained), "-o", str(tmp_path / "c.svg"), "--size", "16384x3000")[0] == 0
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")


def test_plot_into_a_folder_is_one_line(trained: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "chart.png").mkdir()
    code, err = run(capsys, "plot", str(trained), "-o", str(tmp_path / "chart.png"))
    assert_one_line(code, err, "is a folder; give the image's file name")
    assert list((tmp_path / "chart.png").iterdir()) == []


def test_plot_onto_a_full_disk_is_one_line_and_leaves_nothing(trained: Path, tmp_path: Path) -> None:
    """Files are limited to 20,000 bytes in the child (RLIMIT_FSIZE, as a full disk): the chart cannot be
    written, and neither it nor its temporary file is left."""
    out = tmp_path / "charts"
    out.mkdir()
    ((code, err),) = run_limited(["plot", str(trained), "-o", str(out / "big.png"), "--size", "4000x3000"],
                                 limit=FILE_SIZE)
    assert_one_line(code, err, f"cannot write {out / 'big.png'}: File too large")
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- items 11, 13: the log's fields
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("source_validation_losses", "abc", "has a source_validation_losses that is not a table"),
        ("source_validation_bpb", {"a": "x"}, "has a source_validation_bpb that is not a table"),
        ("source_validation_losses", {"1": [1]}, "has a source_validation_losses that is not a table"),
        ("validation_bpb", "1.2", "has a validation_bpb that is not a number"),
        ("grad_norm", None, "has a grad_norm that is not a number"),
        ("sample", 5, "has a sample that is not text"),
        ("loss", 10**400, "has a loss that is not a number"),  # no float holds it: the UI's float() overflowed
    ],
)
def test_a_log_field_of_the_wrong_kind_is_one_line_wherever_the_log_is_read(
    field: str, value, message: str, trained: Path, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(trained, tmp_path / "run")
    edit_json(stem.with_name(stem.name + ".training_log.json"), lambda log: log[-1].__setitem__(field, value))
    checkpoint.seal(stem)  # as a hostile user can
    train = ["train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--steps", "4"]
    for argv in (
        ["plot", str(stem), "-o", str(tmp_path / "c.png")],
        [*train, "--resume-training", str(stem)],  # the UI draws the resumed history from the same read
        [*train, "--out-dir", str(tmp_path / "new"), "--compare", str(stem)],
    ):
        code, err = run(capsys, *argv)
        assert_one_line(code, err, message)
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- item 13: settings the UI uses
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tokens-to-generate", "-5"], "--tokens-to-generate must be >= 1 (what `g` samples), got -5"),
        (["--tokens-to-generate", "0"], "--tokens-to-generate must be >= 1 (what `g` samples), got 0"),
        (["--eval-iters", "99999999999999999999"], "--eval-iters must be at most 9223372036854775807"),
        (["--log-interval", "99999999999999999999"], "--log-interval must be at most 9223372036854775807"),
    ],
)
def test_settings_used_later_are_checked_at_the_start(flags: list[str], message: str, shakespeare_dir: Path,
                                                      tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--steps", "1",
                    "--out-dir", str(out), *flags)
    assert_one_line(code, err, message)
    assert not out.exists()


def test_a_resume_checks_the_sample_lengths_too(trained: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code, err = run(capsys, "train", "--headless", "--resume-training", str(trained), "--steps", "5",
                    "--out-dir", str(out), "--tokens-to-generate", "-5")
    assert_one_line(code, err, "--tokens-to-generate must be >= 1 (what `g` samples), got -5")
    assert not out.exists()


# ----------------------------------------------------------------------------- items 11, 13: values no chart draws
def _extreme(log: list[dict]) -> None:
    """Values a chart cannot place: NaN and inf (a diverged evaluation or gradient writes them, and json reads
    them back), losses at the float limit, zero and negative losses for a log axis, durations summing to inf."""
    log[0].update(loss=1e308, duration_ms=1e308, grad_norm=math.inf)
    log[1].update(loss=0.0, duration_ms=1e308, validation_loss=math.nan, validation_bpb=-math.inf,
                  source_validation_losses={"a": math.nan, "b": 0.0}, source_validation_bpb={"a": math.inf})
    log[2].update(validation_loss=-1e308, validation_bpb=1e308, source_validation_losses={"a": 1.0, "b": -1.0},
                  source_validation_bpb={"a": 2.0, "b": 1.5})


def _with_extreme_values(trained: Path, folder: Path) -> Path:
    stem = copy_checkpoint(trained, folder)
    edit_json(stem.with_name(stem.name + ".training_log.json"), _extreme)
    checkpoint.seal(stem)
    return stem


def test_nan_inf_and_extreme_values_are_left_out_of_the_plot(trained: Path, tmp_path: Path, capsys) -> None:
    """matplotlib failed on +-1e308 ('arange: cannot compute length'); NaN and inf are not drawn either."""
    stem = _with_extreme_values(trained, tmp_path / "run")
    for metric in ("loss", "bpb"):
        image = tmp_path / f"{metric}.png"
        code, err = run(capsys, "plot", str(stem), str(trained), "-o", str(image), "--metric", metric)
        assert code == 0, err
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ui_resumes_and_compares_a_log_with_nan_inf_and_extreme_values(trained: Path, tmp_path: Path) -> None:
    """plotext failed on inf and +-1e308 ('cannot convert float NaN to integer') and on a loss of 0 on the log
    axis; the status line on durations summing to inf. The chart leaves those points out."""
    stem = _with_extreme_values(trained, tmp_path / "run")
    earlier = read_run(stem)
    resumed = build_trainer({"steps": 5, "device": "cpu", "out_dir": str(tmp_path / "more")}, resume=str(stem))
    app = TrainingApp(resumed, start_paused=True, compare=(earlier.name, earlier.log))

    async def drive() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            chart = app.chart
            await wait_for(pilot, lambda: chart.draws > 0, "the resumed chart")
            assert chart.train_steps == [2, 3]  # step 1's loss of 1e308 left out
            assert "time -" in app.status_text()  # not a number of hours
            for key in ("l", "b", "b"):  # the log axis (losses of 0 and -1), bits per byte, loss again
                drawn = chart.draws
                await pilot.press(key)
                await wait_for(pilot, lambda drawn=drawn: chart.draws > drawn, f"the chart redrawn after {key}")
            await pilot.press("p")
            await wait_for(pilot, lambda: app.finished is not None, "the resumed run to finish")
            assert app.finished.reason == "completed", app.finished.message
            assert chart.train_steps == [2, 3, 4, 5]
            await pilot.press("q")

    asyncio.run(drive())
    assert app.return_value == 0
