"""runs.py through the real CLI: no run replaces or mixes another's checkpoints, a resume writes beside its
checkpoint, an unwritable or full --out-dir is found before training, and kill -9 leaves no damaged set."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS

from nanogpt import checkpoint
from nanogpt.store import runs
from nanogpt.cli import main
from nanogpt.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src"


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", "--headless", *TINY_FLAGS, *args])
    out, err = capsys.readouterr()
    return code, out, err


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def one_line_error(code: int, err: str) -> str:
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_a_second_run_into_a_typed_out_dir_is_refused(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    data = ["--data-dir", str(shakespeare_dir), "--out-dir", str(out), "--steps", "2"]
    assert train(capsys, *data, "--seed", "1")[0] == 0
    before = contents(out)
    line = one_line_error(*train(capsys, *data, "--seed", "2")[::2])
    assert f"{out} holds another run's checkpoints (up to model_step_2)" in line
    assert f"give another --out-dir, or continue that run with --resume-training {out / 'model_step_2'}" in line
    assert contents(out) == before


def test_the_default_out_dir_moves_to_a_free_one_and_says_so(
    shakespeare_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The README's sequence: `nanogpt train`, then the `train --data-dir data/my_text` prepare prints, into out/."""
    monkeypatch.chdir(tmp_path)
    data = ["--data-dir", str(shakespeare_dir), "--steps", "2"]
    assert train(capsys, *data)[0] == 0
    before = contents(tmp_path / "out")
    code, out, err = train(capsys, *data, "--seed", "2")
    assert code == 0, err
    assert "out holds another run's checkpoints: this run writes into out-2" in err
    assert out.splitlines()[-1] == "checkpoint: out-2/model_step_2"
    assert contents(tmp_path / "out") == before


def test_a_resume_writes_beside_its_checkpoint_not_where_its_config_says(
    shakespeare_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    run1 = tmp_path / "run1"
    data = ["--data-dir", str(shakespeare_dir), "--out-dir", str(run1), "--save-interval", "3"]
    assert train(capsys, *data, "--steps", "6")[0] == 0
    before = contents(run1)
    copy = tmp_path / "copy"
    shutil.copytree(run1, copy)
    # the copy's config names run1 (absolute) as its out_dir, as a hostile or stale file could
    config = copy / "model_step_6.config.json"
    meta = json.loads(config.read_text())
    meta["train"]["out_dir"] = str(run1)
    config.write_text(json.dumps(meta))
    checkpoint.seal(copy / "model_step_6")
    monkeypatch.chdir(tmp_path / "..")  # from another working directory
    code, out, err = train(capsys, "--resume-training", str(copy / "model_step_6"), "--steps", "8")
    assert code == 0, err
    assert out.splitlines()[-1] == f"checkpoint: {copy / 'model_step_8'}"
    assert contents(run1) == before
    # an earlier step of the copy: its folder holds later ones, so resuming there would mix two histories
    line = one_line_error(*train(capsys, "--resume-training", str(copy / "model_step_3"), "--steps", "8")[::2])
    assert "holds model_step_8, later than the step 3 resumed" in line and "--out-dir" in line
    # ... which a new folder takes
    code, out, err = train(
        capsys, "--resume-training", str(copy / "model_step_3"), "--steps", "5", "--out-dir", str(tmp_path / "b")
    )
    assert code == 0, err
    assert sorted(checkpoint.read_log(tmp_path / "b" / "model_step_5")[i]["step"] for i in range(5)) == [1, 2, 3, 4, 5]
    assert contents(run1) == before


def test_a_resume_into_another_runs_folder_is_refused(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    for name in ("a", "b"):
        data = ["--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / name)]
        assert train(capsys, *data, "--steps", "2")[0] == 0
    line = one_line_error(
        *train(capsys, "--resume-training", str(tmp_path / "a" / "model_step_2"), "--steps", "4",
               "--out-dir", str(tmp_path / "b"))[::2]
    )
    assert "holds another run's checkpoints" in line


def test_resuming_to_a_step_already_done_says_so(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    assert train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path), "--steps", "3")[0] == 0
    stem = tmp_path / "model_step_3"
    for steps in ([], ["--steps", "3"], ["--steps", "2"]):
        line = one_line_error(*train(capsys, "--resume-training", str(stem), *steps)[::2])
        assert "has done 3 steps and --steps is" in line and "give --steps above 3 to train further" in line


def test_a_folder_in_use_by_another_run_is_refused(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    held = runs.claim(tmp_path, 0, 0)  # what a running `nanogpt train` holds on its folder
    try:
        line = one_line_error(
            *train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path), "--steps", "1")[::2]
        )
        assert f"{tmp_path} is in use by another nanogpt run" in line
    finally:
        held.release()
    assert train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path), "--steps", "1")[0] == 0


def test_an_out_dir_that_cannot_take_files_is_found_before_training(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"), (tmp_path / "file" / "sub", "cannot write")):
        code, out_text, err = train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(out), "--steps", "50")
        assert message in one_line_error(code, err)
        assert "| loss" not in out_text  # not a step was trained


