"""`nanogpt prepare` on the corpora people have (issue 30): folder trees, JSON Lines (plain, .gz, .zst), Parquet,
.txt.zst; documents and <|endoftext|>; whole-document validation; the BPE's spread sample; core counts.

Every file is made here, small, and goes through the real CLI; the checks are on the bins it writes."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from nanogpt.cli import main
from nanogpt.tokenizers import GPT2_EOT, from_meta, gpt2_encoding

SRC = Path(__file__).resolve().parents[1] / "src"
WORDS = ["the", "river", "stone", "quietly", "under", "lamp", "ninety", "café", "and", "of", "a", "north"]


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(rng.randint(1, 6))]
        docs.append("\n".join(lines) + rng.choice(["", "\n"]))
    return docs


def jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: d}, ensure_ascii=False) + "\n" for i, d in enumerate(docs)).encode()


def write_all_kinds(folder: Path, docs: list[str]) -> dict[str, Path]:
    """The same documents as .jsonl, .jsonl.gz, .jsonl.zst, .parquet (several row groups) and a folder of .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = jsonl_bytes(docs)
    paths = {k: folder / f"corpus.{k}" for k in ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")}
    paths["jsonl"].write_bytes(raw)
    paths["jsonl.gz"].write_bytes(gzip.compress(raw))
    paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), paths["parquet"], row_group_size=7)
    tree = folder / "tree"
    for i, d in enumerate(docs):
        sub = tree / f"part{i // 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:03d}.md").write_text(d, encoding="utf-8")
    paths["tree"] = tree
    return paths


def prepare(source: Path, out: Path, *flags: str) -> tuple[dict, np.ndarray, np.ndarray]:
    assert main(["prepare", str(source), "--out-dir", str(out), *flags]) == 0
    meta = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    return meta, np.fromfile(out / "train.bin", dtype=dtype), np.fromfile(out / "val.bin", dtype=dtype)


