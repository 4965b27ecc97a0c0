"""`--dtype auto` on CPU, decided by measuring: this run's own matmul shapes, bfloat16 autocast against float32.

A CPU flag says whether bfloat16 instructions exist, not whether they are fast: some CPUs with AVX-512 BF16
run bfloat16 matmuls slower than float32, and where bfloat16 is emulated it is many times slower. So a
short probe times the GEMMs of one training step (forward and both backward products of every Linear, for
the given model shape and per-call batch) in float32 and under bfloat16 autocast (casts included, as in
training), and picks bfloat16 only where it is clearly faster. The verdict is cached per CPU model, torch
version, thread count and shapes in `<cache root>/dtype_probe.json` (the cache root of `prepare.cache_dir`),
so a later run decides without measuring. A dtype the user names is used as given and nothing is probed.

The engine calls `resolve_cpu_dtype(requested, matmul_shapes(model_cfg, batch), cache_dir())` after the
thread count is set (the probe measures with the threads the run will use) and prints `describe(result)`.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import ModelConfig
from .prepare import cache_dir as default_cache_dir

CACHE_FILE = "dtype_probe.json"
NAMED = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# bfloat16 must beat float32 by this factor on the matmuls: the rest of a step (casts, elementwise ops,
# the optimizer) does not gain from it, so a near tie would make the step slower.
MARGIN = 0.9
MAX_DIM = 1024  # larger GEMM dimensions are timed at this size and scaled (see measure)


@dataclass(frozen=True)
class ProbeResult:
    """The dtype chosen and why: `source` is "named" (the user's), "measured" or "cached"."""

    dtype: torch.dtype
    source: str
    float32_ms: float | None = None  # the probed matmuls of one step, in float32
    bfloat16_ms: float | None = None  # the same under bfloat16 autocast
    cache_path: Path | None = None


def matmul_shapes(cfg: ModelConfig, batch_size: int) -> list[tuple[int, int, int, int]]:
    """(count, M, K, N) of the Linear GEMMs in one training step of `cfg` at `batch_size` sequences per call.

    Per Linear (in -> out) over M = batch_size * block_size tokens: forward (M, in) @ (in, out), the input
    gradient (M, out) @ (out, in) and the weight gradient (out, M) @ (M, in); `count` is how many per step.
    """
    m, c, v, n = batch_size * cfg.block_size, cfg.n_embd, cfg.vocab_size, cfg.n_layer
    linears = [(n, c, 3 * c), (n, c, c), (n, c, 4 * c), (n, 4 * c, c), (1, c, max(v, 1))]
    shapes: dict[tuple[int, int, int], int] = {}
    for count, fan_in, fan_out in linears:
        for mkn in ((m, fan_in, fan_out), (m, fan_out, fan_in), (fan_out, m, fan_in)):
            shapes[mkn] = shapes.get(mkn, 0) + count
    return [(count, *mkn) for mkn, count in shapes.items()]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform reports)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cache_key(shapes: list[tuple[int, int, int, int]]) -> str:
    """What the verdict depends on: CPU model, torch version, intra-op threads and the shapes."""
    dims = ";".join(f"{c}x{m}x{k}x{n}" for c, m, k, n in sorted(shapes))
    return f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dims}"


def _time_once(mats: list[tuple[float, torch.Tensor, torch.Tensor]], autocast: bool) -> float:
    """Milliseconds for one step's worth of the matmuls: each shape timed once, weighted by its count."""
    total = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for count, a, b in mats:
            t0 = time.perf_counter()
            torch.mm(a, b)
            total += count * (time.perf_counter() - t0)
    return 1000 * total


def measure(shapes: list[tuple[int, int, int, int]], repeats: int = 3) -> tuple[float, float]:
    """(float32 ms, bfloat16-autocast ms) for the matmuls of one step; float32 operands, as in training.

    Best of `repeats`, interleaved so a burst of load elsewhere hits both sides alike. A dimension above
    MAX_DIM is timed at MAX_DIM and the time scaled up by the ratio (a GEMM's time is linear in each large
    dimension), which keeps the probe short for big shapes. Where bfloat16 is far behind already in the
    warm-up (emulated: 10x and more) the probe stops there; the verdict is plain.
    """
    gen = torch.Generator().manual_seed(0)
    mats = []
    for count, *dims in shapes:
        scale = 1.0
        for d in dims:
            scale *= max(1.0, d / MAX_DIM)
        m, k, n = (min(d, MAX_DIM) for d in dims)
        mats.append((count * scale, torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)))
    f32 = _time_once(mats, False)  # warm-up: first calls pick kernels and allocate
    bf16 = _time_once(mats, True)
    if bf16 > 10 * f32:
        return f32, bf16
    f32, bf16 = float("inf"), float("inf")
    for _ in range(repeats):
        f32 = min(f32, _time_once(mats, False))
        bf16 = min(bf16, _time_once(mats, True))
    return f32, bf16


def resolve_cpu_dtype(
    requested: str, shapes: list[tuple[int, int, int, int]], cache_dir: str | os.PathLike | None = None
) -> ProbeResult:
    """The CPU compute dtype: the one `requested` names, or for "auto" the probe's verdict (from the cache
    when this CPU, torch, thread count and shapes were probed before; else measured and cached)."""
    if requested in NAMED:
        return ProbeResult(NAMED[requested], "named")
    if requested != "auto":
        raise ValueError(f"unknown dtype {requested!r}")
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_FILE
    key = cache_key(shapes)
    entries = _read(path)
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("dtype") in ("float32", "bfloat16"):
        return ProbeResult(NAMED[hit["dtype"]], "cached", hit.get("float32_ms"), hit.get("bfloat16_ms"), path)
    f32, bf16 = measure(shapes)
    dtype = "bfloat16" if bf16 < MARGIN * f32 else "float32"
    entries[key] = {"dtype": dtype, "float32_ms": round(f32, 3), "bfloat16_ms": round(bf16, 3)}
    try:
        _write(path, entries)
    except OSError:  # a read-only home must not stop training; the next run measures again
        path = None
    return ProbeResult(NAMED[dtype], "measured", round(f32, 3), round(bf16, 3), path)


def describe(result: ProbeResult) -> str:
    """One line for the run's start: the dtype, and for auto the numbers it was chosen by."""
    name = str(result.dtype).removeprefix("torch.")
    if result.source == "named":
        return f"dtype {name} (as given)"
    how = "measured now" if result.source == "measured" else f"cached in {result.cache_path}"
    return (
        f"dtype auto: {name} (one step's matmuls: float32 {result.float32_ms:.1f} ms, "
        f"bfloat16 {result.bfloat16_ms:.1f} ms; {how})"
    )


def as_dict(result: ProbeResult) -> dict:
    """The result as JSON-ready values (for a run's log)."""
    d = asdict(result)
    d["dtype"] = str(result.dtype).removeprefix("torch.")
    d["cache_path"] = str(result.cache_path) if result.cache_path else None
    return d


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: measure again and rewrite it
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, entries: dict) -> None:
    """Write the cache atomically: a temporary file in the same folder, then renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
