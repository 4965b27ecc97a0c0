"""`--dtype auto` on a CPU with native bfloat16, decided by measuring this run's own training step both ways.

A CPU flag says whether bfloat16 instructions exist, not whether a step is faster with them: on some CPUs
with AVX-512 BF16 (even with AMX, whose matmuls are faster) the casts and the small ops around the matmuls
make a bfloat16-autocast step slower than a float32 one. So a short probe builds this run's model at its
per-call batch and times forward + backward in float32 and under bfloat16 autocast (interleaved, best of a
few), and picks bfloat16 only where the step is clearly faster. The optimizer's update is float32 either
way, so it is left out. The verdict is cached per CPU model, torch version, thread count and shape in
`<cache root>/dtype_probe.json` (the cache root of `files.cache_dir`), so a later run decides without
measuring, and keeps deciding alike until `train --reprobe-dtype` (or NANOGPT_REPROBE_DTYPE=1) measures again:
runs of one shape never differ in precision by chance. Where the timings cannot be trusted to stay on one side
(a near tie, or a machine busy while measuring) the verdict is float32, the safe and reproducible side. A dtype
the user names is used as given.

`runtime.resolve_hardware` calls `resolve_cpu_dtype("auto", StepShape.of(...), ...)` only where the CPU has
native bfloat16 at all (elsewhere float32 needs no measuring), with the threads the run's step will use.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..store.atomic import atomic_write
from . import distributed, machine
from ..config import ModelConfig, TrainConfig
from ..errors import UserError
from ..store.files import cache_dir as default_cache_dir, read_json

CACHE_FILE = "dtype_probe.json"
NAMED = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# bfloat16 must beat float32 by this factor: a near tie is not worth bfloat16's coarser arithmetic
MARGIN = 0.9
MAX_TOKENS = 4096  # a bigger per-call batch is probed at this many tokens: the ratio is what counts
NEAR_TIE = 0.1  # a bfloat16/float32 ratio this close to MARGIN is a near tie: float32
BUSY = 0.5  # runnable tasks besides this process, per core (current_load), above which timings say little
# a bfloat16 step in at most this share of float32's is trusted even when timed on a busy machine: load slows both
# sides of the interleaved race alike, so other work cannot make a win this large
CLEAR_WIN = 0.6
REPROBE_ENV = "NANOGPT_REPROBE_DTYPE"  # an alias of --reprobe-dtype (machine.ProcessOptions)


@dataclass(frozen=True)
class ProbeResult:
    """The dtype chosen and why: `source` is "named" (the user's), "measured" or "cached"."""

    dtype: torch.dtype
    source: str
    float32_ms: float | None = None  # forward + backward of one call, in float32
    bfloat16_ms: float | None = None  # the same under bfloat16 autocast
    cache_path: Path | None = None
    recheck: str = ""  # why float32 was kept though bfloat16 timed faster (a busy machine, a near tie), or ""


@dataclass(frozen=True)
class StepShape:
    """What one training call computes: the model's shape and the sequences per call (per CPU shard)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool
    batch_size: int

    @classmethod
    def of(cls, cfg: ModelConfig, batch_size: int) -> StepShape:
        return cls(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, max(cfg.vocab_size, 1), cfg.bias, batch_size)


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


def cache_key(shape: StepShape) -> str:
    """What the verdict depends on: CPU model, torch version, intra-op threads, how attention is computed (a verdict
    taken with torch's kernel alone is measured again) and the step's shape."""
    from ..model import EXPLICIT_ATTENTION_MAX_T

    dims = ",".join(f"{k}={v}" for k, v in asdict(shape).items())
    return (f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|"
            f"explicit attention to {EXPLICIT_ATTENTION_MAX_T}|{dims}")


def measure(shape: StepShape, repeats: int = 3) -> tuple[float, float]:
    """(float32 ms, bfloat16-autocast ms) for forward + backward of one call of this shape.

    Best of `repeats`, interleaved (see _race).
    """
    from ..model import GPT  # here: reading a cached verdict builds no model

    torch_state = torch.random.get_rng_state()  # the probe must not move the run's random stream
    try:
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=shape.vocab_size, block_size=shape.block_size, n_layer=shape.n_layer,
                          n_head=shape.n_head, n_embd=shape.n_embd, bias=shape.bias)
        model = GPT(cfg)
        batch = max(1, min(shape.batch_size, MAX_TOKENS // shape.block_size))
        x = torch.randint(0, shape.vocab_size, (batch, shape.block_size))
        y = torch.randint(0, shape.vocab_size, (batch, shape.block_size))

        def once(bfloat16: bool) -> float:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
                _, loss = model(x, y)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return 1000 * (time.perf_counter() - t0)

        return _race(once, repeats)
    finally:
        torch.random.set_rng_state(torch_state)


def resolve_cpu_dtype(
    requested: str, shape: StepShape, cache_dir: str | os.PathLike | None = None, reprobe: bool = False
) -> ProbeResult:
    """The CPU compute dtype: the one `requested` names, or for "auto" the probe's verdict (from the cache
    when this CPU, torch, thread count and shape were probed before; else measured and cached)."""
    if requested in NAMED:
        return ProbeResult(NAMED[requested], "named")
    if requested != "auto":
        raise ValueError(f"unknown dtype {requested!r}")
    return _verdict(cache_key(shape), lambda: measure(shape), cache_dir, reprobe)


def muon_shapes(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """(count, rows, cols) of the matrices Muon orthogonalises for `cfg` (optim.muon_parameters), by shape."""
    from ..model import GPT
    from ..optim import muon_parameters

    with torch.device("meta"):  # shapes only: nothing is allocated
        model = GPT(ModelConfig(**{**asdict(cfg), "vocab_size": max(cfg.vocab_size, 1)}))
    counts: dict[tuple[int, int], int] = {}
    for p in muon_parameters(model):
        counts[tuple(p.shape)] = counts.get(tuple(p.shape), 0) + 1
    return [(n, rows, cols) for (rows, cols), n in sorted(counts.items())]


def measure_newton_schulz(shapes: list[tuple[int, int, int]], repeats: int = 3) -> tuple[float, float]:
    """(float32 ms, bfloat16 ms) for one Muon update's Newton-Schulz over `shapes`, batched as BatchedMuon
    batches them; best of `repeats`, interleaved."""
    from ..optim import newton_schulz

    gen = torch.Generator().manual_seed(0)
    stacks = [torch.randn(n, rows, cols, generator=gen) for n, rows, cols in shapes]

    def once(bfloat16: bool) -> float:
        t0 = time.perf_counter()
        for grads in stacks:
            newton_schulz(grads, dtype=torch.bfloat16 if bfloat16 else torch.float32)
        return 1000 * (time.perf_counter() - t0)

    return _race(once, repeats)


def resolve_ns_dtype(
    cfg: ModelConfig, cache_dir: str | os.PathLike | None = None, reprobe: bool = False
) -> ProbeResult:
    """The dtype of Muon's Newton-Schulz on a CPU with native bfloat16: the faster of the two for this
    model's matrices (cached like the step's verdict). The iteration only has to land the singular values
    near 1, which bfloat16 does (torch.optim.Muon's own default), so speed alone decides."""
    shapes = muon_shapes(cfg)
    dims = ";".join(f"{n}x{r}x{c}" for n, r, c in shapes)
    key = f"newton-schulz|{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{dims}"
    return _verdict(key, lambda: measure_newton_schulz(shapes), cache_dir, reprobe)


def _race(once: Callable[[bool], float], repeats: int) -> tuple[float, float]:
    """(float32 ms, bfloat16 ms) of `once(bfloat16)`: best of `repeats`, interleaved so a burst of load elsewhere
    hits both sides alike, after one warm-up call each (the first calls pick kernels and allocate). Where
    bfloat16 is far behind already in the warm-up (emulated: 10x and more) it stops there; the verdict is plain.
    """
    f32, bf16 = once(False), once(True)
    if bf16 > 10 * f32:
        return f32, bf16
    f32, bf16 = float("inf"), float("inf")
    for _ in range(repeats):
        f32 = min(f32, once(False))
        bf16 = min(bf16, once(True))
    return f32, bf16


def _verdict(
    key: str, measure_both: Callable[[], tuple[float, float]], cache_dir: str | os.PathLike | None, reprobe: bool
) -> ProbeResult:
    """The cached verdict under `key`, or `measure_both()`'s (bfloat16 only when clearly faster), cached;
    `reprobe` (--reprobe-dtype): measured again whatever the cache holds."""
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_FILE
    entries = read_cache(path, "dtype probe cache")
    hit = entries.get(key)
    if isinstance(hit, dict) and hit.get("dtype") in ("float32", "bfloat16") and not reprobe:
        why = hit.get("why") if isinstance(hit.get("why"), str) else ""
        return ProbeResult(NAMED[hit["dtype"]], "cached", hit.get("float32_ms"), hit.get("bfloat16_ms"), path, why)
    load = current_load()
    f32, bf16 = measure_both()
    entries[key] = {"float32_ms": round(f32, 3), "bfloat16_ms": round(bf16, 3), "load": round(load, 2),
                    "cores": os.cpu_count() or 1}
    recheck = _doubt(entries[key]) if bf16 < MARGIN * f32 else ""
    dtype = "bfloat16" if bf16 < MARGIN * f32 and not recheck else "float32"
    entries[key].update(dtype=dtype, **({"why": recheck} if recheck else {}))
    path = path if write_cache(path, entries) else None
    return ProbeResult(NAMED[dtype], "measured", round(f32, 3), round(bf16, 3), path, recheck)


def _doubt(entry: dict) -> str:
    """Why timings in which bfloat16 won cannot be trusted to win again: taken on a busy machine (unless by far,
    CLEAR_WIN), or a near tie; "" when they can."""
    f32, bf16, load, cores = (entry[k] for k in ("float32_ms", "bfloat16_ms", "load", "cores"))
    if busy(load, cores) and bf16 > CLEAR_WIN * f32:
        return f"the machine was busy (load {load:.1f} on {cores} cores)"
    if abs(bf16 / f32 - MARGIN) < NEAR_TIE:
        return f"a near tie (bfloat16/float32 {bf16 / f32:.2f}, the bar {MARGIN})"
    return ""


def describe(result: ProbeResult, what: str = "dtype auto", timed: str = "forward + backward of one call") -> str:
    """One line for the run's start: the dtype, and for a probed one the numbers it was chosen by."""
    name = str(result.dtype).removeprefix("torch.")
    if result.source == "named":
        return f"dtype {name} (as given)"
    how = "measured now" if result.source == "measured" else f"cached in {result.cache_path}"
    if result.recheck:
        how += f"; float32 kept: {result.recheck} (--reprobe-dtype measures again)"
    return f"{what}: {name} ({timed}: float32 {result.float32_ms:.1f} ms, bfloat16 {result.bfloat16_ms:.1f} ms; {how})"


PROC_STAT = Path("/proc/stat")  # Linux: every core's time since boot, busy and idle, in clock ticks
LOAD_WINDOW = 0.2  # seconds over which current_load watches the other processes' CPU time


def current_load() -> float:
    """The runnable tasks now, this process counted as one: 1 + the cores' worth of CPU time that other processes
    used over the last LOAD_WINDOW seconds (Linux, /proc/stat less this process's own time), else the 1-minute load
    average (0 where the system says neither). The load average lags both ways: a minute after a run ends it still
    counts it (the next run, started at once on an idle machine, read busy and kept float32 at 2.3x the time), and
    20 s into two other busy processes on 2 cores it read 1.29, not busy (BENCHMARKS.md)."""
    try:
        busy0, own0, t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        time.sleep(LOAD_WINDOW)
        busy1, own1, t1 = _busy_seconds(), _own_seconds(), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return 1 + max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)


