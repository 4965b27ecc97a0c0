"""`nanogpt prepare`: real files in tmp_path through the real CLI, checked against nanoGPT and tiktoken."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import TINY_SHAKESPEARE_SHA256, gutenberg_book, shakespeare_text

from nanogpt.cli import main
from nanogpt.errors import UserError
from nanogpt.prepare import bundled_dataset, is_prepared
from nanogpt.tokenizers import GPT2_EOT, gpt2_encoding

# `prepare` with nanoGPT's character-level tokenizer, which these tests are about (the default is bpe)
CHAR_PREPARE = ("prepare", "--tokenizer", "char")

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m nanogpt ...` in a fresh process, as a user runs it."""
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "nanogpt", *args],
        check=False,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def load(folder: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    return meta, np.fromfile(folder / "train.bin", dtype=dtype), np.fromfile(folder / "val.bin", dtype=dtype)


def decode_char(meta: dict, ids: np.ndarray) -> str:
    return "".join(meta["itos"][i] for i in ids)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own tmp_path, where prepare's default output folder data/NAME/ lands."""
    monkeypatch.chdir(tmp_path)


def leftovers(folder: Path) -> list[str]:
    """Temporary files prepare might have left behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp")


# --- char tokenizer -----------------------------------------------------------------------------------------


def test_char_is_byte_identical_to_nanogpt(reference_nanogpt, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(reference_nanogpt / "data" / "shakespeare_char", ref)
    (ref / "input.txt").write_text(shakespeare_text(), encoding="utf-8")  # present, so it never downloads
    (ref / "requests.py").write_text("")  # its `import requests` must not need the package, nor the network
    done = subprocess.run(
        [sys.executable, "prepare.py"], check=False, cwd=ref, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr

    src = tmp_path / "mine" / "input.txt"
    src.parent.mkdir()
    shutil.copy(ref / "input.txt", src)
    result = run_cli("prepare", "--tokenizer", "char", str(src))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "input"
    assert (out / "train.bin").read_bytes() == (ref / "train.bin").read_bytes()
    assert (out / "val.bin").read_bytes() == (ref / "val.bin").read_bytes()
    meta, train, val = load(out)
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("char", 65, "uint16")
    assert (len(train), len(val)) == (1_003_854, 111_540) == (meta["train_tokens"], meta["val_tokens"])
    assert meta["itos"] == sorted(meta["itos"]) and meta["stoi"] == {c: i for i, c in enumerate(meta["itos"])}
    assert leftovers(tmp_path) == []


def test_char_split_and_round_trip(tmp_path):
    text = "".join(f"line {i}: the quick brown fox, {i * i}!\n" for i in range(500))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "t.txt"), "--val-fraction", "0.25"]) == 0
    meta, train, val = load(tmp_path / "data" / "t")
    split = int(len(text) * (1 - 0.25))
    assert decode_char(meta, train) == text[:split] and decode_char(meta, val) == text[split:]
    assert meta["itos"] == sorted(set(text))


def test_crlf_is_read_as_lf(tmp_path, capsys):
    (tmp_path / "unix").mkdir()
    (tmp_path / "dos").mkdir()
    text = "First line\nsecond line\n\nthird, and more text to split\n" * 20
    (tmp_path / "unix" / "a.txt").write_bytes(text.encode())
    (tmp_path / "dos" / "a.txt").write_bytes(text.replace("\n", "\r\n").encode())
    for name in ("unix", "dos"):
        assert main([*CHAR_PREPARE, str(tmp_path / name / "a.txt"), "--out-dir", str(tmp_path / name)]) == 0
        # said, since text decoded from the tokens is then not the file byte for byte (issue 34); not said for LF
        said = f"note: read 80 CRLF (or CR) line ends of {tmp_path / name / 'a.txt'} as LF"
        assert (said in capsys.readouterr().err) == (name == "dos")
    for f in ("train.bin", "val.bin"):
        assert (tmp_path / "unix" / f).read_bytes() == (tmp_path / "dos" / f).read_bytes()
    assert load(tmp_path / "dos")[0]["itos"] == load(tmp_path / "unix")[0]["itos"] == sorted(set(text))


def test_line_ends_across_chunk_boundaries(tmp_path, capsys):
    from nanogpt.prepare import CHUNK_CHARS

    # a CRLF split across two reads, a lone CR (old Mac) and a CR at the very end of the file
    text = "x" * (CHUNK_CHARS - 1) + "\r\n" + "after the boundary\rold mac line\r\nlast\r"
    (tmp_path / "a.txt").write_bytes(text.encode())
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "a.txt"), "--val-fraction", "0.001"]) == 0
    meta, train, val = load(tmp_path / "data" / "a")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert decode_char(meta, np.concatenate([train, val])) == expected
    assert len(train) == int(len(expected) * (1 - 0.001))
    assert "note: read 4 CRLF (or CR) line ends of" in capsys.readouterr().err  # each counted once, wherever it is


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000]
    text = "".join(chars) + "".join(chars[:1000])
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "wide.txt")]) == 0
    meta, train, val = load(tmp_path / "data" / "wide")
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(chars) > 65_536
    assert (tmp_path / "data" / "wide" / "train.bin").stat().st_size == 4 * meta["train_tokens"]
    assert decode_char(meta, np.concatenate([train, val])) == text


def test_bundled_corpus_is_tiny_shakespeare(tmp_path):
    result = run_cli("prepare", "--tokenizer", "char", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "data" / "tinyshakespeare"
    meta, train, val = load(out)
    assert (meta["vocab_size"], len(train), len(val)) == (65, 1_003_854, 111_540)
    text = shakespeare_text()  # karpathy's input.txt, byte for byte
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == TINY_SHAKESPEARE_SHA256
    assert decode_char(meta, val) == text[int(len(text) * 0.9) :]


def test_the_default_tokenizer_is_the_learned_bpe_and_prepare_says_so(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(shakespeare_text()[:40_000], encoding="utf-8")
    assert main(["prepare", str(tmp_path / "t.txt"), "--out-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert load(tmp_path / "out")[0]["tokenizer"] == "bpe"
    assert "tokenizer: bpe (the default; --tokenizer char gives nanoGPT's one token per character)" in out
    assert main(["prepare", str(tmp_path / "t.txt"), "--tokenizer", "char", "--out-dir", str(tmp_path / "c")]) == 0
    assert "tokenizer: char (the default is bpe)" in capsys.readouterr().out
    assert load(tmp_path / "c")[0]["tokenizer"] == "char"


def test_bundled_dataset_is_prepared_once_and_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    folder = bundled_dataset("char")
    assert folder == tmp_path / "cache" / "tinyshakespeare-char" and is_prepared(folder)
    assert str(folder) in capsys.readouterr().err
    stamp = (folder / "train.bin").stat().st_mtime_ns
    assert bundled_dataset("char") == folder
    assert "using" in capsys.readouterr().err and (folder / "train.bin").stat().st_mtime_ns == stamp
    # an incomplete folder (say, a crash of an older version) is prepared again
    with open(folder / "train.bin", "r+b") as f:
        f.truncate(100)
    assert not is_prepared(folder)
    assert bundled_dataset("char") == folder and is_prepared(folder)
    assert load(folder)[0]["train_tokens"] == 1_003_854


def test_rerun_overwrites_and_leaves_no_temp_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello there, world\n" * 200, encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "a.txt"), "--out-dir", str(tmp_path / "out")]) == 0
    first = (tmp_path / "out" / "train.bin").read_bytes()
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "a.txt"), "--out-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "train.bin").read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.bin", "val.bin", "vocab.json"]


def test_each_source_gets_a_folder_of_its_own_and_the_train_command_is_printed(tmp_path, capsys):
    # two files side by side and a mixology folder: before, all three wrote the same train.bin
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("the first text, some words\n" * 200, encoding="utf-8")
    (tmp_path / "texts" / "b.txt").write_text("the second text, other words\n" * 200, encoding="utf-8")
    (tmp_path / "mix" / "100_c").mkdir(parents=True)
    (tmp_path / "mix" / "100_c" / "c.txt").write_text("the third text, more words\n" * 200, encoding="utf-8")
    for source, name in (("texts/a.txt", "a"), ("texts/b.txt", "b"), ("mix", "mix")):
        assert main(["prepare", "--tokenizer", "char", source]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1] == f"train on it with: nanogpt train --data-dir {Path('data') / name}"
        assert is_prepared(tmp_path / "data" / name)
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == ["a.txt", "b.txt"]  # nothing beside them
    metas = [load(tmp_path / "data" / name)[0] for name in ("a", "b", "mix")]
    assert [m["source"] for m in metas] == [str(Path("texts") / "a.txt"), str(Path("texts") / "b.txt"), "mix"]
    assert len({tuple(m["itos"]) for m in metas}) == 3  # three different vocabularies: nothing overwritten


def test_the_printed_train_command_trains_on_the_prepared_data(tmp_path, capsys):
    from engine_fixtures import TINY_FLAGS

    (tmp_path / "my text.txt").write_text(shakespeare_text(), encoding="utf-8")  # a space: the path is quoted
    assert main(["prepare", "--tokenizer", "char", "my text.txt"]) == 0
    command = capsys.readouterr().out.splitlines()[-1].removeprefix("train on it with: ")
    argv = shlex.split(command)
    assert argv[:4] == ["nanogpt", "train", "--data-dir", str(Path("data") / "my text")]
    assert main([*argv[1:], *TINY_FLAGS, "--steps", "2", "--headless", "--out-dir", "ckpt"]) == 0
    assert (tmp_path / "ckpt" / "model_step_2.safetensors").is_file()


def test_bundled_corpus_reports_its_text_size_not_the_gzip_size(tmp_path):
    from nanogpt.prepare.progress import human_bytes

    result = run_cli("prepare", "--tokenizer", "char", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text_size = human_bytes(len(shakespeare_text().encode("utf-8")))
    reading = [line for line in result.stderr.splitlines() if line.startswith("reading: ")]
    assert len(reading) == 1 and reading[0].startswith(f"reading: {text_size} in ")
    hint = f"train on it with: nanogpt train --data-dir {Path('data') / 'tinyshakespeare'}"
    assert result.stdout.splitlines()[-1] == hint


def test_help_and_checks_come_from_prepare_config(capsys):
    import dataclasses

    from nanogpt.config import PrepareConfig, field_flag, field_help

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(PrepareConfig):
        assert " ".join(field_help(f).split()) in shown
        if f.name != "source":
            assert field_flag(f) in shown
            assert f.default is None or f"(default: {f.default})" in shown
    with pytest.raises(UserError, match="unknown tokenizer 'wordpiece'"):
        PrepareConfig(tokenizer="wordpiece").validate()


# --- GPT-2 tokenizer ---------------------------------------------------------------------------------------


def test_gpt2_matches_nanogpt_shakespeare_recipe(tmp_path):
    (tmp_path / "input.txt").write_text(shakespeare_text(), encoding="utf-8")
    assert main(["prepare", str(tmp_path / "input.txt"), "--tokenizer", "gpt2"]) == 0
    meta, train, val = load(tmp_path / "data" / "input")
    assert (meta["tokenizer"], meta["vocab_size"], meta["dtype"]) == ("gpt2", 50257, "uint16")
    assert (len(train), len(val)) == (301_966, 36_059)
    # nanoGPT's data/shakespeare/prepare.py: split by characters, then encode_ordinary each part
    text = (tmp_path / "input.txt").read_text(encoding="utf-8")
    enc = gpt2_encoding()
    assert train.tolist() == enc.encode_ordinary(text[: int(len(text) * 0.9)])
    assert val.tolist() == enc.encode_ordinary(text[int(len(text) * 0.9) :])


def test_gpt2_streamed_pieces_equal_whole_encoding(tmp_path):
    # a file larger than one encoding piece (1 Mi characters), so the pipeline cuts it several times
    text = shakespeare_text()
    text = text + gutenberg_book().replace("\r\n", "\n") + text
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    assert main(["prepare", str(tmp_path / "big.txt"), "--tokenizer", "gpt2", "--val-fraction", "0.05",
                 "--keep-gutenberg"]) == 0
    _, train, val = load(tmp_path / "data" / "big")
    enc = gpt2_encoding()
    split = int(len(text) * 0.95)
    assert train.tolist() == enc.encode_ordinary(text[:split])
    assert val.tolist() == enc.encode_ordinary(text[split:])


def test_gpt2_endoftext_between_files(tmp_path):
    # issue 30 changed this test: the validation split takes whole documents (here the last file), where it
    # used to cut the second file at 90% of the characters
    folder = tmp_path / "corpus" / "100_notes"
    folder.mkdir(parents=True)
    one, two, three = "First document.\nIt has two lines.\n", "Second document, a longer one.\n" * 8, "Third.\n"
    (folder / "b.txt").write_text(two, encoding="utf-8")  # sorted order: a.txt first
    (folder / "a.txt").write_text(one, encoding="utf-8")
    (folder / "c.txt").write_text(three, encoding="utf-8")
    assert main(["prepare", str(tmp_path / "corpus"), "--tokenizer", "gpt2"]) == 0
    meta, train, val = load(tmp_path / "data" / "corpus")
    enc = gpt2_encoding()
    assert train.tolist() == enc.encode_ordinary(one) + [GPT2_EOT] + enc.encode_ordinary(two)
    assert val.tolist() == enc.encode_ordinary(three)
    assert meta["sources"][0]["files"] == 3 and meta["sources"][0]["documents"] == 3


# --- mixology ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_mixology_shares_follow_the_percentages(tmp_path, tokenizer):
    mix = tmp_path / "mix"
    for name in ("25_alice", "75_shakespeare", "drafts"):
        (mix / name).mkdir(parents=True)
    (mix / "25_alice" / "alice.txt").write_bytes(gutenberg_book().encode("utf-8"))
    (mix / "75_shakespeare" / "shakespeare.txt").write_text(shakespeare_text(), encoding="utf-8")
    (mix / "drafts" / "ignored.txt").write_text("not part of the mix\n", encoding="utf-8")
    result = run_cli("prepare", str(mix), "--tokenizer", tokenizer, "--strip-gutenberg")
    assert result.returncode == 0, result.stderr
    assert "drafts" in result.stdout + result.stderr  # the ignored folder is named
    assert "25_alice" in result.stdout and "75_shakespeare" in result.stdout  # the table of sources
    meta, train, val = load(tmp_path / "data" / "mix")
    alice, shakespeare = meta["sources"]
    assert (alice["percent"], shakespeare["percent"]) == (25, 75)
    for part, ids in (("train", train), ("val", val)):
        total = alice[f"{part}_tokens"] + shakespeare[f"{part}_tokens"]
        assert total == len(ids) == meta[f"{part}_tokens"]
        assert abs(alice[f"{part}_tokens"] / total - 0.25) <= 0.01
        assert abs(shakespeare[f"{part}_tokens"] / total - 0.75) <= 0.01
    # Alice is the scarce source: all of it is used, and Shakespeare only as much as 75% needs
    assert (
        main(
            [
                "prepare",
                str(mix / "25_alice" / "alice.txt"),
                "--tokenizer",
                tokenizer,
                "--strip-gutenberg",
                "--out-dir",
                str(tmp_path / "alice"),
            ]
        )
        == 0
    )
    alone = load(tmp_path / "alice")[0]
    assert alice["train_tokens"] == alone["train_tokens"] and alice["val_tokens"] == alone["val_tokens"]
    assert shakespeare["used"] < 0.5
    if tokenizer == "char":
        assert decode_char(meta, train[: alice["train_tokens"]]) == decode_char(
            alone, load(tmp_path / "alice")[1]
        )
    assert leftovers(tmp_path) == []


def test_mixology_source_names_the_folder_even_with_stray_sub_folders(tmp_path, capsys):
    mix = tmp_path / "mix"
    for name, line in (("25_a", "alpha words here\n"), ("75_b", "beta words there\n"), ("drafts", "stray\n")):
        (mix / name).mkdir(parents=True)
        (mix / name / "x.txt").write_text(line * 400, encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(mix), "--out-dir", str(tmp_path / "out")]) == 0
    assert "drafts/" in capsys.readouterr().err  # the stray folder is named as ignored ...
    meta = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert meta["source"] == str(mix)  # ... but the source recorded is the folder prepared
    assert [s["path"] for s in meta["sources"]] == ["25_a/", "75_b/"]


def test_mixology_percentages_must_sum_to_100(tmp_path, capsys):
    for name in ("30_a", "40_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("some text here\n", encoding="utf-8")
    assert main(["prepare", "--tokenizer", "char", str(tmp_path)]) == 1
    assert "sum to 70" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


# --- Gutenberg ---------------------------------------------------------------------------------------------


def test_strip_gutenberg(tmp_path):
    (tmp_path / "alice.txt").write_bytes(gutenberg_book().encode("utf-8"))  # CRLF, as gutenberg.org serves it
    assert main([*CHAR_PREPARE, str(tmp_path / "alice.txt"), "--out-dir", str(tmp_path / "raw"),
                 "--keep-gutenberg"]) == 0
    assert (
        main(
            [
                "prepare",
                "--tokenizer",
                "char",
                str(tmp_path / "alice.txt"),
                "--out-dir",
                str(tmp_path / "stripped"),
                "--strip-gutenberg",
            ]
        )
        == 0
    )
    raw_meta, raw_train, raw_val = load(tmp_path / "raw")
    meta, train, val = load(tmp_path / "stripped")
    raw = decode_char(raw_meta, np.concatenate([raw_train, raw_val]))
    text = decode_char(meta, np.concatenate([train, val]))
    assert "\r" not in raw and "\r" not in text  # CRLF is read as LF either way
    assert raw.startswith("The Project Gutenberg eBook") and "*** END OF THE PROJECT GUTENBERG" in raw
    assert "PROJECT GUTENBERG" not in text.upper() and "*** START" not in text
    assert text.lstrip().startswith("[Illustration]") and text.rstrip().endswith("THE END")
    assert "Down the Rabbit-Hole" in text and len(text) < 0.9 * len(raw)
    assert len(meta["itos"]) <= len(raw_meta["itos"])


def test_a_raw_gutenberg_file_is_stripped_by_default_and_a_kept_licence_warned_of(tmp_path, capsys):
    # issue 34: the licence footer is the last tenth of the file, so kept it would be the validation part
    (tmp_path / "alice.txt").write_bytes(gutenberg_book().encode("utf-8"))
    (tmp_path / "plain.txt").write_text(shakespeare_text()[:20_000], encoding="utf-8")
    assert main([*CHAR_PREPARE, str(tmp_path / "alice.txt"), "--out-dir", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert f"note: removed Project Gutenberg's licence header and footer from {tmp_path / 'alice.txt'}" in err
    assert "warning" not in err
    meta, _, val = load(tmp_path / "default")
    assert "Gutenberg" not in decode_char(meta, val) and meta["strip_gutenberg"] is True
    raw = ["--out-dir", str(tmp_path / "raw"), "--keep-gutenberg"]
    assert main([*CHAR_PREPARE, str(tmp_path / "alice.txt"), *raw]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(tmp_path / "alice.txt") in warnings[0]
    assert "of the validation part" in warnings[0] and "Project Gutenberg's licence" in warnings[0]
    meta, _, val = load(tmp_path / "raw")
    assert "Project Gutenberg" in decode_char(meta, val) and meta["strip_gutenberg"] is False
    # nothing said of a text that has no header
    assert main([*CHAR_PREPARE, str(tmp_path / "plain.txt"), "--out-dir", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert "note:" not in err and "warning:" not in err
    code = main([*CHAR_PREPARE, str(tmp_path / "plain.txt"), "--strip-gutenberg", "--keep-gutenberg"])
    assert code == 1 and "contradict each other" in capsys.readouterr().err


# --- bad input ---------------------------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (tmp_path / "binary.txt").write_bytes(b"text at first" + b"\x00\x01\x02" * 10)
    (tmp_path / "good.txt").write_text("plenty of good text to split\n" * 20, encoding="utf-8")
    (tmp_path / "nosources").mkdir()
    # issue 30: a folder without NN_name/ sub-folders is now a folder tree of text; a mixology folder whose only
    # NN_ folder is 0% still has no usable source
    (tmp_path / "nosources" / "00_notes").mkdir()
    (tmp_path / "nosources" / "00_notes" / "a.txt").write_text("hi\n", encoding="utf-8")
    (tmp_path / "nofiles" / "100_a").mkdir(parents=True)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    good = str(tmp_path / "good.txt")
    return {
        "missing": ([str(tmp_path / "nope.txt")], "does not exist"),
        "empty": ([str(tmp_path / "empty.txt")], "is empty"),
        "not utf-8": (
            [str(tmp_path / "latin1.txt")],
            "latin1.txt is not UTF-8 text (invalid byte at offset 3)",
        ),
        "binary": (
            [str(tmp_path / "binary.txt")],
            "binary.txt looks like a binary file (NUL byte at offset 13)",
        ),
        "no sources": ([str(tmp_path / "nosources")], "no usable sources"),
        "no files": ([str(tmp_path / "nofiles")], "100_a has no text files"),  # issue 30: not only .txt
        "tokenizer": ([good, "--tokenizer", "wordpiece"], "unknown tokenizer 'wordpiece'"),
        "val fraction": ([good, "--val-fraction", "1.5"], "--val-fraction"),
        "unwritable": (
            [good, "--out-dir", str(tmp_path / "afile" / "out")],
            "cannot write to the output folder",
        ),
        "too small": ([str(tmp_path / "afile")], "too little text"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "not utf-8",
        "binary",
        "no sources",
        "no files",
        "tokenizer",
        "val fraction",
        "unwritable",
        "too small",
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, case):
    args, message = _bad_inputs(tmp_path)[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["prepare", "--tokenizer", "char", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nanogpt prepare: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_bad_input_in_a_real_process(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("na\u00efve\n".encode("latin-1"))
    result = run_cli("prepare", "--tokenizer", "char", str(tmp_path / "latin1.txt"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    expected = (
        f"{tmp_path / 'latin1.txt'} is not UTF-8 text (invalid byte at offset 2); convert it to UTF-8 first"
    )
    assert result.stderr.strip().splitlines() == [f"nanogpt prepare: error: {expected}"]


def start_and_stop(args: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start `nanogpt prepare ARGS`, send `sig` once its first temporary file shows in `out`, and wait."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", *CHAR_PREPARE, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not (out.is_dir() and any(p.suffix == ".tmp" for p in out.iterdir())):
            time.sleep(0.01)
        assert proc.poll() is None, "prepare ended before it wrote a temporary file: give it more text"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture
def big_text(tmp_path) -> Path:
    """40 MB of text: a prepare long enough to be stopped in the middle."""
    path = tmp_path / "big.txt"
    path.write_text(shakespeare_text() * 36, encoding="utf-8")
    return path


def test_sigterm_removes_the_temporary_files_and_says_so(big_text, tmp_path):
    out = tmp_path / "new" / "out"
    result = start_and_stop([str(big_text), "--out-dir", str(out)], out, signal.SIGTERM)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "nanogpt prepare: error: stopped by SIGTERM (its temporary files are removed)"
    assert not (tmp_path / "new").exists()  # the folders it created go too: a failed prepare leaves nothing


def test_kill_9_leftovers_go_at_the_next_prepare_and_the_old_data_stays_whole(big_text, tmp_path):
    (tmp_path / "a.txt").write_text("hello there, world\n" * 200, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "a.txt"), "--out-dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert start_and_stop([str(big_text), "--out-dir", str(out)], out, signal.SIGKILL).returncode == -signal.SIGKILL
    assert leftovers(out)  # kill -9 gives it no chance to clean up
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix != ".tmp"} == before
    assert is_prepared(out)
    assert main(["prepare", "--tokenizer", "char", str(tmp_path / "a.txt"), "--out-dir", str(out)]) == 0
    assert leftovers(out) == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- progress ----------------------------------------------------------------------------------------------


def test_progress_is_plain_lines_without_a_terminal(tmp_path):
    (tmp_path / "a.txt").write_text("plain words here\n" * 2000, encoding="utf-8")
    result = run_cli("prepare", "--tokenizer", "char", str(tmp_path / "a.txt"))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr + result.stdout
    assert any(line.startswith("tokenizing: ") and "MB/s" in line for line in result.stderr.splitlines())


def test_progress_bar_on_a_terminal(tmp_path):
    pty = pytest.importorskip("pty")
    (tmp_path / "a.txt").write_text(
        "some words on a line\n" * 150_000, encoding="utf-8"
    )  # 3 MB: several chunks
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(SRC), "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nanogpt", "prepare", str(tmp_path / "a.txt"), "--tokenizer", "gpt2"],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    stdout = proc.communicate()[0].decode()
    os.close(master)
    assert proc.returncode == 0, shown.decode(errors="replace")
    assert b"\x1b[" in shown and b"tokenizing" in shown  # Rich drew its bar on the terminal
    assert "wrote " in stdout and "\x1b[" not in stdout  # the summary on a pipe stays plain
