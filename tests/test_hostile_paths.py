"""Hostile input, round three (issue 25): paths, JSON files, permissions and output streams.

Each mechanism is mended once (files.read_json, files.json_bytes, files.utf8_name, cli.main's edge) and each
case here goes through the real CLI: one line on stderr and exit code 1, or, where the input is legitimate
(a path in non-UTF-8 bytes, a damaged cache), a run that works.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY_FLAGS
from test_hostile import assert_one_line, copy_checkpoint, run

from nanogpt import checkpoint
from nanogpt.runtime import dtype_probe

SRC = Path(__file__).resolve().parents[1] / "src"
DEEP = "[" * 200_000 + "]" * 200_000  # 400 KB of JSON nested past any recursion limit


def nanogpt(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m nanogpt ARGS` in a child process (bytes out)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), **(env or {})}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.run([sys.executable, "-m", "nanogpt", *args], env=env, check=False, timeout=300,
                          **{**streams, **kwargs})


# ----------------------------------------------------------------------------- item 2: paths in any bytes
def test_a_path_that_is_not_utf8_is_taken_as_it_is(shakespeare_dir: Path, tmp_path: Path) -> None:
    """Linux paths are bytes: a data and a run folder named in Latin-1 train, save, resume, generate and
    export, and the line that names the checkpoint gives back the very bytes."""
    data = Path(os.fsdecode(bytes(tmp_path) + b"/dat\xe9"))
    out = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    shutil.copytree(shakespeare_dir, data)
    train = ["train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--out-dir", str(out)]
    done = nanogpt(*train, "--steps", "2", env={"NANOGPT_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == b"checkpoint: " + bytes(tmp_path) + b"/caf\xe9/model_step_2"
    saved = checkpoint.read_meta(out / "model_step_2")
    assert saved["train"]["out_dir"] == str(out) and saved["train"]["data_dir"] == str(data)

    hf = Path(os.fsdecode(bytes(tmp_path) + b"/hf\xe9"))
    for args in (  # in child processes: pytest's capture reads what they print as UTF-8
        [*train, "--steps", "3", "--resume-training", str(out / "model_step_2")],
        ["generate", str(out), "--tokens-to-generate", "5"],
        ["export", str(out / "model_step_3"), str(hf)],
    ):
        done = nanogpt(*args)
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr[-2000:]
    assert (hf / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- item 8: JSON nested too deep
def _deep(path: Path, reseal: bool = True) -> None:
    path.write_text(DEEP)
    if reseal:  # as a hostile user can: the manifest then vouches for the edited file
        checkpoint.seal(checkpoint.stem_of(path))


@pytest.mark.parametrize("suffix", [".config.json", ".training_log.json", ".resume.json", ".manifest.json"])
def test_checkpoint_json_nested_too_deep_is_one_line(suffix: str, trained: Path, tmp_path: Path, capsys) -> None:
    stem = copy_checkpoint(trained, tmp_path / "run")
    checkpoint.seal(stem)
    _deep(stem.with_name(stem.name + suffix), reseal=suffix != ".manifest.json")
    code, err = run(capsys, "train", "--headless", "--resume-training", str(stem), "--steps", "4")
    assert_one_line(code, err, "nested too deeply")


def test_vocabularies_nested_too_deep_are_one_line(shakespeare_dir: Path, trained: Path, tmp_path: Path,
                                                   capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(shakespeare_dir, data)
    _deep(data / "vocab.json", reseal=False)
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--steps", "1",
                    "--out-dir", str(tmp_path / "out"))
    assert_one_line(code, err, "nested too deeply")
    assert not (tmp_path / "out").exists()
    code, err = run(capsys, "generate", str(trained), "--vocab-metadata", str(data / "vocab.json"))
    assert_one_line(code, err, "nested too deeply")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_a_hugging_face_folder_nested_too_deep_is_one_line(name: str, trained: Path, tmp_path: Path,
                                                           shakespeare_dir: Path, capsys) -> None:
    hf = tmp_path / "hf"
    assert run(capsys, "export", str(trained), str(hf))[0] == 0
    _deep(hf / name, reseal=False)
    code, err = run(capsys, "train", "--headless", "--init-from", str(hf), "--data-dir", str(shakespeare_dir),
                    "--steps", "1", "--out-dir", str(tmp_path / "out"))
    assert_one_line(code, err, "nested too deeply")


def test_damaged_caches_are_rebuilt_not_fatal(tmp_path: Path, monkeypatch, capsys) -> None:
    """The dtype probe's cache and the bundled corpus's prepared vocabulary are ours to rebuild: a bare
    `nanogpt train --dtype auto` over both poisoned measures again, prepares again, and trains."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(cache))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)  # the probe runs anywhere
    flags = [f if f != "float32" else "auto" for f in TINY_FLAGS]
    assert "--dtype" in TINY_FLAGS and "auto" in flags
    first = ["train", "--headless", *flags, "--steps", "1"]
    assert run(capsys, *first, "--out-dir", str(tmp_path / "a"))[0] == 0
    probe = cache / dtype_probe.CACHE_FILE
    (vocab,) = cache.glob("tinyshakespeare-*/vocab.json")
    assert probe.is_file()
    _deep(probe, reseal=False)
    _deep(vocab, reseal=False)
    code, err = run(capsys, *first, "--out-dir", str(tmp_path / "b"))
    assert code == 0, err
    assert "preparing the bundled" in err and "measured now" in err
    assert json.loads(probe.read_text()) and json.loads(vocab.read_text())["vocab_size"] > 0  # whole again


