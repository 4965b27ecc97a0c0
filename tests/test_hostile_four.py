"""Hostile inputs, round four (issue 33), causes 3 to 7: reads bounded by the bytes read, work sized by the user,
the tracebacks left, what was accepted silently and the messages that misled. Each through the real CLI: one
line and exit code 1 (or a command that works), nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import TINY_FLAGS
from test_hostile import SRC, assert_one_line, copy_checkpoint, data_copy, edit_json, run
from test_hostile_io import bpe_trained  # noqa: F401 - a fixture

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def train(capsys, data: Path, out: Path, *args: str) -> tuple[int, str]:
    return run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--out-dir", str(out), *args)


# ----------------------------------------------------------------------------- cause 5: tracebacks left
def test_a_bpe_prompt_of_bytes_that_are_not_utf8_is_one_line(bpe_trained: Path) -> None:  # noqa: F811
    # as a shell passes them: the bytes themselves in argv (Python holds them as lone surrogates)
    done = subprocess.run([sys.executable, "-m", "nanogpt", "generate", str(bpe_trained), "--prompt", b"caf\xe9 ok",
                           "--tokens-to-generate", "3"], env=ENV, capture_output=True, text=True, timeout=120)
    assert_one_line(done.returncode, done.stderr, "the text holds byte 0xe9 at character 4, which is not UTF-8")
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "zero", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "RANK='zero' in the environment is not a whole"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "-2"}, "WORLD_SIZE='-2' in the environment is not a whole"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1" + "0" * 30}, "is not a whole number"),
        ({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"},
         "RANK=3, LOCAL_RANK=0 and WORLD_SIZE=2 in the environment: each rank must be below the world size"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}, "but MASTER_ADDR and MASTER_PORT not set"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "99999"},
         "but MASTER_PORT='99999' is not a port"),
    ],
    ids=["rank-word", "world-negative", "world-huge", "rank-past-world", "no-master", "bad-port"],
)
def test_a_torchrun_environment_torchrun_did_not_set_is_one_line(
    env: dict[str, str], message: str, shakespeare_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = train(capsys, shakespeare_dir, tmp_path / "out", "--steps", "1")
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("saved", ["../../elsewhere", ["a", "b"], "x" * 200, 7, "id with spaces"])
def test_a_tampered_wandb_id_is_one_line(saved, trained: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    stem = copy_checkpoint(trained, tmp_path / "run")
    (tmp_path / "run" / "trackers.json").write_text(json.dumps({"wandb_id": saved}), encoding="utf-8")
    code, err = run(capsys, "train", "--headless", "--resume-training", str(stem), "--steps", "4",
                    "--wandb", "nanogpt-test")
    assert_one_line(code, err, "trackers.json: its wandb_id", after_progress=True)  # after the note on --steps
    assert "is not a W&B run id" in err and not (tmp_path / "wandb").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s[1].__setitem__("val_offset", 10**12), "starts at validation token 1,000,000,000,000, where the "
                                                            "sources before it end at"),
        (lambda s: s[0].__setitem__("val_offset", 5), "starts at validation token 5, where the sources before it "
                                                      "end at 0"),
        (lambda s: s[1].__setitem__("val_tokens", s[1]["val_tokens"] + 7), "validation tokens, its val_tokens says"),
    ],
    ids=["past-the-end", "gap-at-start", "longer-than-val"],
)
def test_a_mixology_source_out_of_its_validation_range_is_refused_at_the_start(
    change, message: str, mixology_dir: Path, tmp_path: Path, capsys
) -> None:
    data = data_copy(mixology_dir, tmp_path / "data")
    edit_json(data / "vocab.json", lambda m: change(m["sources"]))
    code, err = train(capsys, data, tmp_path / "out", "--steps", "1", "--validation-interval", "1")
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_an_id_past_the_vocabulary_outside_the_spot_checked_chunks_is_one_line(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    """A train.bin over 64 M tokens is checked in 64 spread-out chunks of 1 M at the start; the ids between
    them (here 99, of a 65-character vocabulary) are found by the batch that reads them."""
    data = data_copy(shakespeare_dir, tmp_path / "data")
    n = (1 << 26) + (1 << 20)
    with open(data / "train.bin", "wb") as f:
        f.truncate(n * 2)  # a hole: zeros, token 0, no disk used
    starts = sorted({int(s) for s in np.linspace(0, n - (1 << 20), 64)})
    bad = np.full(max(b - a for a, b in zip(starts, starts[1:])), 99, dtype="<u2")
    with open(data / "train.bin", "r+b") as f:
        for a, b in zip(starts, starts[1:]):  # every gap between two checked chunks
            f.seek((a + (1 << 20)) * 2)
            f.write(bad[: b - a - (1 << 20)].tobytes())
    edit_json(data / "vocab.json", lambda m: m.__setitem__("train_tokens", n))
    code, err = train(capsys, data, tmp_path / "out", "--steps", "40")
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "holds token id 99 (batch" in last and "only 65 tokens" in last, err
    assert not any((tmp_path / "out").glob("model_step_*")) if (tmp_path / "out").exists() else True
    shutil.rmtree(data)
