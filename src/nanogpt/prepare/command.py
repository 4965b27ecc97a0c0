"""The `nanogpt prepare` command: its steps in order, its output folder, vocab.json; and the bundled corpus's cache.

One run: find the sources; pass 1 reads them (lengths, Gutenberg windows, the char vocabulary); pass 2
splits each source at `int(chars * (1 - val_fraction))` and encodes its train and val text into part
files; each source's tokens are cut to its mixology share and the parts joined into train.bin / val.bin.
Everything is written under temporary names and published at the very end as one unit: the old vocab.json is
removed before the bins are renamed into place and the new one comes last, so a folder with a vocab.json
always holds the bins it describes, even after a kill between the renames. A prepare holds a lock on its
output folder (locks.py), so two never mix their files there. SIGTERM ends a prepare like an error (temporary
files removed, one line, exit 1); what a kill -9 leaves is removed by the next prepare there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import re
import shlex
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..store.atomic import listed_temp_file, publish, remove_stale_temps, temp_file
from ..config import PrepareConfig
from ..errors import UserError
from ..store.files import cache_dir, listing, read_json
from ..store.locks import Claim, hold
from ..tokenizers import TOKENIZERS, default_bpe_vocab_size, token_dtype
from .documents import Reading
from .encode import Encoder, Part, copy_prefix, shares
from .inputs import source_name
from .passes import SPLITS, encode_pass, read_pass
from .progress import Progress
from .reuse import reused_tokenizer, tokenizer_for
from .report import DEFAULT_TOKENIZER, summary
from .sources import Source, find_sources

BUNDLED_NAME = "tinyshakespeare"


def prepare(source: str | os.PathLike | None = None, **settings: Any) -> dict[str, Any]:
    """Tokenize SOURCE (a file, a mixology folder, or None for the bundled corpus); return vocab.json's dict.

    `settings` are PrepareConfig's fields (tokenizer, vocab_size, out_dir, val_fraction, strip_gutenberg). Ends by
    printing the `nanogpt train` command that trains on the result.
    """
    cfg = PrepareConfig(source=None if source is None else os.fspath(source), **settings)
    cfg.validate()
    out = output_folder(cfg)
    meta = _prepare(cfg, out, report=sys.stdout)
    print(f"train on it with: nanogpt train --data-dir {shlex.quote(str(out))}", flush=True)
    return meta


def output_folder(cfg: PrepareConfig) -> Path:
    """--out-dir, else a folder of its own: data/NAME in the current folder, NAME being the source's name.

    Not beside the source: a second file prepared there would overwrite the first one's bins.
    """
    if cfg.out_dir is not None:
        return Path(cfg.out_dir)
    if cfg.source is None:
        return Path("data") / BUNDLED_NAME
    path = Path(cfg.source)
    if path.is_dir():
        return Path("data") / (path.resolve().name or "dataset")  # resolve: "." and ".." have no name
    return Path("data") / source_name(path)


def _prepare(cfg: PrepareConfig, out: Path, report: TextIO, held: Claim | None = None) -> dict[str, Any]:
    with _sigterm_stops():
        if cfg.source is None:
            with resources.as_file(resources.files("nanogpt") / "data" / f"{BUNDLED_NAME}.txt.gz") as bundled:
                return _run(bundled, out, cfg, report, f"bundled {BUNDLED_NAME}", held)
        path = Path(cfg.source)
        return _run(path, out, cfg, report, str(path), held)


def _run(path: Path, out: Path, cfg: PrepareConfig, report: TextIO, shown: str, held: Claim | None) -> dict[str, Any]:
    """One prepare of `path` into `out`; `shown` is how vocab.json names the source; `held`: the caller's
    lock on `out`, if it took one."""
    sources, ignored = find_sources(path)
    mixology = any(s.mixed for s in sources)
    if mixology and ignored:
        print(f"ignored (not in a sub-folder named NN_name/ with NN > 0): {listing(ignored)}", file=sys.stderr)
    progress = Progress(sys.stderr)
    parts: list[dict[str, Part]] = []  # per source: its train and val part
    temps: list[Path] = []
    encoder: Encoder | None = None
    claim = _claim_folder(out, held)
    try:
        reading = Reading(cfg.text_field, cfg.skip_bad_records, cfg.strips_gutenberg)
        reused = reused_tokenizer(cfg.tokenizer_from) if cfg.tokenizer_from is not None else None
        cfg = dataclasses.replace(cfg, tokenizer=reused[0].name) if reused is not None else cfg
        itos = read_pass(sources, path, reading, cfg.tokenizer, progress, cfg.val_fraction, cfg.strip_gutenberg is True)
        # the BPE is learnt before anything is encoded, from the training parts only
        tok_meta, encoder = tokenizer_for(sources, cfg, itos, reused, reading, progress)
        encode_pass(sources, parts, out, cfg.val_fraction, reading, encoder, progress, temps)
        take = _take(sources, parts, cfg.val_fraction)
        dtype = token_dtype(tok_meta["vocab_size"])
        itemsize = np.dtype(dtype).itemsize
        finals = {name: _join([p[name] for p in parts], take[name], out, name, itemsize, temps) for name in SPLITS}
        meta = _metadata(sources, parts, take, tok_meta, dtype, cfg, shown)
        fh = listed_temp_file(out, "vocab.json", temps)
        vocab_tmp = temps[-1]
        with io.TextIOWrapper(fh, encoding="utf-8") as text:  # written as it is made: json.dumps of a character
            json.dump(meta, text, ensure_ascii=False, indent=1)  # vocabulary of 1 M held ~300 MB of pieces at once
            text.write("\n")
        # one unit: no vocab.json while the bins change, so that it only ever describes complete bins; and in
        # the folder locked: renamed meanwhile, its name may lead to another dataset now (locks.Claim)
        claim.check()
        (out / "vocab.json").unlink(missing_ok=True)
        publish(finals["train"], out / "train.bin")
        publish(finals["val"], out / "val.bin")
        publish(vocab_tmp, out / "vocab.json")
    except OSError as e:
        raise UserError(f"writing to {out} failed: {e.strerror or e}") from None
    finally:
        if encoder is not None:
            encoder.abort()
        for p in (p for pair in parts for p in pair.values()):
            p.fh.close()
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if held is None:
            claim.release()  # after a failure, also the folders it created, empty again

    summary(report, meta, out, mixology)
    return meta


# the files a prepare writes through temporary files (its parts, the joined bins, vocab.json, the probe)
_OWN_FILES = re.compile(r"(train|val)(-\d+|\.bin)|vocab\.json|probe")


def _claim_folder(out: Path, held: Claim | None) -> Claim:
    """Create and lock `out` (unless the caller holds it), remove what a killed prepare left there and check
    that it takes files. Two prepares into one folder would publish a vocab.json beside the other's bins."""
    claim = held
    try:
        if claim is None:
            claim = hold(out, f"{out} is in use by another nanogpt command writing there (a prepare or a run): "
                         "wait for it to finish, or give another --out-dir")
        remove_stale_temps(out, _OWN_FILES)  # what a killed prepare left here
        fh, probe = temp_file(out, "probe")
        fh.close()
        probe.unlink()
    except BaseException as e:  # SIGTERM too (a UserError from _sigterm_stops): the folders it made go with it
        if claim is not None and held is None:
            claim.release()
        if isinstance(e, OSError):
            raise UserError(f"cannot write to the output folder {out}: {e.strerror or e}") from None
        raise
    return claim


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM (`kill`, a job scheduler) stops a prepare like an error: the temporary files go on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise UserError("stopped by SIGTERM (its temporary files are removed)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _take(sources: list[Source], parts: list[dict[str, Part]], val_fraction: float) -> dict[str, list[int]]:
    """Tokens of each source's train and val parts that go into the bins (the mixology shares)."""
    percents = [s.percent for s in sources]
    take = {name: shares([p[name].tokens for p in parts], percents) for name in SPLITS}
    for name in SPLITS:
        if sum(take[name]) == 0:
            i = min(range(len(sources)), key=lambda j: parts[j][name].tokens * 100 // sources[j].percent)
            raise UserError(
                f"too little text for a {name} split: {sources[i].label} gives {parts[i][name].tokens} {name} "
                f"tokens at --val-fraction {val_fraction}"
            )
    return take


def _join(parts: list[Part], take: list[int], out: Path, name: str, itemsize: int, temps: list[Path]) -> Path:
    """The first `take[i]` tokens of each part, one after the other, in a temporary file; returns its path."""
    if len(parts) == 1 and take[0] == parts[0].tokens:
        return parts[0].path  # a single file: its part already is the whole result
    fh = listed_temp_file(out, f"{name}.bin", temps)
    tmp = temps[-1]
    with fh:
        for part, n in zip(parts, take):
            copy_prefix(part.path, fh, n * itemsize)
    return tmp


def _metadata(
    sources: list[Source],
    parts: list[dict[str, Part]],
    take: dict[str, list[int]],
    tok_meta: dict[str, Any],
    dtype: str,
    cfg: PrepareConfig,
    shown: str,
) -> dict[str, Any]:
    """vocab.json: the tokenizer's own dict (the same a checkpoint stores), the token counts, the sources."""
    train_total, val_total = sum(take["train"]), sum(take["val"])
    meta: dict[str, Any] = {**tok_meta, "dtype": dtype}
    meta.update(
        train_tokens=train_total,
        val_tokens=val_total,
        val_fraction=cfg.val_fraction,
        strip_gutenberg=cfg.strips_gutenberg,
        source=shown,
    )
    if any(d.kind != "text" for s in sources for d in s.docs):
        meta.update(text_field=cfg.text_field)
    # val.bin holds each source's val tokens one after another: where they start lets training measure
    # each source's validation loss on its own (train/step.py)
    val_offsets = [sum(take["val"][:i]) for i in range(len(sources))]
    meta["sources"] = [
        {
            "name": s.name,
            "path": s.label,
            "percent": s.percent,
            "files": len(s.docs),
            "documents": s.count,
            "bytes": sum(d.size for d in s.docs),
            "empty_documents": sum(d.empty for d in s.docs),
            "skipped_records": sum(d.bad for d in s.docs),
            "skipped_files": {"hidden": s.hidden, "binary": s.binary,
                              **({"repeated_folders": s.repeated} if s.repeated else {})},
            "chars": s.chars,
            "train_tokens": t,
            "val_tokens": v,
            "val_offset": o,
            "train_share": round(t / train_total, 6),
            "val_share": round(v / val_total, 6),
            "used": round((t + v) / max(1, p["train"].tokens + p["val"].tokens), 6),
        }
        for s, p, t, v, o in zip(sources, parts, take["train"], take["val"], val_offsets)
    ]
    return meta


# ----------------------------------------------------------------------------------------------------------
# the bundled corpus, prepared once into a cache


def is_prepared(folder: str | os.PathLike, tokenizer: str | None = None) -> bool:
    """True when folder holds a vocab.json (of `tokenizer`, when given) and train/val bins whose sizes match the
    counts it records."""
    folder = Path(folder)
    try:
        meta = read_json(folder / "vocab.json", "vocabulary metadata")
        itemsize = np.dtype(meta["dtype"]).itemsize
        return (
            meta["tokenizer"] in TOKENIZERS
            and meta["tokenizer"] == (tokenizer or meta["tokenizer"])
            and (folder / "train.bin").stat().st_size == meta["train_tokens"] * itemsize
            and (folder / "val.bin").stat().st_size == meta["val_tokens"] * itemsize
        )
    except (UserError, OSError, ValueError, KeyError, TypeError):  # damaged: prepared again (a cache heals)
        return False


def bundled_dataset(tokenizer: str = DEFAULT_TOKENIZER) -> Path:
    """The bundled Tiny Shakespeare prepared with `tokenizer`, in the cache folder (prepared the first time).

    Named by the tokenizer and (bpe) its vocabulary size: a cache of another kind or size is never reused.
    """
    size = default_bpe_vocab_size(_bundled_train_chars()) if tokenizer == "bpe" else None
    out = cache_dir() / f"{BUNDLED_NAME}-{tokenizer}{size or ''}"
    cfg = PrepareConfig(tokenizer=tokenizer, vocab_size=size, out_dir=str(out))
    cfg.validate()
    if not is_prepared(out, tokenizer):
        try:  # another nanogpt preparing it (two runs started at once): wait for it, then take its work
            held = hold(out, f"{out} is in use", wait=True)
        except OSError as e:
            raise UserError(f"cannot write to the cache folder {out}: {e.strerror or e}") from None
        try:
            if not is_prepared(out, tokenizer):
                print(f"preparing the bundled Tiny Shakespeare ({tokenizer}) into {out} (once; reused next time)",
                      file=sys.stderr)
                _prepare(cfg, out, report=sys.stderr, held=held)
                return out
        finally:
            held.release()
    print(f"using the bundled Tiny Shakespeare ({tokenizer}) prepared in {out}", file=sys.stderr)
    return out


def _bundled_train_chars() -> int:
    """Characters in the training part of the bundled corpus (what the BPE default size is chosen from)."""
    packed = (resources.files("nanogpt") / "data" / f"{BUNDLED_NAME}.txt.gz").read_bytes()
    return int(len(gzip.decompress(packed).decode("utf-8")) * (1 - PrepareConfig.val_fraction))