def one_line_error(capsys, *args: str) -> str:
    assert main(["prepare", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nanogpt prepare: error: ") and not any("Traceback" in line for line in err)
    return err[-1]


@pytest.mark.parametrize("tokenizer", ["gpt2", "char", "bpe"])
def test_every_input_kind_gives_the_same_bins(tmp_path, tokenizer):
    docs = documents(60)
    bins = {}
    for kind, path in write_all_kinds(tmp_path / "in", docs).items():
        _, train, val = prepare(path, tmp_path / kind, "--tokenizer", tokenizer)
        bins[kind] = (train.tobytes(), val.tobytes())
    assert len(set(bins.values())) == 1, {k: len(v[0]) for k, v in bins.items()}


def test_gpt2_documents_are_separated_and_validation_is_whole_documents(tmp_path):
    docs = documents(40, seed=1)
    meta, train, val = prepare(write_all_kinds(tmp_path / "in", docs)["jsonl"], tmp_path / "out", "--tokenizer", "gpt2")
    enc = gpt2_encoding()
    # the last documents, about 10% of the characters, are the validation part; never a document cut in two
    split = int(sum(map(len, docs)) * 0.9)
    pos, n_train = 0, 0
    for k, d in enumerate(docs):
        if k == len(docs) - 1 or (k > 0 and pos + len(d) / 2 >= split):
            break
        pos += len(d)
        n_train += 1

    def joined(ds: list[str]) -> list[int]:
        ids: list[int] = []
        for d in ds:
            ids += ([GPT2_EOT] if ids else []) + enc.encode_ordinary(d)
        return ids

    assert train.tolist() == joined(docs[:n_train]) and val.tolist() == joined(docs[n_train:])
    assert 0 < len(docs) - n_train < len(docs) // 4
    assert meta["sources"][0]["documents"] == 40 and meta["eot_token"] == GPT2_EOT


def test_a_learned_bpe_ends_documents_with_its_own_end_of_text(tmp_path):
    docs = documents(50, seed=2)
    meta, train, val = prepare(write_all_kinds(tmp_path / "in", docs)["jsonl"], tmp_path / "out", "--vocab-size", "300")
    tok = from_meta(meta)
    assert tok.vocab_size == meta["vocab_size"] == 300 and tok.eot == meta["eot_token"] == 299
    text = [tok.decode(part) for part in np.split(train, np.flatnonzero(train == tok.eot))]
    assert text[0] == docs[0] and text[1].removeprefix("<|endoftext|>") == docs[1]
    assert int((train == tok.eot).sum()) + int((val == tok.eot).sum()) == len(docs) - 2  # between, not after
    assert tok.token_bytes()[tok.eot] == 0  # bits per byte: the separator is no text
    assert tok.eot not in tok.encode("a text that says <|endoftext|> is only text")


def test_char_puts_a_line_break_between_documents_that_lack_one(tmp_path):
    docs = ["one line without an end", "second\n", "third"] + documents(20, seed=3)
    meta, train, val = prepare(write_all_kinds(tmp_path / "in", docs)["jsonl"], tmp_path / "out", "--tokenizer", "char")
    text = "".join(meta["itos"][i] for i in np.concatenate([train, val]))
    assert text.startswith("one line without an end\nsecond\nthird\n")
    assert "<|endoftext|>" not in meta["itos"] and "eot_token" not in meta


def test_txt_zst_and_a_single_record_are_split_inside_like_nanogpt(tmp_path):
    text = "\n".join(documents(30, seed=4))
    (tmp_path / "book.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    (tmp_path / "one.jsonl").write_bytes(jsonl_bytes([text]))
    meta, train, val = prepare(tmp_path / "book.txt.zst", tmp_path / "zst", "--tokenizer", "char")
    assert "".join(meta["itos"][i] for i in train) == text[: int(len(text) * 0.9)]
    for name in ("book.txt", "one.jsonl"):
        _, t, v = prepare(tmp_path / name, tmp_path / name.replace(".", "_"), "--tokenizer", "char")
        assert (t.tobytes(), v.tobytes()) == (train.tobytes(), val.tobytes())
    assert main(["prepare", str(tmp_path / "book.txt.zst"), "--tokenizer", "char"]) == 0
    assert (Path("data") / "book" / "train.bin").exists()  # the default folder drops .txt.zst


def test_text_field_nested_and_missing(tmp_path, capsys):
    docs = documents(12, seed=5)
    lines = [json.dumps({"meta": {"body": d}, "url": "u"}) for d in docs]
    (tmp_path / "nested.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, train, _ = prepare(tmp_path / "nested.jsonl", tmp_path / "out", "--tokenizer", "gpt2",
                          "--text-field", "meta.body")
    assert train.tolist()[: len(gpt2_encoding().encode_ordinary(docs[0]))] == gpt2_encoding().encode_ordinary(docs[0])
    err = one_line_error(capsys, str(tmp_path / "nested.jsonl"), "--out-dir", str(tmp_path / "o2"))
    assert "nested.jsonl, line 1: no field 'text' (its fields: meta, url" in err
    pq.write_table(pa.table({"content": docs, "n": list(range(12))}), tmp_path / "t.parquet")
    err = one_line_error(capsys, str(tmp_path / "t.parquet"), "--out-dir", str(tmp_path / "o3"))
    assert "t.parquet has no column 'text' (its columns: content, n" in err
    pq.write_table(pa.table({"s": pa.array([{"body": d} for d in docs])}), tmp_path / "s.parquet")
    _, train2, _ = prepare(tmp_path / "s.parquet", tmp_path / "o4", "--tokenizer", "gpt2", "--text-field", "s.body")
    assert train2.tolist() == train.tolist()
    err = one_line_error(capsys, str(tmp_path / "t.parquet"), "--text-field", "n", "--out-dir", str(tmp_path / "o5"))
    assert "column 'n' holds int64, not text" in err


def test_bad_lines_stop_with_file_and_line_or_are_skipped_and_counted(tmp_path, capsys):
    good = documents(20, seed=6)
    lines = [json.dumps({"text": d}) for d in good[:10]]
    lines += ["{not json", json.dumps([1, 2]), json.dumps({"text": 7}), json.dumps({"title": "x"}), "",
              json.dumps({"text": None}), json.dumps({"text": ""})]
    lines += [json.dumps({"text": d}) for d in good[10:]]
    path = tmp_path / "scrape.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(("\r\n".join(lines) + "\r\n").encode()))
    err = one_line_error(capsys, str(path), "--out-dir", str(tmp_path / "o1"))
    assert "scrape.jsonl.zst, line 11: not JSON" in err and "--skip-bad-records" in err
    assert not (tmp_path / "o1" / "vocab.json").exists()
    meta, train, val = prepare(path, tmp_path / "o2", "--tokenizer", "gpt2", "--skip-bad-records")
    out = capsys.readouterr()
    s = meta["sources"][0]
    assert (s["documents"], s["skipped_records"], s["empty_documents"]) == (20, 4, 2)
    assert "20 documents" in out.out and "4 bad records" in out.out and "line 11" in out.err
    _, t2, v2 = prepare(write_all_kinds(tmp_path / "clean", good)["jsonl"], tmp_path / "o3", "--tokenizer", "gpt2")
    assert (train.tobytes(), val.tobytes()) == (t2.tobytes(), v2.tobytes())  # the good ones, as if alone


def test_damaged_inputs_are_one_line(tmp_path, capsys):
    raw = zstandard.ZstdCompressor().compress(jsonl_bytes(documents(200)))
    (tmp_path / "cut.jsonl.zst").write_bytes(raw[: len(raw) // 2])
    assert "is not a whole Zstandard file" in one_line_error(capsys, str(tmp_path / "cut.jsonl.zst"))
    (tmp_path / "fake.zst").write_bytes(b"plain text, not compressed\n" * 10)
    assert "is named .zst but is not Zstandard-compressed" in one_line_error(capsys, str(tmp_path / "fake.zst"))
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 but not really" * 10)
    assert "is not a readable Parquet file" in one_line_error(capsys, str(tmp_path / "fake.parquet"))
    (tmp_path / "empties.jsonl").write_text('{"text": ""}\n{"text": null}\n', encoding="utf-8")
    assert "has no text" in one_line_error(capsys, str(tmp_path / "empties.jsonl"))


def test_a_folder_tree_skips_hidden_and_binary_files_and_counts_them(tmp_path, capsys):
    tree = tmp_path / "repo"
    (tree / "src" / "pkg").mkdir(parents=True)
    (tree / ".git").mkdir()
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (tree / ".env").write_text("SECRET=1\n", encoding="utf-8")
    (tree / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tree / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tree / "README.md").write_text("# Project\n\nSome words of the readme.\n" * 20, encoding="utf-8")
    (tree / "src" / "pkg" / "main.py").write_text("def main():\n    return 42\n" * 30, encoding="utf-8")
    (tree / "src" / "empty.txt").write_text("", encoding="utf-8")
    meta, train, val = prepare(tree, tmp_path / "out", "--tokenizer", "char")
    s = meta["sources"][0]
    assert (s["files"], s["documents"], s["empty_documents"]) == (3, 2, 1)
    assert s["skipped_files"] == {"hidden": 2, "binary": 2}
    text = "".join(meta["itos"][i] for i in np.concatenate([train, val]))
    assert text.startswith("# Project") and text.endswith("return 42\n") and "SECRET" not in text
    assert "left out: 1 empty documents, 2 hidden files or folders, 2 binary files" in capsys.readouterr().out


def test_a_mixology_folder_mixing_kinds(tmp_path):
    docs_a, docs_b = documents(60, seed=7), documents(60, seed=8)
    mix = tmp_path / "mix"
    (mix / "50_web").mkdir(parents=True)
    (mix / "50_web" / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(docs_a[:30])))
    pq.write_table(pa.table({"text": docs_a[30:]}), mix / "50_web" / "b.parquet")
    write_all_kinds(mix / "50_books", docs_b)
    (mix / "50_books" / "corpus.jsonl").unlink()
    for name in ("corpus.jsonl.gz", "corpus.jsonl.zst", "corpus.parquet"):
        (mix / "50_books" / name).unlink()
    meta, train, val = prepare(mix, tmp_path / "out", "--tokenizer", "gpt2")
    books, web = meta["sources"]  # in sorted order
    assert (web["files"], web["documents"], books["documents"]) == (2, 60, 60)
    _, alone, _ = prepare(write_all_kinds(tmp_path / "a", docs_a)["jsonl"], tmp_path / "alone", "--tokenizer", "gpt2")
    start, n = books["train_tokens"], web["train_tokens"]
    assert train[start] == GPT2_EOT  # <|endoftext|> between the sources too
    assert train[start + 1 : start + n].tolist() == alone[: n - 1].tolist()  # web's documents, as if alone


def test_the_bpe_learns_from_all_of_a_corpus_sorted_by_topic(tmp_path):
    rng = random.Random(9)
    topics = ["zebraqq", "walrusxx", "yakpp", "otterkk"]  # one topic per quarter, each word only in its quarter
    docs = [" ".join(rng.choice(WORDS + [t] * 6) for _ in range(60)) + "\n" for t in topics for _ in range(150)]
    meta, _, _ = prepare(write_all_kinds(tmp_path / "in", docs)["parquet"], tmp_path / "out", "--vocab-size", "320")
    tok = from_meta(meta)
    assert all(len(tok.encode(" " + t)) == 1 for t in topics)  # the last topics too, not only the first


def test_bins_do_not_depend_on_the_number_of_workers_nor_on_threads_or_processes(tmp_path):
    docs = documents(400, seed=10) + ["word " * 300_000]  # many short documents and one of several jobs
    docs[7] += " it said <|endoftext|> as text"  # a job whose documents cannot be joined by that text
    docs[300] += " " + "x" * 700  # a run a learned BPE cuts (bpe_pipeline.run_pieces)
    path = write_all_kinds(tmp_path / "in", docs)["jsonl.zst"]
    results = []
    for workers, processes in (("1", "0"), ("2", "0"), ("2", "1")):
        for tokenizer in ("gpt2", "bpe"):
            out = tmp_path / f"{tokenizer}-{workers}-{processes}"
            proc = subprocess.run(
                [sys.executable, "-m", "nanogpt", "prepare", str(path), "--tokenizer", tokenizer,
                 "--out-dir", str(out)],
                env={"PYTHONPATH": str(SRC), "NANOGPT_PREPARE_WORKERS": workers,
                     "NANOGPT_PREPARE_PROCESSES": processes, "PATH": "/usr/bin:/bin"},
                capture_output=True, text=True, timeout=300, check=False,
            )
            assert proc.returncode == 0, proc.stderr
            results.append((tokenizer, (out / "train.bin").read_bytes(), (out / "val.bin").read_bytes()))
    assert results[:2] == results[2:4] == results[4:]
    train, val = (np.frombuffer(b, dtype=np.uint16) for b in results[0][1:])
    # the text <|endoftext|> stayed text: the token comes once between two documents of a split, never inside one
    assert (train == GPT2_EOT).sum() + (val == GPT2_EOT).sum() == len(docs) - 2


@pytest.mark.parametrize("processes", ["0", "1"])
def test_sigterm_while_threads_or_processes_encode_records_publishes_nothing(tmp_path, processes):
    path = tmp_path / "big.jsonl.zst"  # about 25 MB of JSON Lines: pass 2 is well under way when it is stopped
    path.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes(documents(300, seed=11) * 300)))
    out = tmp_path / "new" / "out"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "NANOGPT_PREPARE_PROCESSES": processes}
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", "prepare", str(path), "--tokenizer", "gpt2",
                             "--out-dir", str(out)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None and not (out.is_dir() and any(p.name.startswith(".train") for p in out.iterdir())):
            time.sleep(0.01)
        assert proc.poll() is None, "prepare ended before it wrote a part: give it more text"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last == "nanogpt prepare: error: stopped by SIGTERM (its temporary files are removed)"
    assert not (tmp_path / "new").exists()


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:  # it ended meanwhile
        return ""


def _prepare_on_processes(tmp_path: Path, out: Path, stderr: int) -> tuple[subprocess.Popen, list[str]]:
    """`prepare` of ~25 MB of JSON Lines on 2 worker processes, once both have started: (it, their pids)."""
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl_bytes(documents(300, seed=11) * 300))
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "NANOGPT_PREPARE_PROCESSES": "1",
           "NANOGPT_PREPARE_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "nanogpt", "prepare", str(path), "--tokenizer", "gpt2",
                             "--out-dir", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    workers: list[str] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # its children: the two workers, and multiprocessing's resource tracker
        listed = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [p for p in listed if "spawn_main" in _cmdline(p)]
    assert proc.poll() is None and len(workers) == 2, "prepare ended before its workers started: give it more text"
    return proc, workers


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker processes with pgrep")
def test_kill_9_leaves_no_encoding_process_behind(tmp_path):
    proc, workers = _prepare_on_processes(tmp_path, tmp_path / "out", subprocess.DEVNULL)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in workers)


