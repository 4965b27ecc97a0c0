"""Hostile inputs, round four (issue 33), cause 1: a run's folder renamed, or removed and made anew, while the
run trains. The run keeps to the folder it locked: it never saves into, nor removes from, another folder that
took the name; it stops in one line. Two real runs, a real rename; one run paused with SIGSTOP to order them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS
from test_hostile import SRC, run
from test_hostile_folders import contents

from nanogpt import checkpoint

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}

# The run stops itself (SIGSTOP) once it has published its first best set: model_step_2, written only for being
# the best, which it removes once a better one is recorded. The profile hook watches the interpreter return
# from BestKeeper.publish, as a debugger would; the run itself is the real one.
STOP_AFTER = """
import os, signal, sys
name, file = sys.argv[1:3]
def hook(frame, event, arg):
    if event == "return" and frame.f_code.co_name == name and frame.f_code.co_filename.endswith(file):
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGSTOP)
sys.setprofile(hook)
from nanogpt.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def _wait_until_stopped(process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not _stopped(process.pid):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first run never reached its first best set"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's state from /proc")
@pytest.mark.parametrize("how", ["renamed", "removed and made anew"])
def test_a_run_whose_folder_is_moved_never_writes_into_the_folder_that_took_its_name(
    how: str, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    first = ["train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(out),
             "--steps", "8", "--validation-interval", "2", "--eval-sample-tokens", "0"]
    with subprocess.Popen([sys.executable, "-c", STOP_AFTER, "publish", "best.py", *first], env=ENV, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as a:
        try:
            _wait_until_stopped(a)
            held = sorted(p.name for p in out.iterdir())
            assert "model_step_2.safetensors" in held and "best.json" in held
            if how == "renamed":
                out.rename(tmp_path / "out-old")
            else:
                shutil.rmtree(out)
            # the second run: a whole run into a new folder of the old name, its final checkpoint model_step_2,
            # the name of the first run's superseded best set
            code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir),
                            "--out-dir", str(out), "--steps", "2", "--validation-interval", "2",
                            "--eval-sample-tokens", "0")
            assert code == 0, err
            second = contents(out)
            os.kill(a.pid, signal.SIGCONT)
            err = a.communicate(timeout=240)[1]
        finally:
            if a.poll() is None:
                a.kill()
    assert a.returncode == 1, err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and f"{out} was renamed or removed while this command held it" in lines[-1], err
    assert contents(out) == second  # the second run's checkpoint and best.json, untouched
    assert json.loads((out / "best.json").read_text())["stem"] == "model_step_2"
    assert checkpoint.read(out / "model_step_2").step == 2
    if how == "renamed":  # the first run's folder keeps its best set and the record naming it
        old = tmp_path / "out-old"
        assert json.loads((old / "best.json").read_text())["stem"] == "model_step_2"
        assert checkpoint.read(old / "model_step_2").step == 2
        assert f"(the folder it held is now {old})" in lines[-1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads a process's state from /proc")
def test_a_prepare_whose_folder_is_moved_leaves_the_dataset_that_took_its_name(tmp_path: Path, capsys) -> None:
    out, source = tmp_path / "data", tmp_path / "a.txt"
    source.write_text("the first dataset's text\n" * 2000, encoding="utf-8")
    # stopped once its bins are joined, before it replaces vocab.json and the bins by name
    with subprocess.Popen([sys.executable, "-c", STOP_AFTER, "_join", "command.py", "prepare", str(source),
                           "--tokenizer", "char", "--out-dir", str(out)], env=ENV, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as a:
        try:
            _wait_until_stopped(a)
            out.rename(tmp_path / "data-old")
            (tmp_path / "b.txt").write_text("another dataset\n" * 3000, encoding="utf-8")
            code, err = run(capsys, "prepare", str(tmp_path / "b.txt"), "--tokenizer", "char", "--out-dir", str(out))
            assert code == 0, err
            second = contents(out)
            os.kill(a.pid, signal.SIGCONT)
            err = a.communicate(timeout=120)[1]
        finally:
            if a.poll() is None:
                a.kill()
    assert a.returncode == 1, err
    assert "Traceback" not in err and f"{out} was renamed or removed while this command held it" in err, err
    assert contents(out) == second
