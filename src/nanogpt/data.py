"""Token data for training: the bins as np.memmap, checked against vocab.json, a seeded batch sampler for the
training batches and a sampler of windows spread evenly over the split for the evaluations (SpreadSampler).

Batch `i` of a stream is a pure function of (seed, stream, i): numpy's counter-based Philox generator is
keyed by (seed, stream) and its counter starts at `i` in a high word, so no generator state has to be
carried from batch to batch. Exact resume then needs only the batch counter, and under torchrun rank r
of W at local micro-step m draws global micro-batch `counter + m * W + r` of the same stream, so the data
a run sees does not depend on how it is split over processes.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .store.files import read_json
from .tokenizers import CharTokenizer, Tokenizer, from_meta, token_dtype

# The keys of vocab.json that `nanogpt prepare` writes: the tokenizer's own, the token ids' dtype, the counts
# and the summary of the sources (also the dict a checkpoint's config.json stores as "tokenizer").
VOCAB_KEYS = (
    "tokenizer", "vocab_size", "itos", "stoi", "tokenizer_json", "bpe_sample_chars", "bpe_train_chars",
    "bpe_vocab_size_chosen", "eot_token", "dtype", "train_tokens", "val_tokens", "val_fraction", "strip_gutenberg",
    "source", "sources", "tokenizer_from", "text_field",
)

# prepare writes one source per NN_name/ folder, each NN a positive integer and all summing to 100; a folder's
# name (the source's) is at most 255 bytes on every common file system
MAX_SOURCES = 100
MAX_SOURCE_NAME = 255
TRAIN_STREAM = 0  # the training batches' Philox stream (batch_offsets); another stream is another draw
_SCAN_CHUNK = 1 << 24  # tokens per chunk when checking ids against the vocabulary
_FULL_SCAN_LIMIT = (
    1 << 26
)  # above this many tokens only spread-out chunks are checked (a full scan takes minutes)


@dataclass
class TokenData:
    """The training and validation tokens of a prepared dataset and the vocabulary that describes them."""

    train: np.memmap
    val: np.memmap
    meta: dict[str, Any]  # vocab.json as a dict (tokenizer, vocab_size, itos/stoi for char)
    tokenizer: Tokenizer
    source: str  # where it came from, for display

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def read_vocab(path: Path) -> dict[str, Any]:
    """Read and check a vocab.json; UserError when it is missing or not a vocabulary."""
    meta = read_json(path, "vocabulary metadata")
    if not isinstance(meta, dict) or type(meta.get("vocab_size")) is not int or meta["vocab_size"] <= 0:
        raise UserError(f"{path} is not a vocabulary file (it needs a positive integer 'vocab_size')")
    tokenizer = from_meta(meta)
    if tokenizer.vocab_size != meta["vocab_size"]:
        raise UserError(
            f"{path} is inconsistent: vocab_size {meta['vocab_size']} but its tokenizer has "
            f"{tokenizer.vocab_size} tokens"
        )
    check_sources(meta.get("sources"), path, meta.get("val_tokens"))
    # only what we know goes on (it is copied into every checkpoint); stoi is itos's inverse, rebuilt
    kept = {k: meta[k] for k in VOCAB_KEYS if k in meta}
    if isinstance(tokenizer, CharTokenizer):
        kept["stoi"] = dict(tokenizer.stoi)
    return kept


def check_sources(sources: Any, path: Path, val_tokens: Any = None) -> None:
    """vocab.json's `sources` (None: a single source) as prepare writes them: at most MAX_SOURCES, each with a
    name and counts that are integers >= 0. UserError naming the first that is not."""
    if sources is None:
        return
    if not isinstance(sources, list) or len(sources) > MAX_SOURCES:
        what = f"{len(sources):,} sources" if isinstance(sources, list) else f"a {type(sources).__name__}"
        raise UserError(
            f"{path} lists {what} under 'sources'; prepare writes a list of at most {MAX_SOURCES} (one per NN_name/ "
            "folder, the NNs summing to 100): prepare the data again"
        )
    for i, s in enumerate(sources):
        name = s.get("name") if isinstance(s, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_SOURCE_NAME:
            raise UserError(f"{path}: source {i} has no name (a text of 1 to {MAX_SOURCE_NAME} characters): "
                            "prepare the data again")
        for key in ("percent", "files", "chars", "train_tokens", "val_tokens", "val_offset"):
            if key in s and (type(s[key]) is not int or s[key] < 0):
                raise UserError(f"{path}: source {name!r} has {key} {str(s[key])[:40]!r}, not a count: "
                                "prepare the data again")
        if not isinstance(s.get("path", ""), str):
            raise UserError(f"{path}: source {name!r} has a path that is not a text: prepare the data again")
    _check_val_spans(sources, path, val_tokens)


def _check_val_spans(sources: list[dict[str, Any]], path: Path, val_tokens: Any) -> None:
    """The sources' stretches of val.bin follow each other from its start to its end, as prepare writes them:
    an offset out of range passed the reading and failed as a numpy ValueError at the first evaluation."""
    if not all("val_offset" in s and "val_tokens" in s for s in sources):
        return  # data from before per-source validation: evaluated as one
    end = 0
    for s in sources:
        if s["val_offset"] != end:
            raise UserError(f"{path}: source {s['name']!r} starts at validation token {s['val_offset']:,}, where "
                            f"the sources before it end at {end:,}: prepare the data again")
        end += s["val_tokens"]
    if isinstance(val_tokens, int) and end != val_tokens:
        raise UserError(f"{path}: its sources hold {end:,} validation tokens, its val_tokens says {val_tokens:,}: "
                        "prepare the data again")


def dtype_of(meta: dict[str, Any], where: Path | str) -> np.dtype:
    """The on-disk dtype of the token ids: vocab.json's 'dtype' if given, else what prepare writes."""
    name = meta.get("dtype") or token_dtype(int(meta["vocab_size"]))
    if name not in ("uint16", "uint32"):
        raise UserError(f"{where}: unsupported token dtype {name!r} (expected uint16 or uint32)")
    if name == "uint16" and meta["vocab_size"] > 65536:
        raise UserError(f"{where}: vocab_size {meta['vocab_size']} does not fit the declared dtype uint16")
    return np.dtype(name).newbyteorder("<")


