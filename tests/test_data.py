"""data.py: batches as pure functions of (seed, index), per-rank streams, and checks on the dataset files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt import data
from nanogpt.errors import UserError


def sampler(tokens: np.ndarray, seed: int = 1337, stream: int = data.TRAIN_STREAM) -> data.BatchSampler:
    return data.BatchSampler(
        tokens, block_size=16, batch_size=4, seed=seed, stream=stream, device=torch.device("cpu")
    )


def test_batch_is_a_pure_function_of_seed_and_index(shakespeare_dir: Path) -> None:
    tokens = data.load(shakespeare_dir)
    a, b = sampler(tokens.train), sampler(tokens.train)
    x5, y5 = a.batch(5)
    a.batch(6)  # drawing other batches in between changes nothing
    torch.testing.assert_close(b.batch(5)[0], x5, rtol=0, atol=0)
    assert not torch.equal(a.batch(4)[0], x5)
    assert not torch.equal(sampler(tokens.train, seed=7).batch(5)[0], x5)
    assert not torch.equal(sampler(tokens.train, stream=data.TRAIN_STREAM + 1).batch(5)[0], x5)
    # targets are the inputs shifted by one token, taken from the real data
    assert torch.equal(x5[:, 1:], y5[:, :-1])
    assert x5.shape == (4, 16) and x5.dtype == torch.int64


def test_windows_come_from_the_data(shakespeare_dir: Path) -> None:
    tokens = data.load(shakespeare_dir)
    offsets = data.batch_offsets(1337, 0, 3, 4, len(tokens.train), 16)
    x, _ = sampler(tokens.train).batch(3)
    for row, start in zip(x, offsets, strict=True):
        assert row.tolist() == tokens.train[start : start + 16].astype(int).tolist()


def spread(tokens: np.ndarray, batch_size: int, windows: int) -> data.SpreadSampler:
    return data.SpreadSampler(tokens, block_size=16, batch_size=batch_size, windows=windows,
                              device=torch.device("cpu"))


def test_validation_windows_are_spread_over_the_whole_split(shakespeare_dir: Path) -> None:
    val = data.load(shakespeare_dir).val
    s = spread(val, batch_size=4, windows=12)
    starts = np.concatenate([s.offsets(i) for i in range(3)])
    assert starts[0] == 0 and starts[-1] == len(val) - 17  # the last window's targets end on the last token
    gaps = np.diff(starts)
    assert gaps.min() >= len(val) // 12 - 1 and gaps.max() <= len(val) // 11 + 1
    x, y = s.batch(2)
    for row, start in zip(x, starts[8:], strict=True):
        assert row.tolist() == val[start : start + 16].astype(int).tolist()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert np.array_equal(s.offsets(3), starts[:4])  # past the end (a sharded run's last round) it wraps


def test_validation_windows_do_not_depend_on_the_batch_size(shakespeare_dir: Path) -> None:
    # the same windows in batches of 4 or of 6: runs that differ in batch size are scored on the same text
    val = data.load(shakespeare_dir).val
    by4, by6 = spread(val, 4, 24), spread(val, 6, 24)
    assert np.array_equal(np.concatenate([by4.offsets(i) for i in range(6)]),
                          np.concatenate([by6.offsets(i) for i in range(4)]))


def test_ranks_split_the_single_process_stream() -> None:
    # 2 ranks x 2 micro-steps draw exactly the micro-batches one process with 4 micro-steps draws
    single = [data.global_batch_index(8, m, 0, 1) for m in range(4)]
    split = sorted(data.global_batch_index(8, m, r, 2) for m in range(2) for r in range(2))
    assert single == split == [8, 9, 10, 11]


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("input.txt"))
    return dst


def test_missing_files_are_user_errors(shakespeare_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data folder not found"):
        data.load(tmp_path / "nope")
    d = copy_dataset(shakespeare_dir, tmp_path / "d")
    (d / "val.bin").unlink()
    with pytest.raises(UserError, match="dataset file not found"):
        data.load(d)
    (d / "vocab.json").unlink()
    with pytest.raises(UserError, match="vocabulary metadata not found"):
        data.load(d)


def test_truncated_bin_is_a_user_error(shakespeare_dir: Path, tmp_path: Path) -> None:
    d = copy_dataset(shakespeare_dir, tmp_path / "d")
    with open(d / "train.bin", "ab") as f:
        f.write(b"\x01")  # an odd byte count cannot be uint16 tokens
    with pytest.raises(UserError, match="truncated"):
        data.load(d)


def test_vocab_not_matching_bins_is_a_user_error(shakespeare_dir: Path, tmp_path: Path) -> None:
    d = copy_dataset(shakespeare_dir, tmp_path / "d")
    meta = json.loads((d / "vocab.json").read_text())
    small = {
        "tokenizer": "char",
        "vocab_size": 10,
        "itos": meta["itos"][:10],
        "stoi": {c: i for i, c in enumerate(meta["itos"][:10])},
    }
    (d / "vocab.json").write_text(json.dumps(small))
    with pytest.raises(UserError, match="does not match"):
        data.load(d)


def test_corrupt_vocab_is_a_user_error(shakespeare_dir: Path, tmp_path: Path) -> None:
    d = copy_dataset(shakespeare_dir, tmp_path / "d")
    (d / "vocab.json").write_text('{"tokenizer": "char", "vocab_si')
    with pytest.raises(UserError, match="vocab.json is corrupt or truncated"):
        data.load(d)
    (d / "vocab.json").write_text('{"tokenizer": "char", "vocab_size": 65, "itos": ["a", "b"]}')
    with pytest.raises(UserError, match="inconsistent"):
        data.load(d)


def test_block_size_must_fit_the_validation_data(shakespeare_dir: Path) -> None:
    tokens = data.load(shakespeare_dir)
    data.check_block_size(tokens, len(tokens.val) - 1)
    with pytest.raises(UserError, match="larger than the validation data"):
        data.check_block_size(tokens, len(tokens.val))
