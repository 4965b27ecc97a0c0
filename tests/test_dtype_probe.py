"""dtype_probe.py: `--dtype auto` on CPU measured once, cached, reused; a named dtype is taken as given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from nanogpt.runtime import dtype_probe
from nanogpt.config import ModelConfig

TINY = ModelConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32)


def shape_of(batch: int) -> dtype_probe.StepShape:
    return dtype_probe.StepShape.of(TINY, batch)


def test_measuring_times_both_dtypes_and_leaves_the_random_stream_alone() -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    f32, bf16 = dtype_probe.measure(shape_of(2))
    assert f32 > 0 and bf16 > 0
    assert torch.equal(torch.rand(3), expected)  # the run's own draws are the ones it would have made


def test_a_named_dtype_is_used_as_given_and_nothing_is_cached(tmp_path: Path) -> None:
    shapes = shape_of(2)
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        result = dtype_probe.resolve_cpu_dtype(name, shapes, tmp_path)
        assert (result.dtype, result.source, result.float32_ms) == (dtype, "named", None)
    assert not (tmp_path / dtype_probe.CACHE_FILE).exists()
    assert dtype_probe.describe(result) == "dtype bfloat16 (as given)"


def test_auto_measures_once_writes_the_cache_and_reuses_it(tmp_path: Path) -> None:
    shapes = shape_of(2)
    first = dtype_probe.resolve_cpu_dtype("auto", shapes, tmp_path)
    assert first.source == "measured"
    assert first.dtype in (torch.float32, torch.bfloat16)
    assert first.float32_ms > 0 and first.bfloat16_ms > 0
    saved = json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())
    entry = saved[dtype_probe.cache_key(shapes)]
    assert entry["dtype"] == str(first.dtype).removeprefix("torch.")
    assert dtype_probe.cpu_model() in dtype_probe.cache_key(shapes)
    assert torch.__version__ in dtype_probe.cache_key(shapes)

    # the verdict stays, however busy the machine was or close the timings (issue 34: no flipping)
    second = dtype_probe.resolve_cpu_dtype("auto", shapes, tmp_path)
    assert second.source == "cached"
    assert (second.dtype, second.float32_ms, second.bfloat16_ms) == (first.dtype, first.float32_ms, first.bfloat16_ms)
    assert "cached in" in dtype_probe.describe(second)

    # other shapes are another entry, measured on their own
    other = shape_of(3)
    assert dtype_probe.resolve_cpu_dtype("auto", other, tmp_path).source == "measured"
    assert len(json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())) == 2


def test_a_cached_verdict_is_taken_without_measuring(tmp_path: Path) -> None:
    """An entry the probe could not have produced here (bfloat16 on made-up numbers) comes back unchanged."""
    shapes = shape_of(2)
    key = dtype_probe.cache_key(shapes)
    entry = {"dtype": "bfloat16", "float32_ms": 123.0, "bfloat16_ms": 45.0, "load": 0.2, "cores": 2}
    (tmp_path / dtype_probe.CACHE_FILE).write_text(json.dumps({key: entry}))
    result = dtype_probe.resolve_cpu_dtype("auto", shapes, tmp_path)
    assert (result.dtype, result.source, result.float32_ms, result.bfloat16_ms) == (
        torch.bfloat16, "cached", 123.0, 45.0
    )
    # a named dtype still wins over the cache
    assert dtype_probe.resolve_cpu_dtype("float32", shapes, tmp_path).dtype == torch.float32


def test_a_damaged_cache_is_measured_again_and_rewritten(tmp_path: Path) -> None:
    shapes = shape_of(2)
    (tmp_path / dtype_probe.CACHE_FILE).write_text("{not json")
    result = dtype_probe.resolve_cpu_dtype("auto", shapes, tmp_path)
    assert result.source == "measured"
    assert dtype_probe.cache_key(shapes) in json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


def test_the_cache_lives_under_the_users_cache_root(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.delenv("NANOGPT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    result = dtype_probe.resolve_cpu_dtype("auto", shape_of(2))
    assert result.cache_path == tmp_path / "nanogpt" / dtype_probe.CACHE_FILE
    assert result.cache_path.is_file()


def test_muon_shapes_are_the_matrices_muon_takes() -> None:
    from nanogpt.model import GPT
    from nanogpt.optim import muon_parameters

    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=3, n_head=2, n_embd=32)
    expected: dict[tuple[int, int], int] = {}
    for p in muon_parameters(GPT(cfg)):
        expected[tuple(p.shape)] = expected.get(tuple(p.shape), 0) + 1
    assert {(r, c): n for n, r, c in dtype_probe.muon_shapes(cfg)} == expected


def test_newton_schulz_dtype_is_measured_once_and_cached(tmp_path: Path) -> None:
    first = dtype_probe.resolve_ns_dtype(TINY, tmp_path)
    assert first.source == "measured" and first.float32_ms > 0 and first.bfloat16_ms > 0
    faster = "bfloat16" if first.bfloat16_ms < dtype_probe.MARGIN * first.float32_ms else "float32"
    assert first.dtype == dtype_probe.NAMED["float32" if first.recheck else faster]
    second = dtype_probe.resolve_ns_dtype(TINY, tmp_path)
    assert second.source == "cached" and second.dtype == first.dtype


def test_a_named_dtype_keeps_newton_schulz_at_the_optimizers_default(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from nanogpt.runtime import machine
    from nanogpt.config import TrainConfig

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path))
    named = machine.resolve_hardware(TINY, TrainConfig(dtype="float32", device="cpu", optimizer="muon", batch_size=2))
    assert named.ns_dtype is None and not (tmp_path / dtype_probe.CACHE_FILE).exists()
    auto = machine.resolve_hardware(TINY, TrainConfig(dtype="auto", device="cpu", optimizer="muon", batch_size=2))
    assert auto.ns_dtype in (torch.float32, torch.bfloat16) and "Newton-Schulz" in auto.dtype_probe
    adamw = machine.resolve_hardware(TINY, TrainConfig(dtype="auto", device="cpu", optimizer="adamw", batch_size=2))
    assert adamw.ns_dtype is None


def test_train_keeps_its_verdict_until_asked_to_measure_again(
    shakespeare_dir: Path, tmp_path: Path, monkeypatch, capsys  # noqa: ANN001
) -> None:
    from engine_fixtures import TINY_FLAGS

    from nanogpt.cli import main

    # any CPU: the probe runs where the CPU says it has native bfloat16 (emulated, the verdict is float32)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(dtype_probe.REPROBE_ENV, "0")  # restored after the test: --reprobe-dtype sets it
    flags = [f if f != "float32" else "auto" for f in TINY_FLAGS]
    cache = tmp_path / "cache" / dtype_probe.CACHE_FILE

    def train(*extra: str) -> str:
        """The run's `dtype auto:` line, "" when it took the cached verdict."""
        out = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        assert main(["train", "--headless", *flags, "--data-dir", str(shakespeare_dir), "--steps", "1",
                     "--out-dir", str(out), *extra]) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dtype auto:")]
        assert len(lines) <= 1
        return lines[0] if lines else ""

    def cached_as(**entry: float | str) -> None:
        (key,) = json.loads(cache.read_text())
        cache.write_text(json.dumps({key: entry}))

    assert "measured now" in train()
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["cores"] >= 1 and entry["load"] >= 0  # the load it was measured under is kept with it
    calm = {"dtype": "float32", "float32_ms": 100.0, "bfloat16_ms": 150.0, "load": 0.0, "cores": 2}
    cached_as(**calm)
    assert train() == ""  # a clear verdict from a quiet machine is reused
    assert "measured now" in train("--reprobe-dtype")  # unless asked
    # issue 34: a verdict measured busy, or a near tie, is kept too (it was float32, the side such timings take)
    cached_as(**{**calm, "load": 6.0})
    assert train() == ""
    cached_as(**{**calm, "bfloat16_ms": 88.0})
    assert train() == ""


