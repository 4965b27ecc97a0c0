"""What kind of input a file is and how its bytes are read: plain, gzip or Zstandard; text, JSON Lines or Parquet;
and which files of a folder tree are text (hidden and binary files are skipped, and counted).

The kind comes from the name: `.jsonl`/`.ndjson` (optionally `.gz`/`.zst`) is JSON Lines, `.parquet` is Parquet,
anything else is text (`.txt`, `.md`, source code, optionally `.gz`/`.zst`).
"""

from __future__ import annotations

import codecs
import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSED = (".gz", ".zst")
SNIFF_BYTES = 8192  # how much of a file in a folder tree decides whether it is text (git looks at as much)


def compression(path: Path) -> str:
    """'.gz', '.zst' or '' from the file's name."""
    name = path.name.lower()
    return next((c for c in COMPRESSED if name.endswith(c)), "")


def kind_of(path: Path) -> str:
    """'jsonl', 'parquet' or 'text', from the file's name."""
    name = path.name.lower().removesuffix(compression(path))
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def source_name(path: Path) -> str:
    """A file's name without its compression and kind suffixes: the default name of its output folder."""
    name = path.name
    name = name[: len(name) - len(compression(path))]
    for suffix in (".txt", ".jsonl", ".ndjson", ".parquet"):
        if name.lower().endswith(suffix):
            return name[: len(name) - len(suffix)] or name
    return Path(name).stem or name


def decompression_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged or cut-short .gz or .zst raises, whichever pass meets it first."""
    import zstandard

    return (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError)


def not_whole(path: Path, error: BaseException) -> UserError:
    what = "Zstandard" if compression(path) == ".zst" else "gzip"
    return UserError(f"{path} is not a whole {what} file ({error}); compress it again")


def open_raw(path: Path, buffer: int = 1 << 20) -> BinaryIO:
    try:
        # a megabyte at a time: with the default buffer (a few KB) a JSON Lines file iterated at ~700 MB/s, a pass
        # over 1 GB took a second and a half of the thread that feeds the encoders
        return open(path, "rb", buffering=buffer)  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def decompressed(path: Path, raw: BinaryIO) -> BinaryIO:
    """The bytes of the file `raw` reads, decompressed when its name says .gz or .zst (checked by its magic)."""
    kind = compression(path)
    if not kind:
        return raw
    magic = raw.read(4)
    raw.seek(0)
    if kind == ".gz":
        if magic[:2] != GZIP_MAGIC:
            raise UserError(f"{path} is named .gz but is not gzip-compressed: rename it (without .gz) or compress it")
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if magic != ZSTD_MAGIC:
        raise UserError(f"{path} is named .zst but is not Zstandard-compressed: rename it or compress it")
    return io.BufferedReader(_Zstd(raw), 1 << 16)  # type: ignore[return-value]


class _Zstd(io.RawIOBase):
    """The decompressed bytes of a .zst, every frame of it (`zstd` and `cat a.zst b.zst` write several), and a
    ZstdError for a file that ends inside a frame (zstandard's stream_reader takes a cut-short file as whole)."""

    def __init__(self, raw: BinaryIO):
        import zstandard

        self.zstd = zstandard
        self.raw = raw
        self.obj = zstandard.ZstdDecompressor().decompressobj()
        self.in_frame = False  # bytes were fed to the current frame's decompressor and it has not ended
        self.out = b""
        self.pos = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def _feed(self, data: bytes) -> None:
        while data:
            self.out += self.obj.decompress(data)
            self.in_frame = not self.obj.eof
            if not self.obj.eof:
                return
            data = self.obj.unused_data  # the next frame begins here
            self.obj = self.zstd.ZstdDecompressor().decompressobj()

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self.out:
            data = self.raw.read(1 << 17)
            if not data:
                if self.in_frame:
                    raise self.zstd.ZstdError("the file ends inside a frame")
                return 0
            self._feed(data)
        n = min(len(buffer), len(self.out))
        buffer[:n] = self.out[:n]
        self.out = self.out[n:]
        self.pos += n
        return n


def text_size(path: Path) -> int:
    """Bytes of text in a file, as far as can be known without reading it: its size; for .gz the size its trailer
    records (mod 4 GiB); for .zst the size its frame header records, else its own size (the first pass then
    counts the bytes, and the later passes' progress uses that count)."""
    size = path.stat().st_size
    kind = compression(path)
    if not kind or size < 4:
        return size
    with open(path, "rb") as f:
        magic = f.read(18)
        if kind == ".zst":
            if magic[:4] != ZSTD_MAGIC:
                raise UserError(f"{path} is named .zst but is not Zstandard-compressed: rename it or compress it")
            import zstandard

            try:
                known = zstandard.frame_content_size(magic)
            except zstandard.ZstdError:
                known = -1
            return known if known > 0 else size
        if magic[:2] != GZIP_MAGIC:
            raise UserError(f"{path} is named .gz but is not gzip-compressed: rename it (without .gz) or compress it")
        f.seek(-4, io.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


# ----------------------------------------------------------------------------------------------------------
# folder trees


@dataclass
class Tree:
    """The files of a folder tree, in sorted order, and what was left out."""

    files: list[Path] = field(default_factory=list)
    hidden: int = 0  # files and folders whose name starts with a dot (.git/ counts once)
    binary: int = 0  # files whose first bytes are not UTF-8 text
    repeated: int = 0  # links to a folder already walked (a second link to it, or a loop): read once


def walk(folder: Path) -> Tree:
    """Every file under `folder` (sub-folders too, and folders linked there: os.walk left them out without a word),
    in a stable sorted order; hidden entries and binary files left out and counted, a folder reached twice through
    links read once. UserError for a folder that cannot be read (Path.rglob would skip it silently, and a corpus
    would quietly lose its text)."""
    tree = Tree()
    walked = {_identity(folder)}

    def fail(e: OSError) -> None:
        raise UserError(f"cannot read the folder {e.filename}: {e.strerror or e}")

    for root, dirs, names in os.walk(folder, onerror=fail, followlinks=True):
        tree.hidden += sum(d.startswith(".") for d in dirs) + sum(n.startswith(".") for n in names)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # os.walk descends in this order
        for d in list(dirs):
            if (key := _identity(Path(root) / d)) in walked:
                dirs.remove(d)
                tree.repeated += 1
            walked.add(key)
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(root) / name
            if not path.is_file():  # a text the corpus counts on, which it would lose without a word
                what = (f"a symbolic link to {os.readlink(path)}, which does not exist" if path.is_symlink()
                        and not path.exists() else "a FIFO (named pipe)" if path.is_fifo() else "not a regular file")
                raise UserError(f"{path} is {what}, not a text file: remove it, or put the text there")
            if kind_of(path) == "text" and is_binary(path):
                tree.binary += 1
            else:
                tree.files.append(path)
    return tree


def _identity(folder: Path) -> tuple[int, int]:
    """What a folder is, whatever path (or link) leads to it: its device and inode."""
    try:
        st = folder.stat()
    except OSError as e:
        raise UserError(f"cannot read the folder {folder}: {e.strerror or e}") from None
    return st.st_dev, st.st_ino


def is_binary(path: Path) -> bool:
    """Whether a file's first bytes (decompressed) hold a NUL or are not UTF-8: an image, an archive, a build."""
    try:
        with open_raw(path) as raw:
            head = decompressed(path, raw).read(SNIFF_BYTES)
    except (UserError, OSError, *decompression_errors()):
        return True
    if b"\x00" in head:
        return True
    try:
        # a character cut at the end of the bytes looked at is fine, not at the end of the file
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError:
        return True
    return False
