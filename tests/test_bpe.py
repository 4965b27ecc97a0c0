"""The byte-level BPE learned by `nanogpt prepare --tokenizer bpe`: exact round trips, token byte lengths,
training text only, the vocabulary size rule, hostile vocab.json, and the commands that use it (train and
exact resume, generate, export to transformers, --init-from), all through the real CLI on bundled text."""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import random
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from engine_fixtures import TINY_FLAGS
from safetensors.numpy import load_file

from nanogpt import checkpoint
from nanogpt.cli import main
from nanogpt.prepare.bpe import BPE_SAMPLE_CHARS, sample_sizes
from nanogpt.prepare.sources import find_sources
from nanogpt.tokenizers import (
    BpeTokenizer,
    CharTokenizer,
    GPT2Tokenizer,
    default_bpe_vocab_size,
    from_meta,
    same_vocabulary,
    train_bpe,
)


def bundled_text() -> str:
    """Tiny Shakespeare as the package ships it (LF line ends)."""
    with resources.as_file(resources.files("nanogpt") / "data" / "tinyshakespeare.txt.gz") as path:
        return gzip.decompress(path.read_bytes()).decode("utf-8")


def random_unicode(rng: random.Random, n: int) -> str:
    """Valid text of every kind: ASCII, controls, CRLF, accents, CJK, emoji (with joiners), any plane."""
    pools = [
        lambda: chr(rng.randrange(0x20, 0x7F)),
        lambda: rng.choice(["\r\n", "\r", "\n", "\t", "\x00", "\x07", "\x1b", "\x7f", " ", "  "]),
        lambda: chr(rng.randrange(0xA0, 0x800)),
        lambda: chr(rng.randrange(0x4E00, 0xA000)),
        lambda: rng.choice(["🙂", "👩‍👩‍👧", "🇫🇷", "❤️", "\u200d", "\ufeff", "\U0010fffd"]),
        lambda: chr(rng.choice([rng.randrange(0x800, 0xD800), rng.randrange(0xE000, 0x110000)])),
    ]
    return "".join(rng.choice(pools)() for _ in range(n))


def prepare_cli(source: Path, out: Path, *flags: str) -> str:
    """`nanogpt prepare SOURCE --tokenizer bpe FLAGS --out-dir OUT` in this process; returns its stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["prepare", str(source), "--tokenizer", "bpe", *flags, "--out-dir", str(out)]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def shakespeare_bpe() -> BpeTokenizer:
    text = bundled_text()
    return train_bpe((text[i : i + 50_000] for i in range(0, len(text), 50_000)), 512)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60,000 characters of the bundled text prepared with a 512-token BPE by the CLI."""
    root = tmp_path_factory.mktemp("bpe")
    (root / "input.txt").write_text(bundled_text()[:60_000], encoding="utf-8")
    prepare_cli(root / "input.txt", root / "data", "--vocab-size", "512")
    return root / "data"


# ----------------------------------------------------------------------------- the tokenizer itself
def test_any_text_round_trips_exactly(shakespeare_bpe: BpeTokenizer) -> None:
    rng = random.Random(23)
    for _ in range(40):
        text = random_unicode(rng, rng.randrange(1, 400))
        ids = shakespeare_bpe.encode(text)
        assert shakespeare_bpe.decode(ids) == text
    # its vocabulary survives vocab.json: the rebuilt tokenizer gives the same ids
    rebuilt = from_meta(json.loads(json.dumps(shakespeare_bpe.to_meta())))
    text = random_unicode(rng, 2000) + bundled_text()[:5000]
    assert rebuilt.encode(text) == shakespeare_bpe.encode(text)


def test_bpe_tokens_hold_several_bytes_of_the_text_they_learnt(shakespeare_bpe: BpeTokenizer) -> None:
    text = bundled_text()[-20_000:]
    assert shakespeare_bpe.vocab_size == 512
    assert len(text.encode("utf-8")) / len(shakespeare_bpe.encode(text)) > 1.7  # bytes per token; 1 for bytes alone


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_token_bytes_sum_to_the_utf8_length(kind: str, shakespeare_bpe: BpeTokenizer) -> None:
    rng = random.Random(7)
    texts = [bundled_text()[:3000], *(random_unicode(rng, 300) for _ in range(10))]
    if kind == "char":
        tok = CharTokenizer("".join(texts))
    else:
        tok = GPT2Tokenizer() if kind == "gpt2" else shakespeare_bpe
    sizes = tok.token_bytes()
    assert sizes.shape == (tok.vocab_size,) and np.issubdtype(sizes.dtype, np.integer)
    for text in texts:
        ids = tok.encode(text)
        assert int(sizes[ids].sum()) == len(text.encode("utf-8")), text[:40]