def test_leftovers_of_a_killed_save_are_removed_at_the_next_run(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    assert train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path), "--steps", "2")[0] == 0
    whole = contents(tmp_path)
    # what kill -9 leaves in the middle of saving step 3: the first file of its set, a temporary file of the
    # next, and the temporary folder safetensors wrote the weights in, its own temporary file inside
    dead = _dead_pid()
    (tmp_path / "model_step_3.resume.safetensors").write_bytes(b"x" * 10)
    (tmp_path / f".model_step_3.resume.json.{dead}-0123abcd.tmp").write_bytes(b"x")
    box = tmp_path / f".model_step_3.safetensors.{dead}-4567abcd.tmp"
    box.mkdir()
    (box / "model_step_3.safetensors").write_bytes(b"")
    (box / ".tmpAb12Cd").write_bytes(b"x")
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoint.read(tmp_path / "model_step_3")  # refused in one line until it is removed
    code, _, err = train(capsys, "--resume-training", str(tmp_path / "model_step_2"), "--steps", "4")
    assert code == 0, err
    names = set(contents(tmp_path))
    assert names == set(whole) | {"model_step_4" + s for s in checkpoint.SUFFIXES}
    # the sets written before are untouched (best.json names the best of the run so far: it may move on)
    assert all(contents(tmp_path)[n] == b for n, b in whole.items() if n != runs.BEST_FILE)


def _dead_pid() -> int:
    """The pid of a process that has ended (a writer killed long ago)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def check_every_set(folder: Path, whole_before: dict[str, bytes]) -> dict[str, bytes]:
    """Every set in `folder` reads whole or is refused with a UserError; sets whole before are unchanged."""
    sealed = {}
    for step in sorted(runs.sets_in(folder).whole | runs.sets_in(folder).partial):
        stem = checkpoint.stem_for(folder, step)
        try:
            assert checkpoint.read(stem).step == step
            checkpoint.load_model(stem)
        except UserError as e:
            assert "\n" not in str(e)
            assert not Path(str(stem) + checkpoint.MANIFEST).exists(), f"a sealed set refused: {e}"
        else:
            for path in runs.sets_in(folder).whole[step]:
                sealed[path.name] = path.read_bytes()
    for name, data in whole_before.items():
        assert sealed.get(name) == data, f"{name} changed after it was whole"
    return sealed


def kill_loop(shakespeare_dir: Path, folder: Path, kills: int, seed: int) -> None:
    """kill -9 at random moments of real runs that save every step, each resuming from the last whole set."""
    rng = random.Random(seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    sealed: dict[str, bytes] = {}
    for _ in range(kills):
        whole = sorted(runs.sets_in(folder).whole)
        start = ["--resume-training", str(checkpoint.stem_for(folder, whole[-1]))] if whole else [
            *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(folder)]
        cmd = [sys.executable, "-m", "nanogpt", "train", "--headless", *start, "--steps", "100000",
               "--save-interval", "1", "--log-interval", "100000"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline()  # the run has started (its first line); now a random moment
            try:
                proc.wait(timeout=rng.uniform(0.05, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
        sealed = check_every_set(folder, sealed)


def test_kill_9_at_random_moments_leaves_every_set_whole_or_refused(shakespeare_dir: Path, tmp_path: Path) -> None:
    kill_loop(shakespeare_dir, tmp_path, kills=3, seed=1)


@pytest.mark.slow
def test_kill_9_many_times_leaves_every_set_whole_or_refused(shakespeare_dir: Path, tmp_path: Path) -> None:
    kill_loop(shakespeare_dir, tmp_path, kills=10, seed=2)


@pytest.fixture
def small_disk(tmp_path: Path):
    """mount(size, *options): a fresh tmpfs of `size` in tmp_path (skips where mounting is not allowed)."""
    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        opts = ",".join((f"size={size}", *options))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_a_full_or_read_only_out_dir_is_found_before_training(
    shakespeare_dir: Path, small_disk, capsys
) -> None:
    for disk, message in (
        (small_disk("64k"), "has 0.1 MB free; a checkpoint of this run needs about "),
        (small_disk("1m", "ro"), "Read-only file system"),
    ):
        code, out, err = train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(disk), "--steps", "50")
        assert message in one_line_error(code, err)
        assert "| loss" not in out  # not a step was trained


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint_and_leaves_no_partial_set(
    shakespeare_dir: Path, small_disk, capsys
) -> None:
    disk = small_disk("1m")  # room for the start's check and two checkpoints of ~330 kB, not three
    code, out, err = train(capsys, "--data-dir", str(shakespeare_dir), "--out-dir", str(disk), "--steps", "50",
                           "--save-interval", "1")
    line = one_line_error(code, err)
    assert line == f"nanogpt train: error: cannot write checkpoint {disk / 'model_step_3'}: No space left on device"
    assert sorted(p.name for p in disk.iterdir()) == sorted(
        f"model_step_{n}{s}" for n in (1, 2) for s in checkpoint.SUFFIXES
    )
    assert checkpoint.read(disk / "model_step_2").step == 2
    checkpoint.load_model(disk / "model_step_2")