# ----------------------------------------------------------------------------- item 9: names over 255 bytes
LONG = "x" * 300


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--headless", "--data-dir", LONG],
        ["train", "--headless", "--data-dir", "{data_dir}", "--out-dir", f"runs/{LONG}/a"],
        ["train", "--headless", "--training-dataset", LONG, "--validation-dataset", "{data_dir}/val.bin"],
        ["train", "--headless", "--training-dataset", "{data_dir}/train.bin", "--validation-dataset", LONG],
        ["train", "--headless", "--training-dataset", "{data_dir}/train.bin", "--validation-dataset",
         "{data_dir}/val.bin", "--vocab-metadata", LONG],
        ["train", "--headless", "--resume-training", LONG],
        ["train", "--headless", "--data-dir", "{data_dir}", "--init-from", LONG],
        ["train", "--headless", "--data-dir", "{data_dir}", "--compare", LONG],
        ["generate", LONG],
        ["prepare", LONG],
        ["prepare", "{data}", "--out-dir", f"o/{LONG}"],
        ["export", LONG, "out"],
        ["export", "{stem}", f"o/{LONG}"],
        ["export", "{stem}", f"o/{LONG}", "--format", "gguf"],
        ["plot", LONG, "-o", "p.png"],
        ["plot", "{stem}", "-o", f"{LONG}.png"],
        ["plot", "{stem}", "-o", "x" * 249 + ".png"],  # the file fits; its temporary name must too
        ["export", "{stem}", "y" * 250],  # and the temporary folder of an export
    ],
    ids=lambda a: " ".join(x if len(x) < 20 else f"<{len(x)}>" for x in a),
)
def test_a_name_over_255_bytes_is_one_line(args: list[str], trained: Path, shakespeare_dir: Path, tmp_path: Path,
                                           monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("some text to prepare\n" * 50)
    args = [a.format(data="t.txt", stem=str(trained), data_dir=shakespeare_dir) for a in args]
    code, err = run(capsys, *args, *(TINY_FLAGS if args[0] == "train" else []))
    if len(args[-1]) in (250, 253):  # names that fit: written, and nothing else left beside them
        assert code == 0 and (tmp_path / args[-1]).exists(), err
        assert {p.name for p in tmp_path.iterdir()} == {args[-1], "t.txt"}, err
        return
    assert_one_line(code, err, "", after_progress=True)  # prepare's progress may come first
    assert "File name too long" in err or "not found" in err or "no such" in err.lower(), err
    assert len(err.strip().splitlines()[-1]) < 600  # the long name is shortened in the line


# ----------------------------------------------------------------------------- item 10: permissions
def _without_root_override() -> None:
    """In the child, before exec: drop root's capabilities to read and search anything (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH) from the bounding set, so the exec'd process is refused as any user would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            os._exit(99)


def reachable(path: Path) -> None:
    """Open `path` and the folders above it to others (mode 755), so that an ordinary user reaches the files
    in it, to be refused by them (as root, pytest's temporary folders are private to root)."""
    for p in (path, *path.parents):
        if p != Path("/") and os.geteuid() == 0:
            p.chmod(p.stat().st_mode | 0o755)


def as_user(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """`nanogpt ARGS` as an ordinary user would meet permissions (root's override dropped where we are root)."""
    return nanogpt(*args, preexec_fn=_without_root_override if os.geteuid() == 0 else None, **kwargs)


@pytest.fixture
def locked(trained: Path, shakespeare_dir: Path, tmp_path: Path):
    """A data folder, a checkpoint copy and a text, each made unreadable in the test (restored after)."""
    made: list[Path] = []

    def lock(path: Path) -> Path:
        made.append(path)
        path.chmod(0)
        return path

    yield lock
    for path in made:
        path.chmod(0o755)


@pytest.mark.skipif(sys.platform != "linux", reason="permissions as Linux has them")
@pytest.mark.parametrize(
    ("what", "args"),
    [
        ("data/vocab.json", ["train", "--headless", "--data-dir", "{data}", "--steps", "1", "--out-dir", "{out}"]),
        ("data/train.bin", ["train", "--headless", "--data-dir", "{data}", "--steps", "1", "--out-dir", "{out}"]),
        ("data", ["train", "--headless", "--data-dir", "{data}", "--steps", "1", "--out-dir", "{out}"]),
        ("ro", ["train", "--headless", "--data-dir", "{data}", "--steps", "1", "--out-dir", "{ro}/run"]),
        ("run/model_step_3.config.json", ["generate", "{run}/model_step_3"]),
        ("run/model_step_3.safetensors", ["generate", "{run}/model_step_3"]),
        ("run/model_step_3.training_log.json", ["plot", "{run}/model_step_3", "-o", "{out}.png"]),
        ("run", ["generate", "{run}"]),
        ("run/model_step_3.safetensors", ["export", "{run}/model_step_3", "{out}"]),
        ("ro", ["export", "{run}/model_step_3", "{ro}/hf"]),
        ("ro", ["plot", "{run}/model_step_3", "-o", "{ro}/p.png"]),
        ("t.txt", ["prepare", "{tmp}/t.txt", "--out-dir", "{out}"]),
        ("ro", ["prepare", "{tmp}/t.txt", "--out-dir", "{ro}/p"]),
    ],
)
def test_unreadable_and_unwritable_paths_are_one_line(what: str, args: list[str], trained: Path, locked,
                                                      shakespeare_dir: Path, tmp_path: Path) -> None:
    data, run_dir, ro = tmp_path / "data", tmp_path / "run", tmp_path / "ro"
    shutil.copytree(shakespeare_dir, data)
    copy_checkpoint(trained, run_dir)
    ro.mkdir()
    (tmp_path / "t.txt").write_text("some text to prepare\n" * 50)
    reachable(tmp_path)
    locked(tmp_path / what)
    if what == "ro":
        (tmp_path / what).chmod(0o555)
    fields = {"data": data, "run": run_dir, "ro": ro, "out": tmp_path / "out", "tmp": tmp_path}
    argv = [a.format(**fields) for a in args] + (TINY_FLAGS if args[0] == "train" else [])
    done = as_user(*argv, env={"NANOGPT_CACHE_DIR": str(tmp_path / "cache")})
    err = done.stderr.decode(errors="replace")
    if done.returncode == 99:
        pytest.skip("cannot drop root's file-access override here")
    assert done.returncode == 1 and "Traceback" not in err, err
    assert "Permission denied" in err or "Read-only" in err or "cannot write" in err, err
    assert err.strip().splitlines()[-1].startswith(f"nanogpt {args[0]}: error: "), err


# ----------------------------------------------------------------------------- item 14: output streams
def test_an_ascii_output_escapes_what_it_cannot_show(tmp_path: Path, capsys) -> None:
    text = tmp_path / "accents.txt"
    text.write_text("café crème brûlée à la française, déjà vu. " * 400, encoding="utf-8")
    data, out = tmp_path / "data", tmp_path / "out"
    assert run(capsys, "prepare", str(text), "--tokenizer", "char", "--out-dir", str(data))[0] == 0
    assert run(capsys, "train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--steps", "1",
               "--out-dir", str(out))[0] == 0
    done = nanogpt("generate", str(out), "--prompt", "é", "--tokens-to-generate", "50",
                   env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"\\xe9") and done.stdout.isascii()
    assert b"standard output is ascii" in done.stderr


def test_a_full_standard_output_is_one_line(trained: Path) -> None:
    with open("/dev/full", "wb") as full:
        for tokens in ("5", "5000"):  # one buffered write at exit, and writes while streaming
            done = nanogpt("generate", str(trained), "--tokens-to-generate", tokens, stdout=full)
            err = done.stderr.decode()
            assert done.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err
            assert err.strip().splitlines()[-1] == "nanogpt generate: error: cannot write the output: " \
                "No space left on device"


# ----------------------------------------------------------------------------- item 17: torchrun, long lists
def test_a_bad_flag_under_torchrun_is_said_once_and_reported(tmp_path: Path) -> None:
    for rank in (0, 1):
        report = tmp_path / f"error_{rank}.json"
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "TORCHELASTIC_ERROR_FILE": str(report)}
        done = nanogpt("train", "--lr", "3", env=env)
        line = "nanogpt train: error: unrecognized arguments: --lr 3; did you mean --learning-rate?"
        assert done.returncode == 1
        assert done.stderr.decode().strip() == (line if rank == 0 else "")  # once for the job, not per rank
        assert json.loads(report.read_text())["message"] == line  # torchrun's report shows it, not <N/A>


def test_a_folder_of_ten_thousand_files_is_a_short_line(tmp_path: Path, capsys) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10_000):
        (flat / f"file_{i}.txt").write_text("x")
    # issue 30: a folder without NN_name/ sub-folders is a folder tree and prepares; a 0% NN_ folder makes it a
    # mixology folder with no usable source, whose 10,001 ignored entries are listed
    (flat / "00_drafts").mkdir()
    code, err = run(capsys, "prepare", str(flat), "--out-dir", str(tmp_path / "out"))
    assert_one_line(code, err, "and 9,993 more")
    assert len(err) < 1000


# ----------------------------------------------------------------------------- out of memory, at the edge
def test_running_out_of_memory_is_one_line(trained: Path) -> None:
    """What no earlier check bounds (ten million samples in one batch) ends in one line, not torch's
    allocator traceback (under a 3 GiB address space)."""
    from test_hostile import run_limited

    ((code, err),) = run_limited(["generate", str(trained), "--num-samples", "10000000", "--tokens-to-generate", "5"])
    assert_one_line(code, err, "out of memory", after_progress=True)
