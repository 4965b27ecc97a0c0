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
from test_hostile import SRC, assert_one_line, copy_checkpoint, data_copy, edit_json, run, run_limited
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


# ----------------------------------------------------------------------------- cause 3: reads bounded by bytes read
def _special(path: Path, kind: str) -> Path:
    """`path` made a FIFO (which no one writes) or a link to /dev/zero (which reads without end)."""
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    return path


SPECIAL = pytest.mark.parametrize(("kind", "said"), [("fifo", "is a FIFO (named pipe), not a file"),
                                                     ("zero", "is a device, not a file")])


@SPECIAL
def test_a_vocab_metadata_that_is_no_file_is_refused_unread(kind: str, said: str, trained: Path, tmp_path: Path,
                                                            capsys) -> None:
    vocab = _special(tmp_path / "vocab.json", kind)
    code, err = run(capsys, "generate", str(trained), "--vocab-metadata", str(vocab), "--tokens-to-generate", "2")
    assert_one_line(code, err, f"vocabulary metadata {vocab} {said}")


@SPECIAL
def test_a_data_folders_vocab_json_that_is_no_file_is_refused_unread(kind: str, said: str, shakespeare_dir: Path,
                                                                     tmp_path: Path, capsys) -> None:
    data = data_copy(shakespeare_dir, tmp_path / "data")
    _special(data / "vocab.json", kind)
    code, err = train(capsys, data, tmp_path / "out", "--steps", "1")
    assert_one_line(code, err, f"{data / 'vocab.json'} {said}")
    assert not (tmp_path / "out").exists()


@SPECIAL
def test_a_checkpoint_config_that_is_no_file_is_refused_unread(kind: str, said: str, trained: Path, tmp_path: Path,
                                                               capsys) -> None:
    stem = copy_checkpoint(trained, tmp_path / "ckpt")  # no manifest: config.json is read as it is
    config = _special(stem.with_name(stem.name + ".config.json"), kind)
    code, err = run(capsys, "generate", str(stem), "--tokens-to-generate", "2")
    assert_one_line(code, err, f"{config} {said}")


