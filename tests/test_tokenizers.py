"""Tokenizers: char vocabularies, the offline GPT-2 BPE, and the cut points prepare streams GPT-2 text at."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from engine_fixtures import gutenberg_book, shakespeare_text

from nanogpt.cli import main
from nanogpt.errors import UserError
from nanogpt.prepare import safe_cut
from nanogpt.tokenizers import GPT2_EOT, CharTokenizer, GPT2Tokenizer, from_meta, gpt2_encoding, token_dtype


def test_gpt2_is_openai_gpt2_offline():
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot == GPT2_EOT == 50256
    assert gpt2_encoding().encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "Ünïcödé, émojis 🙂 and\ttabs\n\n  'll've 1234567"
    assert tok.decode(tok.encode(text)) == text


def test_char_vocabulary_is_sorted_by_code_point():
    tok = CharTokenizer("hello, Wörld!\n")
    assert tok.itos == sorted(set("hello, Wörld!\n")) and tok.itos[0] == "\n"
    assert tok.decode(tok.encode("Wörld")) == "Wörld"
    with pytest.raises(UserError, match="not in this model's vocabulary"):
        tok.encode("xyz")


def test_token_dtype_boundary():
    assert token_dtype(65) == token_dtype(50257) == token_dtype(65536) == "uint16"
    assert token_dtype(65537) == "uint32"


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_vocab_json_rebuilds_the_tokenizer(tmp_path, tokenizer):
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert main(["prepare", str(tmp_path / "t.txt"), "--tokenizer", tokenizer, "--out-dir", str(out)]) == 0
    meta = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    tok = from_meta(meta)
    ids = np.fromfile(out / "train.bin", dtype="<u2").tolist() + np.fromfile(out / "val.bin", "<u2").tolist()
    assert tok.decode(ids) == text


def test_from_meta_rejects_what_it_does_not_know():
    with pytest.raises(UserError, match="unknown tokenizer"):
        from_meta({"tokenizer": "sentencepiece"})
    with pytest.raises(UserError, match="no 'itos'"):
        from_meta({"tokenizer": "char"})


TRICKY = "a  \n\n b\r\n\tc's 'll 12 345,67 ... !!\n   \n\nÉté — ünïcödé 🙂🙂  x\u00a0y\u3000z end.\n"


@pytest.fixture
def texts():
    return [
        TRICKY * 40,
        gutenberg_book()[:200_000],
        shakespeare_text()[:200_000],
    ]


def test_safe_cut_never_changes_gpt2_tokens(texts):
    enc = gpt2_encoding()
    rng = random.Random(0)
    for text in texts:
        for _ in range(40):
            end = rng.randrange(2, len(text))
            start = max(0, end - rng.randrange(2, 20_000))
            piece = text[start:end]
            cut = safe_cut(piece)
            if cut == 0:
                continue
            assert 0 < cut < len(piece) and not piece[cut - 1].isspace() and piece[cut].isspace()
            assert enc.encode_ordinary(piece[:cut]) + enc.encode_ordinary(piece[cut:]) == enc.encode_ordinary(
                piece
            )


def test_safe_cut_finds_nothing_without_a_word_boundary():
    assert safe_cut("nospaceshere") == 0
    assert safe_cut("   \n\n  ") == 0
    assert safe_cut("word\n\nnext") == 4


def hostile_texts(rng: random.Random) -> list[str]:
    """Prose, code-like text, every kind of whitespace, runs longer than MAX_RUN, scripts of 1 to 4 bytes."""
    from nanogpt.bpe_pipeline import WHITESPACE

    def soup(n: int) -> str:
        # and the characters whose whitespace-ness engines disagree on (Python's isspace says yes to \x1c-\x1f)
        odd = ["\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u200b", "\ufeff"]
        return "".join(rng.choice(["a", "Z", "7", "'", "s", " ", "\n", "é", "日", "😀", "--", "ll", *WHITESPACE, *odd])
                       for _ in range(n))

    return [
        shakespeare_text()[:200_000], gutenberg_book()[:40_000], soup(50_000), "x" * 1000 + " y", " " * 700 + "z",
        "\u3000" * 300 + "\u2003" * 257 + "q", "ab" + "".join(rng.choices("xyz019!?", k=3000)) + " cd " + "é" * 600,
        "".join(chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])) for _ in range(20_000)),
    ]


@pytest.mark.parametrize("vocab_size", [300, 2048])
def test_a_learned_bpe_encodes_by_tiktoken_exactly_as_by_tokenizers(vocab_size: int) -> None:
    """A learned BPE encodes by tiktoken (about 8 times as fast), and the ids are those of its own `tokenizers`
    pipeline (the Split of long runs, GPT-2's regex, its merges) on any text."""
    from nanogpt.tokenizers import train_bpe

    rng = random.Random(vocab_size)
    tok = train_bpe([shakespeare_text(), *hostile_texts(random.Random(1))[2:]], vocab_size)
    assert tok.fast is not None
    for text in hostile_texts(rng):
        assert tok.encode(text) == tok.tok.encode(text, add_special_tokens=False).ids, text[:40]


def test_a_bpe_whose_ids_do_not_follow_its_merges_keeps_the_exact_path() -> None:
    """Two merged tokens' ids swapped (a hand-edited vocab.json): tiktoken would merge in another order, so the
    `tokenizers` pipeline encodes, and the ids are still its own."""
    from nanogpt.tokenizers import train_bpe

    meta = train_bpe([shakespeare_text()], 400).to_meta()
    vocab = meta["tokenizer_json"]["model"]["vocab"]
    a, b = (t for t, i in vocab.items() if i in (300, 301))
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tok = from_meta(meta)
    assert tok.fast is None
    text = shakespeare_text()[:20_000]
    assert tok.encode(text) == tok.tok.encode(text, add_special_tokens=False).ids


def test_the_quick_long_run_check_agrees_with_the_pattern():
    from nanogpt.bpe_pipeline import LONG_RUN, MAX_RUN, has_long_run

    rng = random.Random(5)
    # ASCII and not, every kind of whitespace, astral and lone surrogates, runs on either side of the bound
    alphabet = ["a", "é", "\u3000", " ", "\n", "\x1c", "\U0001f600", "\u2028", "\ud800", "\U00100000", "\x85"]
    lengths = [1, 2, 100, MAX_RUN // 2 - 1, MAX_RUN // 2, MAX_RUN // 2 + 1, MAX_RUN - 1, MAX_RUN, MAX_RUN + 1, 600]
    seen = set()
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) * rng.choice(lengths) for _ in range(rng.randint(0, 6)))
        expected = LONG_RUN.search(text) is not None
        assert has_long_run(text) == expected, [(c, text.count(c)) for c in set(text)]
        seen.add(expected)
    assert seen == {True, False}


def test_a_job_in_one_tiktoken_call_gives_each_documents_own_ids():
    from nanogpt.prepare.jobs import tiktoken_ids
    from nanogpt.tokenizers import train_bpe

    docs = ["  starts with spaces and ends with them  ", "ends in a half <|endof", "text|> begins it", "\n\n",
            "it says <|endoftext|> as text", "word " * 40 + "x" * 600 + "   " + " " * 300 + "end", "café naïve 東京 "]
    learned = train_bpe([shakespeare_text()[:200_000], *docs], 400)
    for enc, eot, is_learned in ((gpt2_encoding(), GPT2_EOT, False), (learned.fast, learned.eot, True)):
        assert enc is not None
        # the slower way (a document holds the text <|endoftext|>, or a long run), and one call
        for chosen in (docs, [d for d in docs if "<|endoftext|>" not in d and "x" * 300 not in d]):
            batch: list[str | None] = []
            for doc in chosen:
                batch += [doc, None]
            expected: list[int] = []
            for doc in chosen:
                expected += (learned.encode(doc) if is_learned else enc.encode_ordinary(doc)) + [eot]
            assert tiktoken_ids(enc, batch, eot, is_learned).tolist() == expected
