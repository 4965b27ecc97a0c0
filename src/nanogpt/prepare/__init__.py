"""`nanogpt prepare`: turn a corpus (text files, JSON Lines, Parquet, a folder tree, a mixology folder) into
train.bin, val.bin and vocab.json.

    command.py   the command's steps in order, its output folder (locked), vocab.json; the bundled corpus's cache
    passes.py    pass 1 (measure: documents, characters, char vocabulary) and pass 2 (encode into part files)
    report.py    the summary printed at the end: the sources' table, what each held, the files written
    sources.py   what SOURCE holds (a file, a folder tree or NN_name/ sub-folders), reading text, Gutenberg
    inputs.py    a file's kind and compression (.gz, .zst); which files of a folder tree are text
    records.py   JSON Lines and Parquet records: --text-field, bad records
    documents.py a source as documents; the whole-document validation split
    bpe.py       learning the byte-level BPE of `--tokenizer bpe` from a sample spread over the training parts
    encode.py    text -> token ids (char table, or a BPE on threads, in order) -> part files; the mixology shares
    progress.py  a progress bar on a terminal, plain lines elsewhere

Streaming passes over the text, so memory stays bounded whatever the corpus size; every file is written under a
temporary name and renamed into place at the end (atomic.py).
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
