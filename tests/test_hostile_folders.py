"""Hostile folders and files (issue 25, items 3, 7, 12, 15, 16): what is in an output folder, who writes there,
and what a source does between prepare's two passes, through the real CLI on real small files.

A run removes only what a killed save of ours leaves; two prepares never mix one folder; vocab.json's
sources are checked where they are read; a damaged gzip, an empty path, a source that changes: one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS
from test_hostile import SRC, assert_one_line, data_copy, edit_json, run

from nanogpt import checkpoint
from nanogpt.data import MAX_SOURCES
from nanogpt.prepare import is_prepared

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its path there, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train(capsys, data: Path, out: Path, *args: str) -> tuple[int, str]:
    return run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--out-dir", str(out), *args)


# ----------------------------------------------------------------------------- item 3: leftovers
USERS_FILES = {
    "model_step_500.safetensors": b"my weights",
    "model_step_500.training_log.json": b"[]",
    ".tmpAbC123": b"my notes",
}


def test_a_new_run_keeps_a_users_files_named_like_ours(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    """The issue's folder: set-named files without config.json that no save leaves (no resume files first),
    and a file named like safetensors' temporary ones. Kept, and the run refused: it would save over them."""
    out = tmp_path / "mine"
    out.mkdir()
    for name, data in USERS_FILES.items():
        (out / name).write_bytes(data)
    code, err = train(capsys, shakespeare_dir, out, "--steps", "2")
    assert_one_line(code, err, "model_step_500.training_log.json without its config.json: not a checkpoint")
    assert contents(out) == USERS_FILES


