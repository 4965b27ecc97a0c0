"""`nanogpt prepare`: turn a text file or a mixology folder into train.bin, val.bin and vocab.json.

    command.py   the command's steps in order, its output folder (locked), vocab.json; the bundled corpus's cache
    report.py    the summary printed at the end: the sources' table, the files written, the tokenizer
    sources.py   what SOURCE holds (a file or NN_name/ sub-folders), reading text, Gutenberg stripping
    bpe.py       learning the byte-level BPE of `--tokenizer bpe` from the training parts, by share, capped
    encode.py    text -> token ids (char table, or a BPE on threads) -> part files; the mixology shares
    progress.py  a progress bar on a terminal, plain lines elsewhere

Two streaming passes over the text, so memory stays bounded whatever the corpus size; every file is
written under a temporary name and renamed into place at the end (atomic.py).
"""

from .command import BUNDLED_NAME, TOKENIZERS, bundled_dataset, cache_dir, is_prepared, output_folder, prepare
from .encode import safe_cut
from .sources import CHUNK_CHARS

__all__ = [
    "BUNDLED_NAME",
    "CHUNK_CHARS",
    "TOKENIZERS",
    "bundled_dataset",
    "cache_dir",
    "is_prepared",
    "output_folder",
    "prepare",
    "safe_cut",
]