@pytest.mark.skipif(sys.platform != "linux", reason="finds the worker processes with pgrep")
def test_a_worker_killed_is_one_line_and_publishes_nothing(tmp_path):
    proc, workers = _prepare_on_processes(tmp_path, tmp_path / "new" / "out", subprocess.PIPE)
    subprocess.run(["kill", "-9", workers[0]], check=False)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert stderr.strip().splitlines()[-1].startswith("nanogpt prepare: error: a worker process of prepare was killed")
    assert not (tmp_path / "new").exists()


def test_generate_stops_at_end_of_text_unless_told_not_to(capsys):
    from nanogpt.generate import _until_all_end

    # a batch of samples goes on until every row has written <|endoftext|>, then stops
    steps = [[1, 2], [GPT2_EOT, 3], [4, GPT2_EOT], [5, 6]]
    assert list(_until_all_end(iter(steps), GPT2_EOT)) == steps[:3]
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "--stop-at-end-of-text, --no-stop-at-end-of-text" in capsys.readouterr().out


def test_a_training_set_past_4_gib_trains_and_resumes(tmp_path: Path) -> None:
    """More than 2**32 tokens (a sparse train.bin of 8 GiB + 4 KiB; token 0 is in the vocabulary): batches are
    drawn from past the 32-bit offsets and read from there, and a run trains and resumes on it."""
    import os

    import torch

    from nanogpt import data

    source = tmp_path / "t.txt"
    source.write_text("hello world, a small text to prepare. " * 400, encoding="utf-8")
    folder = tmp_path / "data"
    assert main(["prepare", "--tokenizer", "char", str(source), "--out-dir", str(folder)]) == 0
    train = folder / "train.bin"
    with open(train, "r+b") as f:
        f.truncate(2**33 + 4096)  # 2**32 + 2,048 tokens: most windows start past 2**31
    n = train.stat().st_size // 2
    meta = json.loads((folder / "vocab.json").read_text())
    meta["train_tokens"] = meta["sources"][0]["train_tokens"] = n
    (folder / "vocab.json").write_text(json.dumps(meta))
    # a batch whose first window starts past 2**31 tokens reads the tokens written there
    index = next(i for i in range(1000) if data.batch_offsets(1, data.TRAIN_STREAM, i, 1, n, 8)[0] > 2**31)
    start = int(data.batch_offsets(1, data.TRAIN_STREAM, index, 1, n, 8)[0])
    marker = np.arange(1, 10, dtype=np.uint16) % meta["vocab_size"]
    fd = os.open(train, os.O_WRONLY)
    try:
        os.pwrite(fd, marker.tobytes(), 2 * start)
    finally:
        os.close(fd)
    tokens = data.load(str(folder), None, None, None)
    sampler = data.BatchSampler(tokens.train, block_size=8, batch_size=1, seed=1, stream=data.TRAIN_STREAM,
                                device=torch.device("cpu"))
    x, y = sampler.batch(index)
    assert x[0].tolist() == marker[:8].tolist() and y[0].tolist() == marker[1:].tolist()
    tiny = ["--layer-count", "1", "--head-count", "2", "--embedding-size", "32", "--block-size", "32",
            "--batch-size", "4", "--eval-iters", "2", "--device", "cpu", "--dtype", "float32", "--no-compile"]
    out = tmp_path / "out"
    assert main(["train", "--headless", "--data-dir", str(folder), *tiny, "--steps", "2", "--out-dir", str(out)]) == 0
    assert main(["train", "--headless", "--resume-training", str(out / "model_step_2"), "--steps", "3"]) == 0
    assert (out / "model_step_3.manifest.json").is_file()


