"""prepare's two passes over the text: the first measures (documents, characters, Gutenberg windows, the char
vocabulary), the second encodes each source's training and validation documents into part files."""

from __future__ import annotations

import sys
from pathlib import Path

from ..store.atomic import temp_file
from ..errors import UserError
from .documents import DOC_START, Reading, scan, split_stream
from .encode import Encoder, Part
from .progress import Progress
from .sources import CharSet, Source

SPLITS = ("train", "val")


def read_pass(sources: list[Source], path: Path, reading: Reading, tokenizer: str,
              progress: Progress) -> list[str] | None:
    """Pass 1: each file's documents, length and Gutenberg window; returns the char vocabulary (None for a BPE)."""
    docs = [d for s in sources for d in s.docs]
    charset = CharSet() if tokenizer == "char" else None
    progress.start("reading", sum(d.size for d in docs))
    for d in docs:
        scan(d, charset, reading, progress)
    progress.finish()
    for s in sources:
        s.chars = sum(d.chars for d in s.docs)
        for d in s.docs:
            _notes(d, reading.strip_gutenberg)
        if s.chars == 0:
            what = f"{path / s.label}" if path.is_dir() and s.label != path.name + "/" else str(path)
            raise UserError(f"{what} has no text" + (" left after --strip-gutenberg" if reading.strip_gutenberg
                                                     else ""))
    if charset is not None and any(s.count > 1 for s in sources):
        charset.add("\n")  # char separates documents with a line break (encode.py): it needs one in any case
    return charset.chars() if charset is not None else None


def _notes(d, strip: bool) -> None:
    if strip and d.kind == "text" and not d.stripped:
        print(f"note: no Project Gutenberg header or footer found in {d.path}; kept it whole", file=sys.stderr)
    if d.gutenberg:  # the licence would be trained on, silently
        print(
            f"note: {d.path} has a Project Gutenberg header ('*** START OF ... PROJECT GUTENBERG ...'); "
            "its licence header and footer are kept as text: add --strip-gutenberg to drop them",
            file=sys.stderr,
        )
    if d.bad:
        print(f"note: left out {d.bad:,} bad record(s) of {d.path}; the first: {d.first_bad}", file=sys.stderr)


def encode_pass(sources: list[Source], parts: list[dict[str, Part]], out: Path, val_fraction: float,
                reading: Reading, encoder: Encoder, progress: Progress, temps: list[Path]) -> None:
    """Pass 2: encode each source's train and val documents into part files (appended to `parts` as they open)."""
    progress.start("tokenizing", sum(d.size for s in sources for d in s.docs))
    for i, s in enumerate(sources):
        pair: dict[str, Part] = {}
        parts.append(pair)
        for name in SPLITS:
            fh, tmp = temp_file(out, f"{name}-{i}")
            temps.append(tmp)
            # <|endoftext|> also separates one source from the next in the joined file
            pair[name] = Part(tmp, fh, started=(i > 0 and encoder.eot is not None))
        for name, text in split_stream(s, val_fraction, reading, progress):
            if text is DOC_START:
                encoder.start_document(pair[name])
            else:
                encoder.write(pair[name], text)
        for p in pair.values():
            encoder.finish(p)
    encoder.close()
    progress.finish()
    for pair in parts:
        for p in pair.values():
            p.fh.close()  # flushed: the join reads them back
