"""The best checkpoint by validation loss and the overfitting notice, through the real CLI on CPU.

A run made to overfit at once (engine_fixtures.OVERFIT on `overfit_dir`). Nothing here names the step where
its validation loss turns: the tests read it from the run's own log.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from engine_fixtures import OVERFIT

from nanogpt.store import runs
from nanogpt.checkpoint import read_log
from nanogpt.cli import main
from nanogpt.train.best import rising_while_training_falls

def flags(settings: dict) -> list[str]:
    """Command-line flags for `settings` (field names as in engine_fixtures.OVERFIT)."""
    named = {"n_layer": "--layer-count", "n_head": "--head-count", "n_embd": "--embedding-size"}
    out: list[str] = []
    for name, value in settings.items():
        flag = named.get(name, "--" + name.replace("_", "-"))
        out += [f"--{'no-' if value is False else ''}{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return out


OVERFIT_FLAGS = flags(OVERFIT)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def evaluations(stem: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["validation_loss"]) for e in read_log(stem) if "validation_loss" in e]


@pytest.fixture(scope="module")
def stopped_run(overfit_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run with --stop-when-overfitting (300 steps asked for): its folder and its headless output."""
    folder, out = tmp_path_factory.mktemp("runs") / "run", io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", "--headless", *OVERFIT_FLAGS, "--data-dir", str(overfit_dir), "--out-dir", str(folder),
                     "--steps", "300", "--stop-when-overfitting"])
    assert code == 0
    return folder, out.getvalue()


def test_the_run_keeps_its_best_set_and_names_it_in_best_json(stopped_run: tuple[Path, str]) -> None:
    folder, _ = stopped_run
    latest = runs.latest_in(folder)
    evals = evaluations(latest)
    best_step, best_val = min(evals, key=lambda e: e[1])
    assert json.loads((folder / "best.json").read_text()) == {
        "step": best_step, "stem": f"model_step_{best_step}", "validation_loss": best_val,
    }
    assert best_step < int(latest.name.rsplit("_", 1)[1])  # the run went on past its best
    # the sets written only for being the best at their time are gone once a better one was kept
    assert sorted(runs.sets_in(folder).whole) == [best_step, evals[-1][0]]
    assert not runs.sets_in(folder).partial


def test_the_flag_stops_the_run_where_it_says_it_overfits(stopped_run: tuple[Path, str]) -> None:
    folder, out = stopped_run
    notices = [line for line in out.splitlines() if "overfitting:" in line]
    assert len(notices) == 1 and "stopping (--stop-when-overfitting)" in notices[0], out
    stopped_at = int(notices[0].split("/")[0].split()[1])
    assert runs.latest_in(folder).name == f"model_step_{stopped_at}"
    evals = [v for _, v in evaluations(runs.latest_in(folder))]
    assert evals[-4] < evals[-3] < evals[-2] < evals[-1]  # three rises in a row, the default
    best = runs.read_best(folder)
    assert best is not None and f"best kept: {folder / best.stem} (val {best.validation_loss:.4f})" in (
        notices[0]
    )


def test_generate_and_export_take_the_best_and_say_so(stopped_run: tuple[Path, str], tmp_path: Path, capsys) -> None:
    folder, _ = stopped_run
    best, latest = runs.read_best(folder), runs.latest_in(folder)
    assert best is not None
    said = (f"{folder} is a run folder: using its best checkpoint by validation loss, {folder / best.stem} "
            f"(val {best.validation_loss:.4f}; latest is {latest}, val ")
    code, out, err = run(capsys, "generate", str(folder), "--tokens-to-generate", "5", "--device", "cpu")
    assert code == 0 and said in err, err
    assert f"{folder / best.stem}: " in err  # the model it loaded
    code, out, err = run(capsys, "export", str(folder), str(tmp_path / "hf"))
    assert code == 0 and said in err and out.strip() == f"exported {folder / best.stem} to {tmp_path / 'hf'}"
    code, out, err = run(capsys, "generate", str(latest), "--tokens-to-generate", "5", "--device", "cpu")
    assert code == 0 and "run folder" not in err  # a stem given is used as is


def test_a_resume_takes_the_latest_and_keeps_the_best(
    stopped_run: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(stopped_run[0], folder)
    best_before, latest = runs.read_best(folder), runs.latest_in(folder)
    assert best_before is not None
    done = int(latest.name.rsplit("_", 1)[1])
    # without the flag now: it says the run overfits (the rises before the resume count) and goes on
    code, out, err = run(capsys, "train", "--headless", "--resume-training", str(folder), "--steps", str(done + 30),
                         "--no-stop-when-overfitting")
    assert code == 0, err
    assert f"{folder} is a run folder: resuming its latest checkpoint, {latest} (a resume continues the latest; " \
        f"its best by validation loss, which generate and export take, is {folder / best_before.stem})" in err
    assert runs.latest_in(folder).name == f"model_step_{done + 30}"
    evals = evaluations(runs.latest_in(folder))
    best_step, best_val = min(evals, key=lambda e: e[1])
    assert runs.read_best(folder) == runs.Best(best_step, f"model_step_{best_step}", best_val)
    if best_step == best_before.step:  # no better one after the resume: the one from before is still there
        assert (folder / f"{best_before.stem}.safetensors").is_file()
    # said once, at the first evaluation after the resume where the rule holds (if one does)
    log = read_log(runs.latest_in(folder))
    holds = [e["step"] for i, e in enumerate(log) if e["step"] > done and "validation_loss" in e
             and rising_while_training_falls(log[: i + 1], 3)]
    notices = [line for line in out.splitlines() if "overfitting:" in line]
    assert [int(line.split("/")[0].split()[1]) for line in notices] == holds[:1], out
    assert all("--stop-when-overfitting stops a run here" in line for line in notices)


def test_overfitting_is_rises_while_the_training_loss_falls() -> None:
    def log(vals: list[float], train: list[float]) -> list[dict]:
        return [{"step": i + 1, "loss": t, "validation_loss": v} for i, (v, t) in enumerate(zip(vals, train))]

    assert rising_while_training_falls(log([3, 2, 2.1, 2.2, 2.3], [3, 2, 1.5, 1.2, 1.0]), 3)
    assert not rising_while_training_falls(log([3, 2, 2.1, 2.2, 2.3], [3, 2, 2.5, 2.6, 2.7]), 3)  # training rose
    assert not rising_while_training_falls(log([3, 2, 2.1, 2.05, 2.3], [3, 2, 1.5, 1.2, 1.0]), 3)  # a fall between
    assert not rising_while_training_falls(log([2, 2.1, 2.2, 2.3], [3, 2, 1.5, 1.2]), 3)  # too few evaluations


def test_an_unreadable_best_json_falls_back_to_the_latest_and_says_why(
    stopped_run: tuple[Path, str], tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(stopped_run[0], folder)
    latest = runs.latest_in(folder)
    (folder / "best.json").write_text("{not json")
    code, _, err = run(capsys, "generate", str(folder), "--tokens-to-generate", "5", "--device", "cpu")
    assert code == 0 and f"using its latest checkpoint, {latest} (its best.json cannot be read)" in err, err
    (folder / "best.json").write_text(json.dumps({"step": 3, "stem": "model_step_3", "validation_loss": 1.0}))
    code, _, err = run(capsys, "generate", str(folder), "--tokens-to-generate", "5", "--device", "cpu")
    assert code == 0 and "its best.json names model_step_3, which is not a whole checkpoint there" in err, err
