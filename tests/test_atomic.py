"""atomic.py and its two users: files appear whole or not at all, made durable first, with the umask's mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt import checkpoint
from nanogpt.store.atomic import atomic_write, remove_stale_temps, temp_file
from nanogpt.cli import main


@pytest.fixture
def umask_027():
    """A umask other than the usual 022, so that a mode that ignores it shows (restored afterwards)."""
    old = os.umask(0o027)
    try:
        yield 0o640  # 0o666 minus 0o027
    finally:
        os.umask(old)


@pytest.fixture
def synced_before_rename(monkeypatch) -> list[str]:
    """Every os.replace from now on must rename a file that was fsynced first; returns the renamed names.

    os.fsync and os.replace are the operating system's, not ours: we watch them, they still do their work.
    """
    synced: set[tuple[int, int]] = set()
    renamed: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        st = os.stat(src)
        assert (st.st_dev, st.st_ino) in synced, f"{src} renamed to {dst} without an fsync"
        renamed.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return renamed


def test_temp_file_is_hidden_beside_its_target_with_the_umask_mode(tmp_path, umask_027):
    fh, tmp = temp_file(tmp_path, "train.bin")
    with fh:
        fh.write(b"abc")
    assert tmp.parent == tmp_path and tmp.name.startswith(".train.bin.") and tmp.suffix == ".tmp"
    assert tmp.stat().st_mode & 0o777 == umask_027 and tmp.read_bytes() == b"abc"
    assert temp_file(tmp_path, "train.bin")[1] != tmp  # never the same name twice


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a.json"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # the temporary file is gone


def test_checkpoint_files_get_the_umask_mode_not_0600(tmp_path, umask_027, synced_before_rename):
    checkpoint.write_json(tmp_path / "run" / "x.config.json", {"step": 1})
    checkpoint.write_tensors(tmp_path / "run" / "x.safetensors", {"w": torch.arange(6.0).reshape(2, 3)})
    for name in ("x.config.json", "x.safetensors"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == umask_027, name
    assert synced_before_rename == ["x.config.json", "x.safetensors"]
    torch.testing.assert_close(
        checkpoint.read_tensors(tmp_path / "run" / "x.safetensors", "weights")["w"], torch.arange(6.0).reshape(2, 3)
    )
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["x.config.json", "x.safetensors"]


@pytest.mark.parametrize("layout", ["file", "mixology"])
def test_prepare_syncs_each_file_before_renaming_it(tmp_path, umask_027, synced_before_rename, layout):
    if layout == "file":
        source = tmp_path / "a.txt"
        source.write_text("some words to prepare\n" * 100, encoding="utf-8")
    else:  # the bins are joined from the sources' parts: other temporary files, the same rule
        source = tmp_path / "mix"
        for name in ("50_a", "50_b"):
            (source / name).mkdir(parents=True)
            (source / name / "x.txt").write_text(f"{name} words to prepare\n" * 100, encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(source), "--out-dir", str(tmp_path / "out")]) == 0
    assert synced_before_rename == ["train.bin", "val.bin", "vocab.json"]  # vocab.json last
    for p in (tmp_path / "out").iterdir():
        assert p.stat().st_mode & 0o777 == umask_027, p.name


def test_a_long_final_name_gets_a_temporary_name_that_fits(tmp_path: Path) -> None:
    """A final name near the 255-byte limit (multi-byte characters included) is written: its temporary name
    is cut to fit, and a killed writer's temporary file of it is still told by its pid and removed."""
    name = "é" * 100 + "x" * 50 + ".png"  # 254 bytes
    target = tmp_path / name
    atomic_write(target, lambda tmp: tmp.write_bytes(b"chart"))
    assert target.read_bytes() == b"chart" and [p.name for p in tmp_path.iterdir()] == [name]
    # a writer killed after it made its temporary file (a child process that exits there)
    child = ("import os, sys; from nanogpt.store.atomic import temp_file; temp_file(sys.argv[1], sys.argv[2]); "
             "os._exit(9)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    subprocess.run([sys.executable, "-c", child, str(tmp_path), name], env=env, check=False)
    (left,) = [p for p in tmp_path.iterdir() if p.name != name]
    assert len(os.fsencode(left.name)) <= 255
    assert remove_stale_temps(tmp_path) == [left] and [p.name for p in tmp_path.iterdir()] == [name]