def _bytes_read() -> int:
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts the bytes read in /proc/self/io (Linux)")
@pytest.mark.parametrize("processes", ["0", "1"])  # 1: a plain .jsonl is marked by scan_ranges' workers
def test_the_bpe_sample_reads_only_near_what_it_takes_and_takes_the_same(tmp_path, monkeypatch, processes):
    monkeypatch.setenv("NANOGPT_PREPARE_PROCESSES", processes)
    from nanogpt.prepare.bpe import spread
    from nanogpt.prepare.documents import Cursor, Reading, split_stream
    from nanogpt.prepare.passes import read_pass
    from nanogpt.prepare.progress import Progress
    from nanogpt.prepare.sources import find_sources

    paths = write_all_kinds(tmp_path / "in", documents(4000, seed=12))

    def sample(path: Path, skip: bool) -> tuple[list[str], int]:
        sources, _ = find_sources(path)
        read_pass(sources, path, Reading(), "gpt2", Progress(open(os.devnull, "w")))  # noqa: SIM115
        source, cursor = sources[0], (Cursor() if skip else None)
        before = _bytes_read()
        # 2,000 characters of ~550,000: blocks of 1,024 one in ~270 (bpe.spread), marks every 65,536 (records.py)
        taken = list(spread(split_stream(source, 0.1, Reading(), None, cursor), 2000, int(source.chars * 0.9),
                            cursor))
        return taken, _bytes_read() - before

    for kind in ("jsonl", "tree", "parquet", "jsonl.zst"):  # (the tree's files sort in another order)
        expected, whole = sample(paths[kind], skip=False)
        assert 1000 < sum(map(len, expected)) <= 2000
        taken, read = sample(paths[kind], skip=True)
        assert taken == expected, kind
        if kind in ("jsonl", "tree"):  # a plain .jsonl jumps to its marks; a folder leaves whole files unread
            assert read < whole // 3, (kind, read, whole)


