"""The tokenizer a prepare encodes with: the one it chooses (char, gpt2, or a BPE learnt from the text), or with
`--tokenizer-from SOURCE` the one of an existing run, checkpoint or prepared folder, so that a model trained on
one text can be fine-tuned on another (`train --init-from`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import PrepareConfig
from ..errors import UserError
from ..store.files import read_json
from ..tokenizers import GPT2_EOT, BpeTokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer, from_meta, token_dtype
from .bpe import Learned, learn_bpe
from .documents import Reading
from .encode import Encoder
from .progress import Progress
from .sources import Source


def _meta_of(source: str) -> dict[str, Any]:
    """The tokenizer dict of SOURCE: a vocab.json, a prepared folder, a checkpoint's config.json or stem, a run."""
    path = Path(source)
    if path.is_dir() and (path / "vocab.json").is_file():
        return read_json(path / "vocab.json", "vocabulary")
    if path.is_file() and path.name.endswith(".json") and not path.name.endswith(".config.json"):
        return read_json(path, "vocabulary")
    from ..checkpoint import read_meta
    from ..store.runs import resolve

    if not path.exists() and not Path(f"{source}.config.json").is_file():
        raise UserError(f"--tokenizer-from {source}: no such run, checkpoint, prepared folder or vocab.json")
    return read_meta(resolve(path))["tokenizer"]  # a run folder: its latest checkpoint (all share the tokenizer)


def reused_tokenizer(source: str) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer named by --tokenizer-from and its part of vocab.json (UserError when it is not whole)."""
    meta = _meta_of(source)
    if not isinstance(meta, dict):
        raise UserError(f"--tokenizer-from {source}: not a vocabulary")
    tokenizer = from_meta(meta)
    tok_meta = tokenizer.to_meta()
    if tokenizer.name == "gpt2":
        tok_meta["eot_token"] = GPT2_EOT
    elif getattr(tokenizer, "eot", None) is not None:  # a BPE learnt with <|endoftext|> as its last id
        tok_meta["eot_token"] = tokenizer.eot
    tok_meta["tokenizer_from"] = source
    print(f"tokenizer: {source}'s ({tokenizer.name}, {tokenizer.vocab_size:,} tokens)", file=sys.stderr)
    return tokenizer, tok_meta


def drop_table(text_chars: list[str], itos: list[str], source: str) -> dict[int, None]:
    """For a character vocabulary: the text's characters it lacks, to be left out (str.translate), and said."""
    missing = sorted(set(text_chars) - set(itos))
    if missing:
        shown = " ".join(map(repr, missing[:20])) + (" ..." if len(missing) > 20 else "")
        print(f"note: left out {len(missing)} character(s) not in the vocabulary of {source}: {shown}", file=sys.stderr)
    return {ord(c): None for c in missing}


def tokenizer_for(
    sources: list[Source], cfg: PrepareConfig, itos: list[str] | None, reused: tuple[Tokenizer, dict] | None,
    reading: Reading, progress: Progress,
) -> tuple[dict[str, Any], Encoder]:
    """The tokenizer a prepare encodes with, after pass 1 (`itos`: the text's characters, for char): the one of
    --tokenizer-from, or the one chosen (a BPE learnt before anything is encoded, from the training parts only);
    its part of vocab.json and the encoder."""
    if reused is not None:
        tokenizer, tok_meta = reused
        bpe = tokenizer if isinstance(tokenizer, BpeTokenizer) else None
        chars = tokenizer.itos if isinstance(tokenizer, CharTokenizer) else None
        drop = drop_table(itos, chars, str(cfg.tokenizer_from)) if itos is not None and chars is not None else None
        eot = tok_meta.get("eot_token") if tokenizer.name != "char" else None
        return tok_meta, Encoder(cfg.tokenizer, chars, token_dtype(tok_meta["vocab_size"]), bpe=bpe, eot=eot,
                                 drop=drop)
    learned = (learn_bpe(sources, cfg.val_fraction, cfg.vocab_size, reading, progress)
               if cfg.tokenizer == "bpe" else None)
    tok_meta = _tokenizer_meta(itos, learned)
    eot = GPT2_EOT if cfg.tokenizer == "gpt2" else learned.tokenizer.eot if learned else None
    return tok_meta, Encoder(cfg.tokenizer, itos, token_dtype(tok_meta["vocab_size"]),
                             bpe=learned.tokenizer if learned else None, eot=eot)


def _tokenizer_meta(itos: list[str] | None, learned: Learned | None) -> dict[str, Any]:
    """The tokenizer's part of vocab.json (the same a checkpoint stores); a BPE's says how it was learnt."""
    if itos is not None:
        return CharTokenizer(itos).to_meta()
    if learned is None:
        return {**GPT2Tokenizer().to_meta(), "eot_token": GPT2_EOT}
    eot = {} if learned.tokenizer.eot is None else {"eot_token": learned.tokenizer.eot}
    return {
        **learned.tokenizer.to_meta(),
        **eot,
        "bpe_sample_chars": learned.sample_chars,
        "bpe_train_chars": learned.train_chars,
        "bpe_vocab_size_chosen": learned.chosen,
    }
