"""prepare's two passes over the text: the first measures (documents, characters, Gutenberg windows, the char
vocabulary), the second encodes each source's training and validation documents into part files."""

from __future__ import annotations

import sys
from pathlib import Path

from ..store.atomic import listed_temp_file
from ..errors import UserError
from .documents import DOC_START, Reading, scan, split_stream
from .encode import Encoder, Part
from .progress import Progress
from .sources import CharSet, Source

SPLITS = ("train", "val")


def read_pass(sources: list[Source], path: Path, reading: Reading, tokenizer: str, progress: Progress,
              val_fraction: float = 0.1, asked_strip: bool = False) -> list[str] | None:
    """Pass 1: each file's documents, length and Gutenberg window; returns the char vocabulary (None for a BPE).
    `asked_strip`: --strip-gutenberg typed (a file without markers is then named)."""
    docs = [d for s in sources for d in s.docs]
    charset = CharSet() if tokenizer == "char" else None
    progress.start("reading", sum(d.size for d in docs))
    for d in docs:
        scan(d, charset, reading, progress)
    progress.finish()
    for s in sources:
        s.chars = sum(d.chars for d in s.docs)
        for d in s.docs:
            if d.bad:
                print(f"note: left out {d.bad:,} bad record(s) of {d.path}; the first: {d.first_bad}", file=sys.stderr)
        if s.chars == 0:
            what = f"{path / s.label}" if path.is_dir() and s.label != path.name + "/" else str(path)
            raise UserError(f"{what} has no text" + (" left without its Project Gutenberg header and footer"
                                                     if any(d.stripped for d in s.docs) else ""))
    gutenberg_notes(sources, val_fraction, asked_strip)
    crlf = [d for d in docs if d.cr_line_ends]
    if crlf:  # the tokens hold LF: text decoded from them is not byte for byte the file (docs/data.md)
        which = str(crlf[0].path) if len(crlf) == 1 else f"{len(crlf)} files"
        print(f"note: read {sum(d.cr_line_ends for d in crlf):,} CRLF (or CR) line ends of {which} as LF, as "
              "Python and nanoGPT read text: decoded text has LF line ends", file=sys.stderr)
    if charset is not None and any(s.count > 1 for s in sources):
        charset.add("\n")  # char separates documents with a line break (encode.py): it needs one in any case
    return charset.chars() if charset is not None else None


def gutenberg_notes(sources: list[Source], val_fraction: float, asked_strip: bool) -> None:
    """Say what was done with Project Gutenberg's licence text, and warn when the validation part, the end of each
    source, is mostly licence (kept with --keep-gutenberg): validation would measure the licence, not the book."""
    docs = [d for s in sources for d in s.docs if d.kind == "text"]
    stripped = [d for d in docs if d.stripped]
    if stripped:
        which = str(stripped[0].path) if len(stripped) == 1 else f"{len(stripped)} files"
        print(f"note: removed Project Gutenberg's licence header and footer from {which} (--keep-gutenberg keeps "
              "them)", file=sys.stderr)
    if asked_strip:  # asked for by name: say where there was nothing to remove
        for d in (d for d in docs if not d.stripped):
            print(f"note: no Project Gutenberg header or footer found in {d.path}; kept it whole", file=sys.stderr)
    for s in sources:
        last = s.docs[-1]  # the validation part is the end of the source's last files
        val_chars = max(1, int(s.chars * val_fraction))
        if last.footer_at is None or last.footer_at >= last.end:
            continue
        share = (last.end - max(last.footer_at, last.end - val_chars)) / val_chars
        if share > 0.1:
            print(f"warning: {share:.0%} of the validation part of {last.path} is Project Gutenberg's licence (the "
                  "text after its END line): its validation loss would measure the licence; prepare it without "
                  "--keep-gutenberg", file=sys.stderr)


def encode_pass(sources: list[Source], parts: list[dict[str, Part]], out: Path, val_fraction: float,
                reading: Reading, encoder: Encoder, progress: Progress, temps: list[Path]) -> None:
    """Pass 2: encode each source's train and val documents into part files (appended to `parts` as they open)."""
    total = sum(d.size for s in sources for d in s.docs)
    encoder.begin(total)
    progress.start("tokenizing", total)
    for i, s in enumerate(sources):
        pair: dict[str, Part] = {}
        parts.append(pair)
        for name in SPLITS:
            fh = listed_temp_file(out, f"{name}-{i}", temps)
            # <|endoftext|> also separates one source from the next in the joined file
            pair[name] = Part(temps[-1], fh, started=(i > 0 and encoder.eot is not None))
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