def test_the_first_pass_on_processes_finds_what_one_reader_finds(tmp_path):
    # a plain .jsonl is counted in ranges on worker processes (scan_ranges.py): blank lines, empty and bad
    # records, CRLF and characters outside ASCII spread over the ranges
    rng = random.Random(13)
    lines = []
    for i, doc in enumerate(documents(6000, seed=13)):
        kind = rng.random()
        lines.append("" if kind < 0.02 else '{"text": ""}' if kind < 0.04 else "not json" if kind < 0.05 and i > 4000
                     else json.dumps({"text": doc.replace("\n", "\r\n") + "ÿ" * (i % 3)}, ensure_ascii=i % 2 == 0))
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    seen = {}
    for processes in ("0", "1"):
        env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "NANOGPT_PREPARE_PROCESSES": processes,
               "NANOGPT_PREPARE_WORKERS": "2"}
        run = [sys.executable, "-m", "nanogpt", "prepare", str(path), "--tokenizer", "char"]
        failed = subprocess.run([*run, "--out-dir", str(tmp_path / f"x{processes}")], env=env,
                                capture_output=True, text=True, timeout=300, check=False)
        out = tmp_path / f"out{processes}"
        done = subprocess.run([*run, "--skip-bad-records", "--out-dir", str(out)], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        meta = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
        note = [line for line in done.stderr.splitlines() if "bad record" in line]  # how many, and the first
        seen[processes] = (failed.returncode, failed.stderr.strip().splitlines()[-1], note,
                           (out / "train.bin").read_bytes(), (out / "val.bin").read_bytes(), meta["itos"],
                           meta["sources"])
    assert seen["0"] == seen["1"]
    assert seen["1"][0] == 1 and f"{path}, line 40" in seen["1"][1]  # in a later range than the first