def open_bin(
    path: Path, dtype: np.dtype, vocab_size: int, vocab_path: Path, expected: int | None = None
) -> np.memmap:
    """Memory-map a token file, checking its size (against `expected` tokens, when vocab.json records it)
    and that every id is inside the vocabulary."""
    if not path.is_file():
        raise UserError(f"dataset file not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"dataset file is empty: {path}")
    if size % dtype.itemsize:
        raise UserError(
            f"{path} is truncated or not a {dtype.name} token file ({size} bytes is not a multiple of "
            f"{dtype.itemsize}); re-run `nanogpt prepare`"
        )
    if isinstance(expected, int) and size != expected * dtype.itemsize:
        raise UserError(
            f"{path} holds {size // dtype.itemsize} tokens but {vocab_path} says {expected}: "
            "it is truncated or from another `nanogpt prepare` run"
        )
    data = np.memmap(path, dtype=dtype, mode="r")
    n = len(data)
    if n <= _FULL_SCAN_LIMIT:
        starts = range(0, n, _SCAN_CHUNK)
        length = _SCAN_CHUNK
    else:  # huge file: 64 chunks of 1M tokens spread over it, including its start and its end
        length = 1 << 20
        starts = sorted({int(s) for s in np.linspace(0, n - length, 64)})
    top = max(int(data[s : s + length].max()) for s in starts)
    if top >= vocab_size:
        raise UserError(
            f"{path} holds token id {top}, but {vocab_path} has only {vocab_size} tokens: "
            "the vocabulary does not match this data (prepare them together)"
        )
    return data


def _missing_folder(folder: Path) -> str:
    """'data folder not found', with the command that makes one."""
    if folder.is_file() and folder.suffix in (".bin", ".json"):
        return f"--data-dir wants the folder, not a file in it: --data-dir {folder.parent}"
    if folder.is_file():
        return (f"--data-dir {folder} is a file, not a prepared data folder: run `nanogpt prepare {folder}` "
                "first, then train with --data-dir on the folder it writes")
    return f"data folder not found: {folder} (make one from a text file with `nanogpt prepare FILE`)"


def _unprepared_folder(folder: Path) -> str:
    """A folder without vocab.json: name the prepare command that fills it.

    A mixology folder (sub-folders NN_name/) is a source: prepare it as a whole, into a folder of its own.
    """
    subs = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if any(re.fullmatch(r"\d+_.+", name) for name in subs):
        shown = folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder  # as typed
        out = shlex.quote(str(Path("data") / (folder.resolve().name or "dataset")))  # where prepare writes it
        return (f"{shown} is a mixology folder, not prepared data: run `nanogpt prepare "
                f"{shlex.quote(str(shown).rstrip('/') + '/')}` first, then train with --data-dir {out}")
    texts = sorted(p.name for p in folder.iterdir() if p.suffix == ".txt") if folder.is_dir() else []
    source = str(folder / texts[0]) if len(texts) == 1 else "YOUR_TEXT.txt"
    return (f"vocabulary metadata not found: {folder / 'vocab.json'} (the folder holds no prepared data): "
            f"run `nanogpt prepare {source} --out-dir {folder}` first")


def load(
    data_dir: str | Path | None = None,
    training_dataset: str | Path | None = None,
    validation_dataset: str | Path | None = None,
    vocab_metadata: str | Path | None = None,
) -> TokenData:
    """Open a prepared dataset: a folder, or the three files given separately (they override the folder's)."""
    folder = Path(data_dir) if data_dir is not None else None
    if folder is not None and not folder.is_dir():
        raise UserError(_missing_folder(folder))
    if folder is None and (training_dataset is None or validation_dataset is None):
        raise UserError("give --data-dir, or both --training-dataset and --validation-dataset")
    train_path = Path(training_dataset) if training_dataset is not None else folder / "train.bin"
    val_path = Path(validation_dataset) if validation_dataset is not None else folder / "val.bin"
    if vocab_metadata is not None:
        vocab_path = Path(vocab_metadata)
    elif folder is not None:
        vocab_path = folder / "vocab.json"
        if not vocab_path.exists():
            raise UserError(_unprepared_folder(folder))
    else:  # prepare writes vocab.json beside the bins
        vocab_path = train_path.parent / "vocab.json"
    meta = read_vocab(vocab_path)
    dtype = dtype_of(meta, vocab_path)
    # prepare records the token counts; they only describe the bins of the same folder
    same = train_path.parent == vocab_path.parent
    train = open_bin(
        train_path, dtype, meta["vocab_size"], vocab_path, meta.get("train_tokens") if same else None
    )
    same = val_path.parent == vocab_path.parent
    val = open_bin(val_path, dtype, meta["vocab_size"], vocab_path, meta.get("val_tokens") if same else None)
    source = str(folder) if folder is not None and training_dataset is None else str(train_path)
    return TokenData(train=train, val=val, meta=meta, tokenizer=from_meta(meta), source=source)


def val_sources(meta: dict[str, Any], n_val: int) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each source's tokens in val.bin, as `prepare` records them for a mixology
    folder; [] for a single source, or for bins that vocab.json does not describe (older data, other files)."""
    sources = meta.get("sources")
    if not isinstance(sources, list) or len(sources) < 2 or not all(isinstance(s, dict) for s in sources):
        return []
    spans: list[tuple[str, int, int]] = []
    names = Counter(str(s.get("name", "")) for s in sources)
    for s in sources:
        start, count, name = s.get("val_offset"), s.get("val_tokens"), str(s.get("name", ""))
        if not isinstance(start, int) or not isinstance(count, int):
            return []
        # two folders may share a name (10_web/, 20_web/): their folder tells them apart
        spans.append((name if names[name] == 1 else str(s.get("path", name)).rstrip("/"), start, start + count))
    if spans[-1][2] != n_val:
        return []
    return spans


def check_block_size(data: TokenData, block_size: int) -> None:
    """A window needs block_size + 1 tokens (inputs and shifted targets): UserError if a split is shorter."""
    for name, tokens in (("validation", data.val), ("training", data.train)):
        if len(tokens) <= block_size:
            raise UserError(
                f"--block-size {block_size} is larger than the {name} data ({len(tokens)} "
                f"token{'s' if len(tokens) != 1 else ''}) allows: a window needs {block_size + 1:,}, its inputs and "
                "the token after them; use a smaller --block-size or more text"
            )


def batch_offsets(
    seed: int, stream: int, index: int, batch_size: int, n_tokens: int, block_size: int
) -> np.ndarray:
    """Start offsets of the windows of batch `index`: a pure function of its arguments."""
    # Key (seed, stream) picks an independent stream; the batch index sits in the counter's third word,
    # so each batch reads its own 2**128-long stretch of the stream and never overlaps another batch.
    bitgen = np.random.Philox(
        key=np.array([seed, stream], dtype=np.uint64), counter=np.array([0, 0, index, 0], dtype=np.uint64)
    )
    return np.random.Generator(bitgen).integers(0, n_tokens - block_size, size=batch_size)


class WindowReader:
    """Batches (x, y) of `batch_size` windows of one split, read where `offsets(i)` says; each batch's ids checked
    against the vocabulary as it is read. The two samplers below say where."""

    def __init__(self, tokens: np.ndarray, *, block_size: int, batch_size: int, device: torch.device,
                 vocab_size: int | None = None):
        self.tokens = tokens
        # open_bin checks a large file's ids in spread-out chunks only: each batch is checked as it is read, so
        # that an id past the vocabulary elsewhere is one line, not an IndexError (or a CUDA assert) mid-run
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.batch_size = batch_size
        self.device = device
        self._window = np.arange(block_size + 1)

    def offsets(self, index: int) -> np.ndarray:
        """Start offsets of batch `index`'s windows."""
        raise NotImplementedError

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, both (batch_size, block_size) int64 on the device."""
        read = self.tokens[self.offsets(index)[:, None] + self._window]
        if self.vocab_size is not None and int(read.max()) >= self.vocab_size:
            top = int(read.max())
            raise UserError(
                f"{getattr(self.tokens, 'filename', None) or 'the token data'} holds token id {top} (batch {index}), "
                f"but the vocabulary has only {self.vocab_size} tokens: the vocabulary does not match this data "
                "(prepare them together)"
            )
        windows = torch.from_numpy(read.astype(np.int64))
        if self.device.type == "cuda":
            # pinned host memory lets the copy run asynchronously with the GPU's work
            windows = windows.pin_memory().to(self.device, non_blocking=True)
        else:
            windows = windows.to(self.device)
        return windows[:, :-1], windows[:, 1:]


class BatchSampler(WindowReader):
    """Training batches: random windows, batch i a pure function of (seed, stream, i)."""

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        seed: int,
        stream: int,
        device: torch.device,
        vocab_size: int | None = None,
    ):
        super().__init__(tokens, block_size=block_size, batch_size=batch_size, device=device, vocab_size=vocab_size)
        self.seed = seed
        self.stream = stream

    def offsets(self, index: int) -> np.ndarray:
        return batch_offsets(self.seed, self.stream, index, self.batch_size, len(self.tokens), self.block_size)


class SpreadSampler(WindowReader):
    """Validation batches: `windows` windows spread evenly over the split, from its first token to its last, batch
    i holding windows i*B to i*B+B-1 (wrapping to the first ones past the end).

    Spread, not drawn at random: on a text whose parts differ (source code, a manual's chapters) a random draw of a
    few hundred windows moves the loss by several percent from one draw to the next, and the draw depended on the
    batch size, so two runs that differed only in batch size were scored on different text. Spread evenly, every
    part of the split counts by its length, and runs with the same context and windows are scored on the same ones.
    """

    def __init__(self, tokens: np.ndarray, *, block_size: int, batch_size: int, windows: int, device: torch.device,
                 vocab_size: int | None = None):
        super().__init__(tokens, block_size=block_size, batch_size=batch_size, device=device, vocab_size=vocab_size)
        # the last window's targets end on the split's last token, as a random draw's can
        self.starts = np.linspace(0, len(tokens) - block_size - 1, max(1, windows)).round().astype(np.int64)

    def offsets(self, index: int) -> np.ndarray:
        return self.starts[(index * self.batch_size + np.arange(self.batch_size)) % len(self.starts)]


def global_batch_index(counter: int, micro_step: int, rank: int, world_size: int) -> int:
    """Global micro-batch that rank r of W draws at local micro-step m of the step starting at `counter`."""
    return counter + micro_step * world_size + rank