# ----------------------------------------------------------------------------- prepare
def test_prepare_bpe_chooses_the_size_and_says_so(tmp_path: Path) -> None:
    text = bundled_text()[:40_000] + "\r\nend without a newline at the end 🙂"
    (tmp_path / "t.txt").write_bytes(text.encode("utf-8"))
    said = prepare_cli(tmp_path / "t.txt", tmp_path / "out")
    text = text.replace("\r\n", "\n")  # prepare reads line ends as nanoGPT does
    train_chars = int(len(text) * 0.9)
    meta = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    size = default_bpe_vocab_size(train_chars)
    assert meta["tokenizer"] == "bpe" and meta["vocab_size"] == size == 512 and meta["dtype"] == "uint16"
    assert meta["bpe_vocab_size_chosen"] is True and meta["bpe_sample_chars"] == train_chars
    assert f"learned a byte-level BPE of {size:,} tokens (chosen for {train_chars:,} characters" in said
    # the bins are the encodings of the two parts, which give the text back exactly
    tok = from_meta(meta)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype="<u2").tolist()
    val = np.fromfile(tmp_path / "out" / "val.bin", dtype="<u2").tolist()
    assert train == tok.encode(text[:train_chars]) and val == tok.encode(text[train_chars:])
    assert tok.decode(train + val) == text
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)


