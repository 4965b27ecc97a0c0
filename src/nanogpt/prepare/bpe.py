"""Learning the byte-level BPE of `prepare --tokenizer bpe` from the training part of the text, never its validation.

Each source gives characters of its training documents by its mixology share, at most `BPE_SAMPLE_CHARS` in
all, streamed into `tokenizers`' trainer: a huge corpus is learnt from a sample, in bounded memory (the trainer
keeps word counts, not text). The sample is spread over the whole training part, not taken from its start:
every k-th block of its text, so that a corpus sorted by topic (or by date, or a tree of folders) gets a
tokenizer of all of it. Which blocks depends only on the text, so the same corpus gives the same BPE.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import ABANDONED
from ..tokenizers import BpeTokenizer, default_bpe_vocab_size, train_bpe
from .encode import shares, signals_held
from .documents import Cursor, Reading, split_stream
from .progress import Progress
from .sources import Source

T = TypeVar("T")
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
    """Characters of each source's training part the BPE learns from: the mixology shares of the training
    text, scaled down to at most `cap` in all."""
    take = shares(train_chars(sources, val_fraction), [s.percent for s in sources])
    total = sum(take)
    return [t * cap // total for t in take] if total > cap else take


def learn_bpe(sources: list[Source], val_fraction: float, vocab_size: int | None, reading: Reading,
              progress: Progress) -> Learned:
    """Learn the BPE of `prepare --tokenizer bpe` (its size `vocab_size`, or chosen from the text's size)."""
    used = sum(shares(train_chars(sources, val_fraction), [s.percent for s in sources]))
    sizes = sample_sizes(sources, val_fraction)
    # progress counts the bytes read: the sample is spread over each source's training part, which is all read
    progress.start("learning BPE", sum(int(d.size * (1 - val_fraction)) for s in sources for d in s.docs))
    size = vocab_size if vocab_size is not None else default_bpe_vocab_size(used)
    texts = (piece for s, want, train in zip(sources, sizes, train_chars(sources, val_fraction))
             for cursor in (Cursor(),)
             for piece in spread(split_stream(s, val_fraction, reading, progress, cursor), want, train, cursor))
    learnt = [0]  # characters the trainer took: the sample, or less where distinct_bounded stopped it
    tokenizer = _obeying_signals(lambda: train_bpe(distinct_bounded(texts, counted=learnt), size))
    progress.finish()
    return Learned(tokenizer, learnt[0], used, chosen=vocab_size is None)


# Bytes (UTF-8) of distinct words the BPE learns from at most. The byte-level trainer keeps each distinct word
# with its pairs' positions, about 80 bytes a byte of it (measured: 8 MB of random letters took 650 MB), and a text
# of random words or letters is all distinct words: 32 M characters of it took 3 GB. English text reaches this
# bound late, if at all: its distinct words are few, each seen many times. 2 MB keeps prepare's peak under 400 MB
# on such texts (issue 33).
DISTINCT_BYTES = 2 << 20


def distinct_bounded(texts: Iterable[str], limit: int = DISTINCT_BYTES, counted: list[int] | None = None
                     ) -> Iterator[str]:
    """`texts` until their distinct words (split at spaces, as the trainer's pre-tokens nearly are) hold `limit`
    bytes: the trainer's memory follows the distinct words' bytes, not the text. Only words' hashes are kept.
    `counted[0]` adds up the characters passed on."""
    seen: set[int] = set()
    held = 0
    for text in texts:
        if counted is not None:
            counted[0] += len(text)
        for word in text.split():
            key = hash(word)
            if key not in seen:
                seen.add(key)
                held += len(word) if word.isascii() else len(word.encode("utf-8", "surrogatepass"))
        yield text
        if held >= limit:
            return


def _obeying_signals(work: Callable[[], T]) -> T:
    """`work()` (the trainer, in Rust) in a thread of its own while this one waits in slices of 0.1 s: Python
    runs a signal's handler in the main thread only, between two of its bytecodes, so SIGTERM and Ctrl-C were
    obeyed only once learning ended (minutes, on some texts). Stopped so, the trainer's thread is left to end
    with the process."""
    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["value"] = work()
        except BaseException as e:  # re-raised where the caller waits
            done["error"] = e

    thread = threading.Thread(target=target, name="bpe-trainer", daemon=True)
    with signals_held():
        thread.start()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except BaseException:
        ABANDONED.append(thread)  # stopped: the trainer runs on until the process ends (cli.main)
        raise
    if "error" in done:
        raise done["error"]
    return done["value"]


def sample_block(want: int) -> int:
    """Characters of one block of the sample: small enough that a small sample still has a few hundred blocks,
    large enough that a block cuts few words in two (each cut splits one word of thousands)."""
    return min(1 << 16, max(1 << 10, want // 256))


def spread(stream: Iterator[tuple[str, str | None]], want: int, train: int, cursor: Cursor | None = None
           ) -> Iterator[str]:
    """About `want` characters of the training text of `stream` (split_stream's pieces, about `train` characters
    of training text in all): every `stride`-th block of `sample_block(want)` characters, from the first. With
    the stream's `cursor`, it says where the next block begins, so the stream skips what lies before."""
    if want <= 0:
        return
    block = sample_block(want)
    stride = max(1, -(-train // want))
    pos, left = 0, want
    for name, text in stream:
        if name == "val":
            return  # the validation documents come last: nothing after this is learnt from
        if text is None:
            if cursor is not None:
                pos = cursor.at  # documents before it may have been skipped
            continue
        end = pos + len(text)
        b = -(-(pos // block) // stride) * stride  # the first chosen block that ends after pos
        while b * block < end and left > 0:
            lo, hi = max(pos, b * block) - pos, min(end, (b + 1) * block) - pos
            if hi > lo:
                piece = text[lo : min(hi, lo + left)]
                left -= len(piece)
                yield piece
            b += stride
        pos = end
        if left <= 0:
            return
        if cursor is not None:
            cursor.wanted = -(-(pos // block) // stride) * stride * block


# Below this many training characters a learned BPE can write worse than char level once the run is long: the
# measured points lie on either side of it (BENCHMARKS.md, "Tokenizers at equal time": Alice, 0.12 M characters,
# char won at 60 s; Tiny Shakespeare, 1 M, every BPE size won).
SMALL_TEXT_CHARS = 500_000


def summary_line(meta: dict[str, Any]) -> str:
    """What prepare's summary says of a learned BPE (vocab.json `meta`): its size and why, what it learnt from."""
    size = f"{meta['vocab_size']:,} tokens"
    if meta["bpe_vocab_size_chosen"]:
        small = meta["vocab_size"] < 512  # the rule for a small text (tokenizers.default_bpe_vocab_size)
        rule = f": the 256 bytes and {meta['vocab_size'] - 256} merges, about its square root" if small else ""
        size += f" (chosen for {meta['bpe_train_chars']:,} characters of training text{rule}; --vocab-size sets it)"
    sample = f"{meta['bpe_sample_chars']:,} characters of the training text"
    if meta["bpe_sample_chars"] < meta["bpe_train_chars"]:
        sample += (f" (spread over each source's, {BPE_SAMPLE_CHARS:,} in all at most; fewer where its distinct words "
                   f"hold {DISTINCT_BYTES:,} bytes)")
    line = f"learned a byte-level BPE of {size} from {sample}, none of the validation text"
    if meta["bpe_train_chars"] < SMALL_TEXT_CHARS:
        line += (
            f"\nnote: {meta['bpe_train_chars']:,} characters is little text for a learned BPE: its tokens are seen "
            "few times each, and a long run overfits sooner than at character level (BENCHMARKS.md, "
            "\"Tokenizers at equal time\"); --tokenizer char may write better, or a smaller --vocab-size"
        )
    return line
