"""What prepare prints at its end: the sources' table of a mixology folder, the files written, the tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from ..config import PrepareConfig
from .bpe import summary_line
from .progress import human_bytes

DEFAULT_TOKENIZER = PrepareConfig.tokenizer  # the dataclass default: what `prepare` and the bundled run use


def summary(stream: TextIO, meta: dict[str, Any], out: Path, mixology: bool) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # not a terminal (a log, a pipe): no 80-column limit, so that long source names are not cut
    console = Console(file=stream, soft_wrap=True, highlight=False, width=None if stream.isatty() else 160)
    if mixology:
        table = Table(title="sources", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("source", "target", "train tokens", "share", "val tokens", "share", "text used"):
            table.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
        for s in meta["sources"]:
            table.add_row(
                s["path"],
                f"{s['percent']}%",
                f"{s['train_tokens']:,}",
                f"{100 * s['train_share']:.1f}%",
                f"{s['val_tokens']:,}",
                f"{100 * s['val_share']:.1f}%",
                f"{100 * s['used']:.0f}%",
            )
        console.print(table)
    for s in meta["sources"]:
        console.print(held(s), markup=False)
    if meta["tokenizer"] == "bpe" and "tokenizer_from" not in meta:
        console.print(summary_line(meta), markup=False)
    console.print(
        f"wrote {out / 'train.bin'} ({meta['train_tokens']:,} tokens), {out / 'val.bin'} ({meta['val_tokens']:,} "
        f"tokens) and {out / 'vocab.json'} ({meta['tokenizer']}, vocab size {meta['vocab_size']:,}, {meta['dtype']})",
        markup=False,
    )
    reused = meta.get("tokenizer_from")
    console.print(f"tokenizer: {meta['tokenizer']}, {reused}'s" if reused else tokenizer_note(meta["tokenizer"]),
                  markup=False)


def tokenizer_note(tokenizer: str) -> str:
    """One line naming the tokenizer used and, for the default, how to get nanoGPT's character-level files."""
    if tokenizer == DEFAULT_TOKENIZER:
        return f"tokenizer: {tokenizer} (the default; --tokenizer char gives nanoGPT's one token per character)"
    return f"tokenizer: {tokenizer} (the default is {DEFAULT_TOKENIZER})"


def held(s: dict[str, Any]) -> str:
    """What one source held: its documents, bytes of text, and what was left out (`s`: a vocab.json source)."""
    files = f" in {s['files']:,} files" if s["files"] > 1 else ""
    line = f"{s['path']}: {s['documents']:,} documents{files}, {human_bytes(s['bytes'])} of text"
    left = [
        f"{n:,} {what}"
        for n, what in (
            (s["empty_documents"], "empty documents"),
            (s["skipped_records"], "bad records"),
            (s["skipped_files"]["hidden"], "hidden files or folders"),
            (s["skipped_files"]["binary"], "binary files"),
            (s["skipped_files"].get("repeated_folders", 0), "folders linked again (read once)"),
        )
        if n
    ]
    return line + (f"; left out: {', '.join(left)}" if left else "")
