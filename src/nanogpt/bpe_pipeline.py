"""A learned BPE's pipeline beside `tokenizers`' own: where long runs are cut (the same pattern for both regex
engines), and the tiktoken Encoding that gives exactly the same ids, when one does (BpeTokenizer.fast)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# Characters of one run without a space (or of spaces) that a learned BPE takes as one pre-token at most; a longer
# run is cut into pieces of this length from its start, before GPT-2's regex, when learning and when encoding
# alike. The work on one pre-token grows faster than its length (a line of 450 K random letters took 45 s to learn,
# 900 K 400 s: BENCHMARKS.md, "Learning a BPE on hostile text"), and no token of a useful vocabulary is that long:
# GPT-2's longest is 128 bytes. The cut is a `tokenizers` Split in the tokenizer's own pipeline, so the
# tokenizer.json that `export` writes cuts alike (a cut made in Python before was lost there: issue 33).
MAX_RUN = 256
# whitespace spelled out (the Unicode White_Space characters), so that `tokenizers`' regex engine and Python's
# cut runs at the same places whatever either takes \s to mean
WHITESPACE = "".join(map(chr, [*range(9, 14), 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F,
                                0x205F, 0x3000]))
_WS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)
_RUN_PIECE = f"[^{_WS}]{{{MAX_RUN}}}(?=[^{_WS}])|[{_WS}]{{{MAX_RUN}}}(?=[{_WS}])"  # MAX_RUN characters of a run
LONG_RUN = re.compile(f"[^{_WS}]{{{MAX_RUN + 1}}}|[{_WS}]{{{MAX_RUN + 1}}}")  # that goes on: in a longer run
_RUN_PIECES = re.compile(_RUN_PIECE)
ENCODE_GROUP = 1 << 18  # bytes a call of the `tokenizers` batch encoder gets at most (BpeTokenizer.encode_many)
_WS_CODES = np.zeros(0x3002, dtype=np.uint8)  # 1 for whitespace, by code point; the last entry for all above U+3000
_WS_CODES[[ord(c) for c in WHITESPACE]] = 1
_WS_BYTES = _WS_CODES[:256].tobytes()  # the same for ASCII text's bytes (bytes.translate)
_BLOCK = (MAX_RUN + 1) // 2  # a run longer than MAX_RUN holds a whole block of this many aligned characters


def has_long_run(text: str) -> bool:
    """Whether `text` holds a run that the learned BPE cuts: LONG_RUN.search, asked only where a block of _BLOCK
    aligned characters is all whitespace or holds none (never, in prose). The regex alone tries a word's length at
    each character of it, as slow as encoding, and prepare asks this of every job."""
    if len(text) <= MAX_RUN:
        return False
    if text.isascii():
        space = np.frombuffer(text.encode("ascii").translate(_WS_BYTES), dtype=np.uint8)
    else:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        space = _WS_CODES[np.minimum(codes, len(_WS_CODES) - 1)]
    whole = len(space) // _BLOCK * _BLOCK
    counts = space[:whole].reshape(-1, _BLOCK).sum(axis=1, dtype=np.int32)
    if not ((counts == 0) | (counts == _BLOCK)).any():
        return False
    return LONG_RUN.search(text) is not None


def run_pieces(text: str) -> list[str]:
    """`text` cut as the learned BPE's Split cuts it: each MAX_RUN characters of a run that goes on, isolated."""
    pieces, pos = [], 0
    for m in _RUN_PIECES.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos : m.start()])
        pieces.append(m.group())
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def twin_ids(enc: Any, text: str) -> np.ndarray:
    """The ids (uint32) of `text` by a learned BPE's tiktoken twin: its long runs cut first as the Split of
    `tokenizers` cuts them (run_pieces)."""
    if not has_long_run(text):
        return enc.encode_to_numpy(text, disallowed_special=()).astype(np.uint32, copy=False)
    ids = [enc.encode_to_numpy(p, disallowed_special=()) for p in run_pieces(text)]
    return np.concatenate(ids).astype(np.uint32, copy=False)


def _merged_below(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """`token`'s bytes merged by tiktoken's rule (the adjacent pair whose join has the lowest id, leftmost first)
    among ids below `limit`, until none applies."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        found = [(r, i) for i in range(len(parts) - 1) if (r := ranks.get(parts[i] + parts[i + 1], limit)) < limit]
        if not found:
            break
        _, i = min(found)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def pre_tokenizer():
    """A learned BPE's pre-tokenizer: runs cut at MAX_RUN characters (isolated pieces), then GPT-2's regex."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_RUN_PIECE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])



def tiktoken_twin(pieces: list[bytes], byte_of: dict[str, int], merges: list[Any], eot: int | None) -> Any:
    """A tiktoken Encoding that gives exactly the ids of the BPE whose tokens are `pieces` (bytes, by id) and whose
    merges are `merges` (pairs of token strings, or tokenizer.json's "a b" strings, in order), or None.

    tiktoken merges the adjacent pair whose join has the lowest id; `tokenizers` applies the merge earliest in
    the list. They agree when every token's id follows its merge's place and each token, spelled out in bytes
    and merged by tiktoken's rule among lower ids only, comes back as exactly its own merge's two halves (as
    transformers' tiktoken-to-tokenizers conversion derives merges). A BPE learned by prepare passes; a
    hand-edited vocabulary may not, and keeps the slower exact path."""
    import tiktoken

    from .tokenizers import END_OF_TEXT, GPT2_PATTERN

    ranks = {piece: i for i, piece in enumerate(pieces) if i != eot}
    if len(ranks) != len(pieces) - (eot is not None):
        return None  # two tokens of the same bytes
    made, last = 0, -1
    for merge in merges:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        halves = [bytes(byte_of[c] for c in a), bytes(byte_of[c] for c in b)]
        rank = ranks[halves[0] + halves[1]]
        if rank <= last or _merged_below(halves[0] + halves[1], ranks, rank) != halves:
            return None
        last, made = rank, made + 1
    if made + 256 != len(ranks):
        return None  # a token no merge makes: tiktoken could reach it, `tokenizers` never does
    # <|endoftext|> as tiktoken's special token: prepare's encoder joins a job's documents with it (encode.py)
    special = {} if eot is None else {END_OF_TEXT: eot}
    return tiktoken.Encoding(name="nanogpt-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
