"""Learning the byte-level BPE of `prepare --tokenizer bpe` from the training part of the text, never its validation.

Each source gives the start of its training part (the text before its train/val split) by its mixology share,
at most `BPE_SAMPLE_CHARS` characters in all, streamed into `tokenizers`' trainer: a huge corpus is learnt from
a sample, in bounded memory (the trainer keeps word counts, not text).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..tokenizers import BpeTokenizer, default_bpe_vocab_size, train_bpe
from .encode import shares
from .progress import Progress
from .sources import Source, doc_text

BPE_SAMPLE_CHARS = 32 << 20  # characters the BPE learns from at most: tens of seconds, a few hundred MB at worst


@dataclass
class Learned:
    """A learned BPE and how it was learned, for vocab.json and prepare's summary."""

    tokenizer: BpeTokenizer
    sample_chars: int  # characters it learned from
    train_chars: int  # characters of training text the mix uses (what the vocabulary size was chosen for)
    chosen: bool  # the vocabulary size came from default_bpe_vocab_size, not --vocab-size


def train_chars(sources: list[Source], val_fraction: float) -> list[int]:
    """Characters of each source before its train/val split (the same split as prepare's encoding pass)."""
    return [int(s.chars * (1 - val_fraction)) for s in sources]


def sample_sizes(sources: list[Source], val_fraction: float, cap: int = BPE_SAMPLE_CHARS) -> list[int]:
    """Characters of each source's training part the BPE learns from, from its start: the mixology shares of
    the training text, scaled down to at most `cap` in all."""
    take = shares(train_chars(sources, val_fraction), [s.percent for s in sources])
    total = sum(take)
    return [t * cap // total for t in take] if total > cap else take


def learn_bpe(sources: list[Source], val_fraction: float, vocab_size: int | None, progress: Progress) -> Learned:
    """Learn the BPE of `prepare --tokenizer bpe` (its size `vocab_size`, or chosen from the text's size)."""
    used = sum(shares(train_chars(sources, val_fraction), [s.percent for s in sources]))
    sizes = sample_sizes(sources, val_fraction)
    progress.start("learning BPE", sum(sizes))
    size = vocab_size if vocab_size is not None else default_bpe_vocab_size(used)
    tokenizer = train_bpe(_sample(sources, sizes, progress), size)
    progress.finish()
    return Learned(tokenizer, sum(sizes), used, chosen=vocab_size is None)


def _sample(sources: list[Source], sizes: list[int], progress: Progress) -> Iterator[str]:
    """The first `sizes[i]` characters of source i's kept text, in chunks."""
    for s, left in zip(sources, sizes):
        for d in s.docs:
            for text in doc_text(d, None):
                if left <= 0:
                    break
                piece = text[:left]
                left -= len(piece)
                progress.advance(len(piece))
                yield piece
            if left <= 0:
                break


# Below this many training characters a learned BPE can write worse than char level once the run is long: the
# measured points lie on either side of it (BENCHMARKS.md, "Tokenizers at equal time": Alice, 0.12 M characters,
# char won at 60 s; Tiny Shakespeare, 1 M, every BPE size won).
SMALL_TEXT_CHARS = 500_000


def summary_line(meta: dict[str, Any]) -> str:
    """What prepare's summary says of a learned BPE (vocab.json `meta`): its size and why, what it learnt from."""
    size = f"{meta['vocab_size']:,} tokens"
    if meta["bpe_vocab_size_chosen"]:
        size += f" (chosen for {meta['bpe_train_chars']:,} characters of training text; --vocab-size sets it)"
    sample = f"{meta['bpe_sample_chars']:,} characters of the training text"
    if meta["bpe_sample_chars"] < meta["bpe_train_chars"]:
        sample += f" (the start of each source's, {BPE_SAMPLE_CHARS:,} in all at most)"
    line = f"learned a byte-level BPE of {size} from {sample}, none of the validation text"
    if meta["bpe_train_chars"] < SMALL_TEXT_CHARS:
        line += (
            f"\nnote: {meta['bpe_train_chars']:,} characters is little text for a learned BPE: its tokens are seen "
            "few times each, and a long run overfits sooner than at character level (BENCHMARKS.md, "
            "\"Tokenizers at equal time\"); --tokenizer char may write better, or a smaller --vocab-size"
        )
    return line