def test_a_small_text_is_told_that_char_level_may_write_better(tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_text(bundled_text()[:40_000], encoding="utf-8")
    said = prepare_cli(tmp_path / "small.txt", tmp_path / "out")
    assert "little text for a learned BPE" in said and "--tokenizer char may write better" in said
    (tmp_path / "big.txt").write_text(bundled_text()[:600_000], encoding="utf-8")  # 540,000 training characters
    assert "little text" not in prepare_cli(tmp_path / "big.txt", tmp_path / "out_big")


def test_the_vocabulary_size_rule_grows_with_the_text() -> None:
    sizes = [default_bpe_vocab_size(n) for n in (131_072, 1_000_000, 100_000_000, 10**12)]
    assert sizes == sorted(sizes) and sizes[0] == 512 and sizes[1] == 1024 and sizes[-1] == 32768
    assert all(s & (s - 1) == 0 for s in sizes)  # powers of two
    # a small text: the 256 bytes and about the square root of its length in merges, up to 512 at 131,072 characters
    small = [default_bpe_vocab_size(n) for n in (0, 3_150, 10_000, 36_000, 131_071)]
    assert small == [256 + 32, 256 + 64, 256 + 128, 512, 512]


def test_a_small_text_gets_a_smaller_bpe_and_is_told_why(tmp_path: Path) -> None:
    text = bundled_text()[:3_500]  # 3,150 training characters: a BPE of 512 was 256 merges for ~1,200 tokens
    (tmp_path / "tiny.txt").write_text(text, encoding="utf-8")
    said = prepare_cli(tmp_path / "tiny.txt", tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8"))
    assert meta["vocab_size"] == 320 and meta["bpe_train_chars"] == 3_150
    assert ("learned a byte-level BPE of 320 tokens (chosen for 3,150 characters of training text: the 256 bytes "
            "and 64 merges, about its square root; --vocab-size sets it)") in said
    assert "--tokenizer char may write better" in said
    tok = from_meta(meta)
    train = np.fromfile(tmp_path / "out" / "train.bin", dtype="<u2").tolist()
    assert tok.decode(train) == text[:3_150]


def write_source(folder: Path, text: str) -> None:
    folder.mkdir(parents=True)
    (folder / "text.txt").write_text(text, encoding="utf-8")


def words(rng: random.Random, n_chars: int, extra: str = "") -> str:
    vocab = ["the", "king", "and", "queen", "of", "all", "this", "land", "shall", "see", "night", "day"]
    out, size = [], 0
    while size < n_chars:
        w = rng.choice(vocab) + rng.choice([" ", " ", ", ", ".\n"])
        out.append(w)
        size += len(w)
    return "".join(out) + extra


def test_a_mixology_bpe_learns_from_the_training_parts_by_share_only(tmp_path: Path) -> None:
    rng = random.Random(5)
    # a: its last 10% (its validation part) repeats a word the training parts never have
    a = words(rng, 6_600) + " plumbob" * 300  # the control: a frequent word of the training part
    a += " zyxquv" * (len(a) // 70)
    split = int(len(a) * 0.9)
    assert "zyxquv" not in a[:split] and a[split:].count("zyxquv") > 100
    # b: ten times longer, so its share (50%, as a's) is a tenth of its training part, spread over all of it
    # (issue 30; it used to be the start): a word only in its middle is learnt as well as one at its start
    b = words(rng, 9_000) + " wobbleq" * 4000 + words(rng, 50_000)
    write_source(tmp_path / "mix" / "50_a", a)
    write_source(tmp_path / "mix" / "50_b", b)
    sources, _ = find_sources(tmp_path / "mix")
    for s, text in zip(sources, (a, b)):
        s.chars = len(text)
    sizes = sample_sizes(sources, 0.1)
    assert sizes == [split, split]  # b gives as much as a, from its start
    prepare_cli(tmp_path / "mix", tmp_path / "out", "--vocab-size", "400")
    tok = from_meta(json.loads((tmp_path / "out" / "vocab.json").read_text(encoding="utf-8")))
    assert len(tok.encode(" plumbob")) == 1  # learnt: a frequent training word becomes one token
    assert len(tok.encode(" zyxquv")) >= 4  # never seen: validation text is not learnt from
    assert len(tok.encode(" wobbleq")) == 1  # learnt: the sample of b reaches past its start
    # the sample has a cap: a huge corpus is learnt from a sample of it
    for s in sources:
        s.chars = 10 * BPE_SAMPLE_CHARS
    assert sum(sample_sizes(sources, 0.1)) == BPE_SAMPLE_CHARS


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tokenizer", "bpe", "--vocab-size", "100"], "--vocab-size must be 256 to 262,144, got 100"),
        (["--tokenizer", "char", "--vocab-size", "512"], "--vocab-size is for --tokenizer bpe"),
    ],
)
def test_impossible_vocabulary_sizes_are_one_line(flags: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "t.txt").write_text("hello world\n" * 50, encoding="utf-8")
    code = main(["prepare", str(tmp_path / "t.txt"), *flags, "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- hostile vocab.json
def bpe_model(meta: dict) -> dict:
    return meta["tokenizer_json"]["model"]


def swap_first_merge(meta: dict) -> None:
    bpe_model(meta)["merges"][0] = ["Ġ", "nonexistent"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("tokenizer_json"), "no 'tokenizer_json' with a BPE 'model'"),
        (lambda m: m.update(tokenizer_json=[1, 2]), "no 'tokenizer_json' with a BPE 'model'"),
        (lambda m: bpe_model(m).update(type="WordPiece"), "no 'tokenizer_json' with a BPE 'model'"),
        (lambda m: bpe_model(m).update(vocab="abc"), "no 'vocab' object"),
        (lambda m: bpe_model(m)["vocab"].update(Ġt=3), "not the integers 0 to vocab size - 1"),
        (lambda m: bpe_model(m)["vocab"].update(Ġt="256"), "not the integers 0 to vocab size - 1"),
        (lambda m: bpe_model(m)["vocab"].update({"a b": bpe_model(m)["vocab"].pop("Ġt")}), "byte-level characters"),
        (lambda m: bpe_model(m)["vocab"].update(Ġzzq=bpe_model(m)["vocab"].pop("a")), "single-byte tokens"),
        (swap_first_merge, "is not two tokens of the vocabulary"),
        (lambda m: bpe_model(m)["vocab"].update({f"Ġ{i}a": 512 + i for i in range(300_000)}), "300,512 tokens"),
        (lambda m: m.update(vocab_size=600), "vocab_size 600 but its tokenizer has 512 tokens"),
    ],
    ids=["missing", "not-object", "not-bpe", "vocab-not-object", "repeated-id", "string-id", "not-bytes",
         "missing-byte", "bad-merge", "huge", "size-mismatch"],
)
def test_a_damaged_bpe_vocabulary_is_one_line(change, message: str, bpe_dir: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(bpe_dir, data)
    meta = json.loads((data / "vocab.json").read_text(encoding="utf-8"))
    change(meta)
    (data / "vocab.json").write_text(json.dumps(meta), encoding="utf-8")
    code = main(["train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(data),
                 "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err and message in lines[0], err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the commands that use it
def train_cli(capsys, *args: str) -> None:
    code = main(["train", "--headless", *TINY_FLAGS, *args])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()


def test_resume_on_bpe_data_is_exact(bpe_dir: Path, tmp_path: Path, capsys) -> None:
    flags = ["--data-dir", str(bpe_dir), "--steps", "8", "--save-interval", "4", "--validation-interval", "4",
             "--dropout", "0.1", "--log-interval", "1"]
    train_cli(capsys, *flags, "--out-dir", str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a").glob("model_step_4.*"):
        shutil.copy(f, tmp_path / "b" / f.name)
    train_cli(capsys, "--resume-training", str(tmp_path / "b" / "model_step_4"))
    log_a = checkpoint.read_log(tmp_path / "a" / "model_step_8")
    log_b = checkpoint.read_log(tmp_path / "b" / "model_step_8")
    assert [e["step"] for e in log_b] == list(range(1, 9))
    for key in ("loss", "validation_loss"):
        want = [e[key] for e in log_a if key in e]
        assert len(want) >= 2 and [e[key] for e in log_b if key in e] == pytest.approx(want, abs=1e-5)
    wa = load_file(tmp_path / "a" / "model_step_8.safetensors")
    wb = load_file(tmp_path / "b" / "model_step_8.safetensors")
    assert wa.keys() == wb.keys() and all(np.allclose(wa[k], wb[k], rtol=0, atol=1e-6) for k in wa)
    # the checkpoint carries the whole tokenizer
    saved = checkpoint.read_meta(tmp_path / "b" / "model_step_8")["tokenizer"]
    assert same_vocabulary(saved, json.loads((bpe_dir / "vocab.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def bpe_stem(bpe_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe_run")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", "--headless", *TINY_FLAGS, "--steps", "3", "--data-dir", str(bpe_dir),
                     "--out-dir", str(out)]) == 0
    return out / "model_step_3"


def test_generate_streams_bpe_text(bpe_stem: Path, capsys) -> None:
    from nanogpt.generate import generate_tokens, start_ids

    prompt = "ROMEO: naïve 🙂 日本"
    assert main(["generate", str(bpe_stem), "--prompt", prompt, "--tokens-to-generate", "30", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and len(out) > len(prompt)
    # from an empty prompt, greedy: what is streamed token by token is the decoding of the ids. Issue 30: an
    # empty prompt starts from <|endoftext|>, a document's start, where it used to be a newline; and the sample
    # ends where the model writes <|endoftext|> (--stop-at-end-of-text)
    assert main(["generate", str(bpe_stem), "--tokens-to-generate", "30", "--temperature", "0"]) == 0
    model, meta = checkpoint.load_model(bpe_stem)
    tok = from_meta(meta["tokenizer"])
    assert start_ids(tok, "") == [tok.eot] == [tok.vocab_size - 1]
    new = list(itertools.takewhile(lambda t: t != tok.eot, generate_tokens(model, start_ids(tok, ""), 30,
                                                                             temperature=0.0)))
    assert capsys.readouterr().out == tok.decode(new)


def test_export_gives_our_ids_in_transformers_and_init_from_takes_it_back(
    bpe_stem: Path, bpe_dir: Path, tmp_path: Path, capsys
) -> None:
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert main(["export", str(bpe_stem), str(out)]) == 0
    capsys.readouterr()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = from_meta(checkpoint.read_meta(bpe_stem)["tokenizer"])
    # the model's configs name <|endoftext|> (its last id), so that transformers' generate stops at it as ours does
    for name in ("config.json", "generation_config.json"):
        assert json.loads((out / name).read_text())["eos_token_id"] == ours.eot == ours.vocab_size - 1
    rng = random.Random(11)
    texts = ["ROMEO:\nWhat,  say'st   thou?\n\n", "naïve café — 日本語 😀\r\n", "   lead\t\ttrail   ", "<|endoftext|>"]
    # runs longer than MAX_RUN (256) are cut as when the BPE learnt them, in the exported pipeline too (issue 33)
    texts += ["ab " + "".join(rng.choices("xyzXYZ0123", k=700)) + " cd", " " * 600 + "e", "é" * 300, "q" * 512]
    for text in [*texts, *(random_unicode(rng, 200) for _ in range(5))]:
        ids = ours.encode(text)
        assert tok(text)["input_ids"] == ids, text[:40]
        assert tok.decode(ids) == text
    # the exported folder starts a run on the same data, and is refused on data with other merges
    train_cli(capsys, "--init-from", str(out), "--steps", "1", "--data-dir", str(bpe_dir),
              "--out-dir", str(tmp_path / "run"))
    other = tmp_path / "other"
    (tmp_path / "o.txt").write_text(bundled_text()[-60_000:], encoding="utf-8")
    prepare_cli(tmp_path / "o.txt", other, "--vocab-size", "512")
    capsys.readouterr()  # prepare's progress lines
    code = main(["train", "--headless", *TINY_FLAGS, "--init-from", str(out), "--steps", "1",
                 "--data-dir", str(other), "--out-dir", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    assert code == 1 and "is not the one of --init-from" in err and len(err.strip().splitlines()) == 1, err


def test_resume_on_data_with_other_merges_is_refused(bpe_stem: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "o.txt").write_text(bundled_text()[-60_000:], encoding="utf-8")
    prepare_cli(tmp_path / "o.txt", tmp_path / "other", "--vocab-size", "512")
    (tmp_path / "run").mkdir()
    for f in bpe_stem.parent.glob(bpe_stem.name + ".*"):
        shutil.copy(f, tmp_path / "run" / f.name)
    capsys.readouterr()
    code = main(["train", "--headless", "--resume-training", str(tmp_path / "run" / bpe_stem.name), "--steps", "4",
                 "--data-dir", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert code == 1 and "differs from checkpoint" in err, err