@pytest.mark.parametrize(
    ("bfloat16_ms", "load", "dtype", "why"),
    [
        (50.0, 0.0, "bfloat16", ""),  # clearly faster on a calm machine
        (85.0, 0.0, "float32", "a near tie"),  # under the bar 0.9, but within 0.1 of it
        (75.0, 9.0, "float32", "the machine was busy"),  # faster, but timed among 8 other tasks on 2 cores
        (50.0, 9.0, "bfloat16", ""),  # twice as fast: a win that load on both sides of the race does not make
        (120.0, 9.0, "float32", ""),  # slower: float32 whatever the load
    ],
)
def test_a_near_tie_or_a_busy_machine_takes_float32(
    tmp_path: Path, monkeypatch, bfloat16_ms: float, load: float, dtype: str, why: str  # noqa: ANN001
) -> None:
    monkeypatch.setattr(dtype_probe, "PROC_STAT", tmp_path / "no-proc-stat")  # as on a system without /proc/stat:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))  # the load average, set here
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    result = dtype_probe._verdict("shape", lambda: (100.0, bfloat16_ms), tmp_path, reprobe=False)
    assert result.dtype == dtype_probe.NAMED[dtype] and result.recheck.startswith(why)
    assert ("float32 kept: " + why in dtype_probe.describe(result)) == bool(why)
    again = dtype_probe._verdict("shape", lambda: (100.0, 1.0), tmp_path, reprobe=False)  # not measured: kept
    assert (again.source, again.dtype, again.recheck) == ("cached", result.dtype, result.recheck)


def _spinners(n: int) -> list[subprocess.Popen]:
    """`n` other processes keeping a core busy each, running by the time this returns."""
    procs = [subprocess.Popen([sys.executable, "-c", "print(flush=True)\nwhile True: pass"], stdout=subprocess.PIPE)
             for _ in range(n)]
    for proc in procs:
        proc.stdout.readline()
    return procs


@pytest.mark.skipif(not dtype_probe.PROC_STAT.exists(), reason="reads /proc/stat (Linux)")
def test_the_load_counts_other_processes_now_and_not_this_ones_own_work() -> None:
    quiet = dtype_probe.current_load()
    procs = _spinners(2)
    try:
        loaded = dtype_probe.current_load()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert loaded >= quiet + 1.0  # two other busy processes: more than a core's worth more
    stop = threading.Event()
    matrix = torch.ones(256, 256)
    worker = threading.Thread(target=lambda: [matrix @ matrix for _ in iter(stop.is_set, True)])
    worker.start()
    try:
        own = dtype_probe.current_load()  # this process busy on every core it has: not another task
    finally:
        stop.set()
        worker.join()
    assert own < loaded and own < 1 + dtype_probe.BUSY * (os.cpu_count() or 1)
    # and, unlike the 1-minute load average, other work is forgotten the moment it ends
    assert dtype_probe.current_load() < loaded
