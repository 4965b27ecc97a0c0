"""plot.py and `nanogpt plot`: real headless runs on a real two-source mixture, drawn into real images."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS

from nanogpt.cli import main
from nanogpt.plot import differing, label, read_run

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def two_runs(mixology_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Two 10-step headless runs on the mixture that differ only in learning rate; and the first one's output."""
    root = tmp_path_factory.mktemp("runs")
    outputs = []
    for name, lr in (("slow", "1e-4"), ("fast", "3e-3")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["train", "--headless", *TINY_FLAGS, "--data-dir", str(mixology_dir), "--out-dir",
                         str(root / name), "--steps", "10", "--validation-interval", "5", "--learning-rate", lr,
                         "--eval-sample-tokens", "16"])
        assert code == 0
        outputs.append(out.getvalue())
    return root / "slow", root / "fast", outputs[0]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_the_headless_lines_show_each_source_and_the_sample(two_runs) -> None:
    lines = two_runs[2].splitlines()
    val = [line for line in lines if "val loss" in line]
    assert len(val) == 2 and all("| alice " in line and "| shakespeare " in line for line in val)
    assert len([line for line in lines if "| sample " in line]) == 2
    assert all("| grad " in line for line in lines if "ms/step" in line)


def test_plot_writes_an_image_of_the_requested_size(two_runs, tmp_path: Path, capsys) -> None:
    slow, fast, _ = two_runs
    image = tmp_path / "runs.png"
    assert main(["plot", str(slow), str(fast / "model_step_10"), "-o", str(image), "--size", "640x480"]) == 0
    assert png_size(image) == (640, 480)
    assert capsys.readouterr().out.strip() == f"wrote {image}"
    svg = tmp_path / "runs.svg"
    assert main(["plot", str(slow), "-o", str(svg)]) == 0
    assert "<svg" in svg.read_text(encoding="utf-8")[:1000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.png", "runs.svg"]  # no temporary files left


def test_the_legend_names_the_settings_that_differ(two_runs) -> None:
    runs = [read_run(p) for p in two_runs[:2]]
    assert differing(runs) == ["learning_rate"]
    assert label(runs[0], ["learning_rate"]) == "slow (learning_rate=0.0001)"
    assert [e["step"] for e in runs[1].log if "source_validation_losses" in e] == [5, 10]


@pytest.mark.parametrize("what", ["folder", "file", "missing"])
def test_a_path_that_is_not_a_run_is_one_line(tmp_path: Path, capsys, what: str) -> None:
    path = {"folder": tmp_path, "file": tmp_path / "notes.txt", "missing": tmp_path / "nope"}[what]
    if what == "file":
        path.write_text("hello\n", encoding="utf-8")
    assert main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"nanogpt plot: error: {path} is not a run" in err
    assert not (tmp_path / "x.png").exists()


def test_an_image_that_is_not_png_or_svg_is_one_line(two_runs, tmp_path: Path, capsys) -> None:
    assert main(["plot", str(two_runs[0]), "-o", str(tmp_path / "x.jpg")]) == 1
    err = capsys.readouterr().err
    assert err == f"nanogpt plot: error: -o {tmp_path / 'x.jpg'}: the image must end in .png or .svg\n"