def _inflating_ckpt(path: Path, inflated: int) -> Path:
    """A nanoGPT ckpt.pt re-zipped with its entries deflated, and one more entry of `inflated` zero bytes."""
    import zipfile

    import torch

    from nanogpt.config import ModelConfig
    from nanogpt.model import GPT

    args = dict(vocab_size=65, block_size=32, n_layer=1, n_head=2, n_embd=32, bias=False)
    torch.save({"model": GPT(ModelConfig(**args)).state_dict(), "model_args": args}, path.with_suffix(".orig"))
    with zipfile.ZipFile(path.with_suffix(".orig")) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED,
                                                                             compresslevel=1) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        with dst.open(f"{src.namelist()[0].split('/')[0]}/data/zeros", "w", force_zip64=True) as f:
            chunk = bytes(64 << 20)
            for _ in range(inflated // len(chunk)):
                f.write(chunk)
    return path


def test_a_ckpt_pt_whose_entry_inflates_is_refused_before_torch_load(shakespeare_dir: Path, tmp_path: Path) -> None:
    ckpt = _inflating_ckpt(tmp_path / "ckpt.pt", 1 << 30)
    assert ckpt.stat().st_size < 8 << 20  # 4.7 MB, 1 GiB once inflated
    out = tmp_path / "out"
    (code, err), = run_limited(["train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir",
                                str(shakespeare_dir), "--out-dir", str(out), "--init-from", str(ckpt)])
    assert_one_line(code, err, "is compressed (")
    assert "which torch.save never does: refusing to inflate it" in err and not out.exists()


@pytest.mark.parametrize(("content", "message"), [(b"not a zip at all", "is not a zip archive as torch.save"),
                                                  ("fifo", "is a FIFO (named pipe), not a file")])
def test_a_ckpt_pt_of_another_kind_is_refused_unread(content, message: str, shakespeare_dir: Path, tmp_path: Path,
                                                     capsys) -> None:
    ckpt = tmp_path / "ckpt.pt"
    if content == "fifo":
        os.mkfifo(ckpt)
    else:
        ckpt.write_bytes(content)
    code, err = train(capsys, shakespeare_dir, tmp_path / "out", "--steps", "1", "--init-from", str(ckpt))
    assert_one_line(code, err, message)


# ----------------------------------------------------------------------------- cause 7: messages that misled
def test_a_block_size_as_long_as_the_data_says_a_window_needs_one_more(shakespeare_dir: Path, tmp_path: Path,
                                                                       capsys) -> None:
    data = data_copy(shakespeare_dir, tmp_path / "data")
    (data / "train.bin").write_bytes(np.array([3], dtype="<u2").tobytes())
    edit_json(data / "vocab.json", lambda m: m.__setitem__("train_tokens", 1))
    code, err = train(capsys, data, tmp_path / "out", "--steps", "1", "--block-size", "1")
    assert_one_line(code, err, "--block-size 1 is larger than the training data (1 token) allows: a window needs 2")


def test_a_best_json_with_an_infinite_loss_is_called_so(trained: Path, tmp_path: Path, capsys) -> None:
    stem = copy_checkpoint(trained, tmp_path / "run")
    (tmp_path / "run" / "best.json").write_text('{"step": 3, "stem": "model_step_3", "validation_loss": -1e400}')
    code, err = run(capsys, "generate", str(tmp_path / "run"), "--tokens-to-generate", "2")
    assert code == 0, err
    assert f"using its latest checkpoint, {stem} (its best.json records a validation loss of -inf, not a loss)" in err


def test_an_export_into_a_link_to_an_empty_folder_writes_where_it_leads(trained: Path, tmp_path: Path,
                                                                        capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    code, err = run(capsys, "export", str(trained), str(tmp_path / "link"))
    assert code == 0, err
    assert (tmp_path / "link").is_symlink() and (tmp_path / "empty" / "model.safetensors").is_file()


def test_an_imported_shape_is_told_in_the_files_names_not_as_flags(trained: Path, shakespeare_dir: Path,
                                                                   tmp_path: Path, capsys) -> None:
    import torch

    assert run(capsys, "export", str(trained), str(tmp_path / "hf"))[0] == 0
    edit_json(tmp_path / "hf" / "config.json", lambda c: c.__setitem__("n_head", 3))
    code, err = train(capsys, shakespeare_dir, tmp_path / "out", "--steps", "1", "--init-from", str(tmp_path / "hf"))
    assert_one_line(code, err, f"{tmp_path / 'hf'}: n_head = 3 does not divide n_embd = 32")
    assert "--head-count" not in err
    args = dict(vocab_size=65, block_size=32, n_layer=1, n_head=3, n_embd=32, bias=False)
    torch.save({"model": {}, "model_args": args}, tmp_path / "ckpt.pt")
    code, err = train(capsys, shakespeare_dir, tmp_path / "out", "--steps", "1", "--init-from",
                      str(tmp_path / "ckpt.pt"))
    assert_one_line(code, err, "ckpt.pt: its model_args: n_head = 3 does not divide n_embd = 32")


# ----------------------------------------------------------------------------- cause 2: learning a BPE
def test_a_bpe_of_one_line_of_letters_is_learnt_in_bounded_memory_and_encodes_long_runs(tmp_path: Path) -> None:
    """A line of 600 K random letters, one pre-token of the GPT-2 regex (learning it took minutes and grew
    faster than its length), prepared under a 1 GiB address space; a run longer than MAX_RUN encodes in pieces
    as it was learnt, and decodes back to itself (bench/bpe_hostile.py measures the time)."""
    import random
    import string

    from nanogpt.data import read_vocab
    from nanogpt.bpe_pipeline import MAX_RUN
    from nanogpt.tokenizers import from_meta

    text = "".join(random.Random(0).choices(string.ascii_lowercase, k=600_000))
    (tmp_path / "letters.txt").write_text(text, encoding="utf-8")
    (code, err), = run_limited(["prepare", str(tmp_path / "letters.txt"), "--tokenizer", "bpe", "--vocab-size",
                                "512", "--out-dir", str(tmp_path / "data")], limit=ADDRESS_SPACE_1G)
    assert code == 0, err
    tokenizer = from_meta(read_vocab(tmp_path / "data" / "vocab.json"))
    run_of = text[:3 * MAX_RUN + 7]
    ids = tokenizer.encode(run_of)
    assert tokenizer.decode(ids) == run_of
    assert ids == [i for k in range(0, len(run_of), MAX_RUN) for i in tokenizer.encode(run_of[k : k + MAX_RUN])]


ADDRESS_SPACE_1G = "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"


def peak_of_prepare(*args: str) -> tuple[int, int, str]:
    """(exit code, peak resident MB, stderr) of `nanogpt prepare ARGS` in a process of its own (ru_maxrss of the
    child, measured by a parent that runs nothing else)."""
    parent = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
              "sys.stdout.write(p.stderr)")
    done = subprocess.run([sys.executable, "-c", parent, sys.executable, "-m", "nanogpt", "prepare", *args],
                          capture_output=True, text=True, env=ENV, check=True, timeout=600)
    code, peak = done.stdout.split("\n", 1)[0].split()
    return int(code), int(peak), done.stdout.split("\n", 1)[1]


PREPARE_PEAK_MB = 500  # issue 33: prepare's peak memory for any input


@pytest.mark.parametrize(
    ("kind", "tokenizer"),
    [("letters", "bpe"), ("letters", "gpt2"), ("code points", "bpe"), ("code points", "char"),
     ("one JSON line", "bpe")],
)
def test_prepare_stays_in_bounded_memory_on_text_without_spaces(kind: str, tokenizer: str, tmp_path: Path) -> None:
    """Text without a space to cut at: 8 M random letters (one enormous pre-token: 1,085 MB with a learned BPE
    before), 4 M random code points (a character vocabulary of ~1 M; 4 bytes a character), and 8 M letters as one
    JSON Lines record. Peak resident memory stays under 500 MB, and the bins are written."""
    import random
    import string

    rng = random.Random(0)
    if kind == "code points":
        text = "".join(chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(4_000_000))
    else:
        text = "".join(rng.choices(string.ascii_lowercase, k=8_000_000))
    source = tmp_path / ("big.jsonl" if kind == "one JSON line" else "big.txt")
    source.write_text(json.dumps({"text": text}) + "\n" if kind == "one JSON line" else text, encoding="utf-8")
    code, peak, err = peak_of_prepare(str(source), "--tokenizer", tokenizer, "--out-dir", str(tmp_path / "data"))
    assert code == 0, err
    assert peak < PREPARE_PEAK_MB, f"{kind}, {tokenizer}: peak {peak} MB"
    assert (tmp_path / "data" / "train.bin").stat().st_size > 0


@pytest.fixture(scope="module")
def text_of_62_mb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Shakespeare 56 times: its training part over the 50 MiB from which prepare says each phase's start in
    a log."""
    from engine_fixtures import shakespeare_text

    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(shakespeare_text() * 56, encoding="utf-8")
    return path


@pytest.mark.parametrize("phase", ["reading", "learning BPE", "tokenizing"])
def test_sigterm_stops_prepare_within_each_phase(phase: str, text_of_62_mb: Path, tmp_path: Path) -> None:
    """SIGTERM as soon as a phase says it started: prepare stops inside it (the phase never says it ended, where
    before the BPE's learning ran to its end first), removes its temporary files and exits 1 with one line."""
    import signal

    out = tmp_path / "new" / "data"
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", "prepare", str(text_of_62_mb), "--tokenizer", "bpe",
                             "--out-dir", str(out)], env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    said = []
    try:
        while (line := proc.stderr.readline()) and not line.startswith(f"{phase}: "):
            said.append(line)
        assert line.startswith(f"{phase}: ") and line.rstrip().endswith("..."), (line, said)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, rest
    assert f"{phase}: " not in rest, rest  # it did not finish the phase
    last = rest.strip().splitlines()[-1]
    assert last == "nanogpt prepare: error: stopped by SIGTERM (its temporary files are removed)"
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- cause 6: accepted silently
def test_a_folder_linked_into_a_mixology_source_is_read_and_a_loop_once(tmp_path: Path, capsys) -> None:
    """A sub-folder that is a symbolic link (to text kept elsewhere) was left out without a word; now it is read,
    and a link back up the tree (a loop) or a second link to a folder already read is read once and said."""
    from engine_fixtures import shakespeare_text

    text = shakespeare_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.txt").write_text(text[100_000:200_000], encoding="utf-8")
    for share, cut in (("60_plays", (0, 100_000)), ("40_more", (200_000, 300_000))):
        (tmp_path / "mix" / share).mkdir(parents=True)
        (tmp_path / "mix" / share / "a.txt").write_text(text[cut[0] : cut[1]], encoding="utf-8")
    (tmp_path / "mix" / "60_plays" / "linked").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "mix" / "60_plays" / "loop").symlink_to(tmp_path / "mix" / "60_plays", target_is_directory=True)
    code, err = run(capsys, "prepare", str(tmp_path / "mix"), "--tokenizer", "char", "--out-dir", str(tmp_path / "d"))
    assert code == 0, err
    sources = json.loads((tmp_path / "d" / "vocab.json").read_text())["sources"]
    plays = next(s for s in sources if s["path"] == "60_plays/")
    assert plays["files"] == 2 and plays["bytes"] == 200_000  # a.txt and linked/b.txt, each once
    assert plays["skipped_files"]["repeated_folders"] == 1
    from nanogpt.prepare.report import held

    assert held(plays).endswith("left out: 1 folders linked again (read once)")  # the summary's line for it