def test_the_default_out_dir_holding_a_users_files_moves_on(shakespeare_dir: Path, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    for name, data in USERS_FILES.items():
        (tmp_path / "out" / name).write_bytes(data)
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--steps", "1")
    assert code == 0, err
    assert "out holds files named like checkpoints: this run writes into out-2" in err
    assert contents(tmp_path / "out") == USERS_FILES and checkpoint.read(tmp_path / "out-2" / "model_step_1")


def test_a_live_writers_temporary_file_and_a_users_are_kept(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            mine = {".tmpAbC123": b"my notes", f".model_step_9.resume.json.{live.pid}-0123abcd.tmp": b"{"}
            for name, data in mine.items():
                (out / name).write_bytes(data)
            code, err = train(capsys, shakespeare_dir, out, "--steps", "2")
        finally:
            live.kill()
    assert code == 0, err
    assert {n: b for n, b in contents(out).items() if n in mine} == mine


# kill -9 (SIGKILL, which nothing can catch) when a save publishes its file number K of model_step_3: the files
# before it are in place, its own is still under its temporary name. The audit hook watches the operating
# system's rename, as strace would; the save itself is the real one.
KILL_AT_PUBLISH = """
import os, signal, sys
k, seen = int(sys.argv[1]), []
def hook(event, args):
    if event == "os.rename" and os.path.basename(os.fsdecode(args[1])).startswith("model_step_3."):
        if len(seen) == k:
            os.kill(os.getpid(), signal.SIGKILL)
        seen.append(args[1])
sys.addaudithook(hook)
from nanogpt.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("published", [0, 3])
def test_what_a_killed_save_leaves_is_removed_and_nothing_else(
    published: int, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert train(capsys, shakespeare_dir, out, "--steps", "2")[0] == 0
    resume = ["train", "--headless", *TINY_FLAGS, "--resume-training", str(out / "model_step_2"), "--steps", "3"]
    done = subprocess.run([sys.executable, "-c", KILL_AT_PUBLISH, str(published), *resume], env=ENV,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == -9, done.stderr
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(("model_step_3", ".model_step_3")))
    assert [n for n in left if not n.startswith(".")] == sorted(f"model_step_3{s}" for s in
                                                                  checkpoint.WRITE_ORDER[:published])
    (temp,) = (n for n in left if n.startswith("."))
    if published == 0:  # the weights' writer works in a folder of ours: what safetensors leaves stays in it
        assert (out / temp).is_dir()
        (out / temp / ".tmpQw3rTy").write_bytes(b"safetensors' own, cut short")
    (out / ".tmpAbC123").write_bytes(b"my notes")
    code, err = run(capsys, *resume)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if "step_3" in p.name) == sorted(
        f"model_step_3{s}" for s in checkpoint.SUFFIXES)
    assert (out / ".tmpAbC123").read_bytes() == b"my notes"
    assert checkpoint.read(out / "model_step_3").step == 3


# ----------------------------------------------------------------------------- item 7: two prepares, one folder
@contextlib.contextmanager
def held_by_another(folder: Path):
    """`folder` locked as another nanogpt command holds its output folder (flock on the folder itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prepare_command(source: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nanogpt", "prepare", "--tokenizer", "char", str(source), "--out-dir", str(out)]


def texts(folder: Path) -> tuple[Path, Path]:
    """Two sources of different sizes and characters, so that one's vocab.json never fits the other's bins."""
    folder.mkdir()
    (folder / "a.txt").write_text("the quick brown fox\n" * 20000, encoding="utf-8")
    (folder / "b.txt").write_text("JUMPS OVER THE LAZY DOG!\n" * 9000, encoding="utf-8")
    return folder / "a.txt", folder / "b.txt"


def test_a_prepare_into_a_folder_another_command_holds_is_refused(tmp_path: Path) -> None:
    a, b = texts(tmp_path / "src")
    out = tmp_path / "race"
    assert subprocess.run(prepare_command(a, out), env=ENV, capture_output=True, check=False).returncode == 0
    before = contents(out)
    with held_by_another(out):
        done = subprocess.run(prepare_command(b, out), env=ENV, capture_output=True, text=True, check=False)
    assert_one_line(done.returncode, done.stderr, f"{out} is in use by another nanogpt command writing there")
    assert contents(out) == before


def test_two_prepares_at_once_leave_one_whole_result(tmp_path: Path, capsys) -> None:
    sources = texts(tmp_path / "src")
    alone = []
    for i, source in enumerate(sources):  # what each gives on its own
        assert run(capsys, *prepare_command(source, tmp_path / f"alone{i}")[3:])[0] == 0
        alone.append(contents(tmp_path / f"alone{i}"))
    for trial in range(3):
        out = tmp_path / f"race{trial}"
        procs = [subprocess.Popen(prepare_command(s, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for s in sources]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        for p in procs:
            p.stderr.close()
        for code, err in results:
            if code != 0:  # the later one, refused while the first held the folder
                assert_one_line(code, err, "is in use by another nanogpt command writing there", after_progress=True)
        assert 0 in [code for code, _ in results]
        assert contents(out) in alone  # vocab.json and both bins from one prepare, never mixed


def test_the_bundled_corpus_waits_for_another_prepare_of_it(tmp_path: Path) -> None:
    """Two `nanogpt train` started at once both prepare the bundled corpus into one cache folder: the second
    waits for the first and takes its work (a refusal there would stop a run the user asked for)."""
    if not Path("/proc/locks").is_file():
        pytest.skip("no /proc/locks to see a waiting lock in")
    folder = tmp_path / "cache" / "tinyshakespeare-char"
    folder.mkdir(parents=True)
    code = "from nanogpt.prepare import bundled_dataset; print(bundled_dataset('char'))"
    env = {**ENV, "NANOGPT_CACHE_DIR": str(tmp_path / "cache")}
    with held_by_another(folder):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while not any(line.split()[1] == "->" and line.split()[5] == str(proc.pid) for line in
                      Path("/proc/locks").read_text().splitlines() if len(line.split()) > 5):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == str(folder) and is_prepared(folder)


# ----------------------------------------------------------------------------- item 15: a damaged .gz
def _gz(text: bytes) -> bytes:
    return gzip.compress(text, mtime=0)


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def _bad_deflate(text: bytes) -> bytes:
    """A gzip member whose deflate stream is damaged right after its start (zlib.error, not a CRC)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = packer.compress(text) + packer.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + _flip(_flip(body, 5), 6) + struct.pack("<II", zlib.crc32(text), len(text))


HELLO = b"hello world\n" * 3000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # cut short after a byte that is not UTF-8: looking up its offset read on into the cut (EOFError)
        (_gz(HELLO + b"\xff\xfe" + b"abc" * 3000)[:-10], "is not a whole gzip file (Compressed file ended"),
        (_flip(_gz(HELLO), -6), "is not a whole gzip file (CRC check failed"),
        (_gz(HELLO)[:-4] + struct.pack("<I", 1), "is not a whole gzip file (Incorrect length of data produced"),
        (_bad_deflate(HELLO), "is not a whole gzip file (Error -3 while decompressing data"),
        (_gz(HELLO) + b"not gzip", "is not a whole gzip file (Not a gzipped file"),
    ],
    ids=["cut-after-a-bad-byte", "bad-crc", "bad-length", "bad-deflate", "garbage-after-it"],
)
def test_a_damaged_gzip_source_is_one_line(data: bytes, message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "t.txt.gz").write_bytes(data)
    code, err = run(capsys, "prepare", "--tokenizer", "char", str(tmp_path / "t.txt.gz"), "--out-dir",
                    str(tmp_path / "out"))
    assert_one_line(code, err, f"t.txt.gz {message}", after_progress=True)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- item 16: '' and a changing source
@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out-dir", ""], ["train", "--data-dir", ""], ["train", "--resume-training", ""],
        ["train", "--vocab-metadata", ""], ["train", "--init-from", ""], ["train", "--tensorboard", ""],
        ["prepare", ""], ["prepare", "t.txt", "--out-dir", ""],
        ["generate", ""], ["generate", "x", "--vocab-metadata", ""],
        ["export", "", "x"], ["export", "x", ""], ["plot", "", "-o", "x.png"], ["plot", "x", "-o", ""],
    ],
    ids=lambda args: "-".join(a.strip("-") or "EMPTY" for a in args),
)
def test_an_empty_path_is_refused_before_anything_runs(args: list[str], tmp_path: Path, capsys, monkeypatch) -> None:
    """Path('') is the current folder: `train --out-dir ''` trained into it."""
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *args)
    assert_one_line(code, err, "an empty path names no file or folder")
    assert list(tmp_path.iterdir()) == []


# The source changes under prepare between its two passes (when it creates its first part file) or as its second
# pass opens it: cut by 5%, grown, or rewritten in place at the same size with a later modification time (as an
# editor's save gives it). The audit hook sees the opens as strace would; prepare itself is the real one.
CHANGE_SOURCE = """
import os, sys
source, when, how, out = sys.argv[1:5]
seen, busy = [], []
def change():
    busy.append(1)  # the opens below are audited too
    if how == "cut":
        os.truncate(source, os.stat(source).st_size * 95 // 100)
    elif how == "grown":
        fd = os.open(source, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"and then some more text\\n" * 100)
        os.close(fd)
    else:
        st = os.stat(source)
        fd = os.open(source, os.O_WRONLY)
        os.write(fd, b"green the")  # characters it has: the char table still fits
        os.close(fd)
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
def hook(event, args):
    if event != "open" or busy or not isinstance(args[0], str):
        return
    if when == "between" and os.path.basename(args[0]).startswith(".train-0."):
        change()
    elif when == "during" and args[0] == source:
        seen.append(1)
        if len(seen) == 2:
            change()
sys.addaudithook(hook)
from nanogpt.cli import main
sys.exit(main(["prepare", "--tokenizer", "char", source, "--out-dir", out]))
"""


@pytest.mark.parametrize("how", ["cut", "grown", "rewritten"])
@pytest.mark.parametrize("when", ["between", "during"])
def test_a_source_that_changes_between_the_passes_is_refused(when: str, how: str, tmp_path: Path) -> None:
    a, _ = texts(tmp_path / "src")
    out = tmp_path / "out"
    assert subprocess.run(prepare_command(a, out), env=ENV, capture_output=True, check=False).returncode == 0
    before = contents(out)
    (tmp_path / "src" / "c.txt").write_text("the slow green turtle\n" * 20000, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", CHANGE_SOURCE, str(tmp_path / "src" / "c.txt"), when, how, str(out)],
                          env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert_one_line(done.returncode, done.stderr, "a source file changed while prepare was reading it",
                    after_progress=True)
    assert contents(out) == before  # no half output: the last prepare's files, as they were


# ----------------------------------------------------------------------------- item 12: vocab.json's sources
def _sources_of_one_token(meta: dict) -> list[dict]:
    """A source per validation token (or MAX_SOURCES + 1 of them): no prepare writes that many."""
    n = min(meta["val_tokens"], MAX_SOURCES + 1)
    ends = [*range(n), meta["val_tokens"]]
    return [{"name": f"s{i}", "val_offset": ends[i], "val_tokens": ends[i + 1] - ends[i]} for i in range(n)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["sources"][0].pop("name"), "source 0 has no name"),
        (lambda m: m["sources"][1].__setitem__("name", 7), "source 1 has no name"),
        (lambda m: m["sources"][1].__setitem__("name", "x" * 256), "source 1 has no name"),
        (lambda m: m["sources"].__setitem__(0, "alice"), "source 0 has no name"),
        (lambda m: m["sources"][0].__setitem__("val_tokens", "12"), "source 'alice' has val_tokens '12', not a count"),
        (lambda m: m["sources"][1].__setitem__("val_offset", -1), "has val_offset '-1', not a count"),
        (lambda m: m["sources"][1].__setitem__("path", ["x"]), "source 'shakespeare' has a path that is not a text"),
        (lambda m: m.__setitem__("sources", {"alice": 1}), "lists a dict under 'sources'"),
        (lambda m: m.__setitem__("sources", _sources_of_one_token(m)), "lists 101 sources under 'sources'"),
    ],
    ids=["no-name", "name-int", "name-too-long", "not-a-dict", "count-str", "count-negative", "path-list",
         "sources-dict", "too-many"],
)
def test_vocab_sources_are_checked_where_read(change, message: str, mixology_dir: Path, tmp_path: Path,
                                              capsys) -> None:
    data = data_copy(mixology_dir, tmp_path / "data")
    edit_json(data / "vocab.json", change)
    code, err = train(capsys, data, tmp_path / "out", "--steps", "1")
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_the_most_sources_with_shared_names_are_told_apart(mixology_dir: Path, tmp_path: Path, capsys) -> None:
    """The most sources prepare writes, every name shared by two (10_web/, 20_web/): told apart by their folder."""
    data = data_copy(mixology_dir, tmp_path / "data")
    sources = _sources_of_one_token(json.loads((data / "vocab.json").read_text()))[:MAX_SOURCES]
    sources[-1]["val_tokens"] = json.loads((data / "vocab.json").read_text())["val_tokens"] - sources[-1]["val_offset"]
    for i, s in enumerate(sources):
        s.update(name=f"web{i // 2}", path=f"{i}_web{i // 2}/")
    edit_json(data / "vocab.json", lambda m: m.__setitem__("sources", sources))
    code, err = train(capsys, data, tmp_path / "out", "--steps", "1", "--validation-interval", "1")
    assert code == 0, err
    log = checkpoint.read_log(tmp_path / "out" / "model_step_1")
    evaluated = next(e["source_validation_losses"] for e in log if "source_validation_losses" in e)
    assert list(evaluated) == ["99_web49"]  # the one source longer than a window, named by its folder