def _busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (user, nice, system, irq, softirq and steal: a hypervisor
    that takes the core is as busy as a neighbour)."""
    fields = [int(v) for v in PROC_STAT.read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


def busy(load: float, cores: int) -> bool:
    """Whether timings taken at `load` on `cores` cores say little: this process is about one of the runnable
    tasks, and more than BUSY others per core were running beside it."""
    return (load - 1) / cores > BUSY


def read_cache(path: Path, what: str) -> dict:
    """A probe's cache of measurements (this one's verdicts, train/probe.py's step times); {} when it is absent
    or damaged (even nested 200,000 deep): measured again and rewritten."""
    try:
        data = read_json(path, what)
    except UserError:
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(path: Path, entries: dict) -> bool:
    """Write a probe's cache; False where it cannot be (a read-only home must not stop training: the next run
    measures again)."""
    try:
        text = json.dumps(entries, indent=1, sort_keys=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------------- resolving `--dtype auto` on a CPU
def cpu_dtypes(model_cfg: ModelConfig, train_cfg: TrainConfig, dtype: torch.dtype, shards: int, cores: int,
               reprobe: bool) -> tuple[torch.dtype, torch.dtype | None, str]:
    """On a CPU: the step's precision and Muon's Newton-Schulz one (None: optim's default), each the faster
    measured (or cached) for this shape where `--dtype auto` meets native bfloat16; and what was measured now."""
    probe = ns_probe = ""
    if train_cfg.dtype == "auto" and dtype == torch.bfloat16:
        dtype, probe = _measured_cpu_dtype(model_cfg, -(-train_cfg.batch_size // shards), max(1, cores // shards),
                                           reprobe)
    ns_dtype = None
    if train_cfg.optimizer == "muon" and train_cfg.dtype == "auto" and machine.cpu_has_fast_bf16():
        ns_dtype, ns_probe = _measured_ns_dtype(model_cfg, reprobe)
    return dtype, ns_dtype, "; ".join(x for x in (probe, ns_probe) if x)


def _measured_ns_dtype(model_cfg: ModelConfig, reprobe: bool) -> tuple[torch.dtype, str]:
    """Muon's Newton-Schulz dtype on a CPU with native bfloat16, timed (or cached) on every core (the update
    runs on all of them, see all_cores). A named --dtype skips this."""
    result = resolve_ns_dtype(model_cfg, reprobe=reprobe)
    line = describe(result, "Muon's Newton-Schulz", "one update") if result.source == "measured" else ""
    return _agreed(result), line


def _measured_cpu_dtype(
    model_cfg: ModelConfig, batch_size: int, threads: int, reprobe: bool
) -> tuple[torch.dtype, str]:
    """bfloat16 or float32 for `--dtype auto` on a CPU with native bfloat16: the faster of the two for this
    run's step, timed (or cached) with the threads one shard will use."""
    with machine.intra_op_threads(threads):
        result = resolve_cpu_dtype("auto", StepShape.of(model_cfg, batch_size), reprobe=reprobe)
    return _agreed(result), describe(result) if result.source == "measured" else ""


def _agreed(result: ProbeResult) -> torch.dtype:
    """A probe's dtype (float32 or bfloat16) as rank 0 found it: every torchrun rank must compute alike."""
    bf16 = distributed.broadcast_int(int(result.dtype == torch.bfloat16), torch.device("cpu"))
    return torch.bfloat16 if bf16 else torch.float32
