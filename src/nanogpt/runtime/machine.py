"""Hardware choices: which device, which precision, whether to compile (the optimizers: optim.py).

Kept apart from training (train/) so the speed work (what pays on which CPU/GPU) lives in one place (see
BENCHMARKS.md, training speed). Two entry points:

- `resolve_hardware(model_cfg, train_cfg) -> Hardware`: device, precision, ranks, CPU shards, loss
  read-back cadence, resolved once; the engine reads them from there.
- `training_process(hardware, ui=...)`: the process-wide settings a training run wants (intra-op threads,
  glibc's allocator, the GIL switch interval under a UI), entered by the front end, undone on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from . import distributed
from ..errors import UserError

if TYPE_CHECKING:
    from ..config import ModelConfig, TrainConfig


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. UserError if the named device is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda()
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple MPS is not available on this machine (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return _cuda() if name == "cuda" else torch.device(name)


def _cuda() -> torch.device:
    """The CUDA device, with TF32 matmuls on: float32 work (and autocast's float32 parts) on Ampere or newer
    runs on tensor cores at 10-bit mantissa precision, which training at this scale does not notice."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda")


def cpu_has_fast_bf16() -> bool:
    """True when this CPU does bfloat16 matmuls natively (AVX-512 BF16 / AMX), not by slow emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older torch or a build without oneDNN: be safe
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: 'auto' is bfloat16 where the hardware has it natively, else float32 (on CPU a native
    bfloat16 is only a candidate: resolve_hardware then times this run's step both ways)."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision context for the forward pass (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def should_compile(requested: bool | None, device: torch.device) -> bool:
    """torch.compile where it pays: on by default on CUDA, off on CPU/MPS.

    On CPU compiling gains a few percent per step but costs about a minute the first time, more than a
    short run wins back (BENCHMARKS.md, training speed); `--compile` there gets compiled shards.
    """
    if requested is not None:
        return requested
    return device.type == "cuda"


def compile_model(model: torch.nn.Module, device: torch.device, shards: int, mode: str = "default") -> torch.nn.Module:
    """torch.compile; for CPU shards with inductor's C++ wrapper, whose compiled graph runs without the GIL
    (the default Python wrapper holds it while calling the kernels, so two shard threads would take turns).
    An inductor option of this compiled model only: no process-wide setting changes. The C++ wrapper is
    built as a Python extension, so it needs Python's headers; without them, the default wrapper (which
    works, and gains nothing over eager shards). `mode` (CUDA only, --compile-mode): reduce-overhead and
    max-autotune replay the compiled step as CUDA graphs, one launch instead of one per kernel."""
    if device.type == "cpu" and shards > 1 and _python_headers():
        return torch.compile(model, options={"cpp_wrapper": True})
    return torch.compile(model, mode=mode) if device.type == "cuda" and mode != "default" else torch.compile(model)


def _python_headers() -> bool:
    import sysconfig

    return os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))


def core_parallel_workers(device: torch.device, *, batch_size: int, dropout: float, dtype: torch.dtype,
                          world_size: int, cores: int) -> int:
    """How many CoreParallel shards pay for this run (one per core torch would use); below 2: the usual way.

    Only on CPU, single process (torchrun ranks already own their cores), without dropout (its random
    masks would be drawn from the shared generator in thread order, so runs would not repeat) and without
    float16 (its GradScaler is not thread-safe). `cores`: torch's intra-op thread count (physical cores,
    or OMP_NUM_THREADS, so OMP_NUM_THREADS=1 turns it off). A compiled model runs as shards too (see
    compile_model).
    """
    if device.type != "cpu" or world_size > 1 or dropout > 0 or dtype == torch.float16:
        return 1
    return max(1, min(cores, batch_size))


@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """How this process runs a training, never what it trains (so no checkpoint saves them): resolved once at
    the gate (train/gate.py) from `train --reprobe-dtype` and the environment variables that alias the fields.

    reprobe_dtype: --dtype auto measures again whatever the cache holds (NANOGPT_REPROBE_DTYPE=1).
    sync_every: losses read back every N steps on any device (NANOGPT_SYNC_EVERY=N; None: 1 on CPU, the log
        interval on CUDA/MPS); a diagnostic, and how the tests run the deferred read-back on CPU.
    shard_workers: the CPU shards run on N threads always instead of as many as the cores give
        (NANOGPT_SHARD_WORKERS=N, cores.WorkerCount); a diagnostic, and the benchmark's "before". Changes no result.
    """

    reprobe_dtype: bool = False
    sync_every: int | None = None
    shard_workers: int | None = None

    @classmethod
    def from_env(cls, reprobe_dtype: bool = False) -> ProcessOptions:
        """The options given (the flag) and their environment aliases; an alias that is not a positive whole
        number is ignored, as a diagnostic switch left set must never stop a run."""
        def count(name: str) -> int | None:
            value = os.environ.get(name, "")
            return int(value) if value.isdigit() and int(value) > 0 else None

        reprobe = reprobe_dtype or os.environ.get("NANOGPT_REPROBE_DTYPE", "") not in ("", "0")
        return cls(reprobe, count("NANOGPT_SYNC_EVERY"), count("NANOGPT_SHARD_WORKERS"))


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where and how this process trains: resolved once by `resolve_hardware`, read everywhere else."""

    device: torch.device  # cuda:LOCAL_RANK under torchrun
    dtype: torch.dtype  # the compute precision (autocast below float32)
    rank: int
    local_rank: int
    world_size: int  # processes training together (1 without torchrun)
    compile: bool  # torch.compile the model (should_compile)
    shards: int  # CPU: CoreParallel shards per micro-batch (1: one pass, the usual way)
    threads: int | None  # CPU: intra-op threads per shard while training; None: leave torch's setting
    grad_scaler: bool  # float16 needs a GradScaler against underflowing gradients
    # steps whose losses are read back in one host-device transfer: 1 on CPU (free there; a NaN then stops
    # the run before the weights move), the log interval on CUDA/MPS (one sync per interval, not per step)
    sync_every: int
    dtype_probe: str = ""  # `--dtype auto` on CPU: what the step was measured at, when it was measured now
    ns_dtype: torch.dtype | None = None  # Muon's Newton-Schulz, where measured (CPU); None: optim's default
    compile_mode: str = "default"  # torch.compile's mode (--compile-mode); other than default on CUDA only
    shard_workers: int | None = None  # ProcessOptions.shard_workers: the CPU shards' threads pinned
    shard: bool = False  # --shard under torchrun: FSDP2 holds 1/world_size of the model per process (sharding.py)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints and prints."""
        return self.rank == 0


def resolve_hardware(
    model_cfg: ModelConfig, train_cfg: TrainConfig, options: ProcessOptions | None = None
) -> Hardware:
    """The Hardware for these settings and process options (by default: from the environment); under
    torchrun also joins the process group (every rank must)."""
    options = options if options is not None else ProcessOptions.from_env()
    device = distributed.local_device(resolve_device(train_cfg.device))
    distributed.init_process_group(device)
    dtype = resolve_dtype(train_cfg.dtype, device)
    world = distributed.world_size()
    cores = torch.get_num_threads()  # torch's default: nothing has changed it yet in this process
    shard = train_cfg.shard and distributed.under_torchrun()  # alone, a process has nothing to shard with
    if shard and dtype == torch.float16:
        raise UserError("--shard trains in bfloat16 or float32 (float16's GradScaler does not shard): give --dtype")
    shards = 1 if shard else core_parallel_workers(
        device, batch_size=train_cfg.batch_size, dropout=model_cfg.dropout, dtype=dtype, world_size=world, cores=cores
    )
    ns_dtype, probe = None, ""  # None: optim's default for the device
    if device.type == "cpu":
        from . import dtype_probe  # builds models to time them: imported where a CPU run needs it

        dtype, ns_dtype, probe = dtype_probe.cpu_dtypes(model_cfg, train_cfg, dtype, shards, cores,
                                                        options.reprobe_dtype)
    sync_every = options.sync_every or (1 if device.type == "cpu" else max(1, train_cfg.log_interval))
    return Hardware(
        device=device,
        dtype=dtype,
        rank=distributed.rank(),
        local_rank=distributed.local_rank(),
        world_size=world,
        compile=should_compile(train_cfg.compile, device),
        shards=shards,
        threads=max(1, cores // shards) if device.type == "cpu" else None,
        grad_scaler=dtype == torch.float16,
        sync_every=sync_every,
        dtype_probe=probe,
        ns_dtype=ns_dtype,
        compile_mode=train_cfg.compile_mode if device.type == "cuda" else "default",
        shard_workers=options.shard_workers,
        shard=shard,
    )


def for_shape(hardware: Hardware, model_cfg: ModelConfig, train_cfg: TrainConfig, reprobe: bool = False) -> Hardware:
    """`hardware` with `--dtype auto`'s CPU measurements made again for another shape: a timed run's plan picks
    its shape after the hardware was resolved for the preset's, and the faster precision can differ between them
    (BENCHMARKS.md, "The best model in the time you give")."""
    if hardware.device.type != "cpu" or train_cfg.dtype != "auto":
        return hardware
    from . import dtype_probe

    cores = hardware.shards * (hardware.threads or 1)
    dtype, ns_dtype, probe = dtype_probe.cpu_dtypes(model_cfg, train_cfg, resolve_dtype("auto", hardware.device),
                                                    hardware.shards, cores, reprobe)
    return dataclasses.replace(hardware, dtype=dtype, ns_dtype=ns_dtype, dtype_probe=probe)


def for_dropout(hardware: Hardware, model_cfg: ModelConfig, train_cfg: TrainConfig, reprobe: bool = False
                ) -> Hardware:
    """`hardware` for a model with dropout, which trains as one pass on every core (core_parallel_workers), with
    `--dtype auto` measured for that step (for_shape): what resolve_hardware gives a resume of such a run. A timed
    run's plan turns dropout on after the hardware was resolved for the preset's (train/rules.py, with_dropout)."""
    if model_cfg.dropout == 0 or hardware.shards == 1:
        return hardware
    whole = dataclasses.replace(hardware, shards=1, threads=hardware.shards * (hardware.threads or 1))
    return for_shape(whole, model_cfg, train_cfg, reprobe)


# While a UI runs, Python hands the GIL to a waiting thread after 0.5 ms instead of 5 ms: a chart draw holds
# the GIL for ~10-30 ms of pure Python, and the engine's threads would wait up to 5 ms at a time for it
# between two operators (BENCHMARKS.md, the UI's overhead).
UI_SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count at `n` inside, restored after (the count is process-wide); None leaves
    it alone and costs nothing (all_cores runs every step)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def all_cores(hardware: Hardware) -> Iterator[None]:
    """Between the shards' forward + backward passes, the update runs on every core the shards share (each
    shard runs on `threads` of them): Muon's Newton-Schulz above all, which one core would do alone."""
    sharded = hardware.shards >= 2 and hardware.threads is not None
    with intra_op_threads(hardware.threads * hardware.shards if sharded else None):
        yield


@contextlib.contextmanager
def training_process(hardware: Hardware, *, ui: bool = False) -> Iterator[None]:
    """The process-wide settings of a training run, applied in this one place; restored on exit.

    Intra-op threads: the cores divided among the CPU shards. On CPU, glibc's allocator keeps freed memory
    (keep_freed_memory; it has no way back, so that one stays). With `ui`, a short GIL switch interval.
    """
    threads, switch = torch.get_num_threads(), sys.getswitchinterval()
    try:
        if hardware.threads is not None:
            torch.set_num_threads(hardware.threads)
        if hardware.device.type == "cpu":  # a step's activations are reused, not re-faulted; sharded, see SHARDED_MMAP
            keep_freed_memory(SHARDED_MMAP if hardware.shard else 32 << 20)
        if ui:
            sys.setswitchinterval(UI_SWITCH_INTERVAL_S)
        yield
    finally:
        torch.set_num_threads(threads)
        sys.setswitchinterval(switch)


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_ALLOCATOR_TUNED = False


# --shard on CPU: a block's weights gathered for its forward pass, and its whole gradients, are freed a moment
# later. Kept by malloc below a 32 MiB mmap threshold, they piled up in the heap: a sharded process of a 85M-parameter
# model peaked at 2217 MiB, more than DDP's 1963; with 1 MiB (such buffers mmapped, returned when freed) 1107.
SHARDED_MMAP = 1 << 20


def keep_freed_memory(mmap_threshold: int = 32 << 20) -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS at once.

    A CPU step frees and re-allocates its activations; glibc's default trimming makes every step fault the
    same pages in again (the counts: BENCHMARKS.md, "Third round"). The cost: up to 256 MiB of freed memory
    stays with the process while it runs. `mmap_threshold`: allocations from this size up are mapped and
    returned when freed (32 MiB: above any activation). glibc (Linux) only; elsewhere a no-op. Idempotent
    (the first call's settings stay); returns whether it applied.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        import ctypes
        import platform

        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # a fixed mmap threshold (also ends glibc's sliding one) well above any activation, a heap that is
    # trimmed only past 256 MiB of free space at the top, and heap growth in 64 MiB strides
    _ALLOCATOR_TUNED = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 64 << 20)
        )
    )
    return _ALLOCATOR_TUNED


# ----------------------------------------------------------------------------- generation
# Below this many parameters a CPU decode step is a chain of tiny operators whose cost is dispatch, not
# arithmetic: extra threads only add synchronisation (on a busy machine, OpenMP threads waiting on a shared
# core; see BENCHMARKS.md, "Generation speed"). One thread then; bigger models keep torch's default.
SINGLE_THREAD_PARAMS = 5_000_000


@contextlib.contextmanager
def generation_threads(device: torch.device, n_params: int) -> Iterator[None]:
    """While generating: one intra-op thread for a model under SINGLE_THREAD_PARAMS on CPU; restored after
    (the count is process-wide, and `nanogpt generate` may run in-process)."""
    with intra_op_threads(1 if device.type == "cpu" and n_params < SINGLE_THREAD_PARAMS else None):
        yield


@contextlib.contextmanager
def aten_kernels(device: torch.device) -> Iterator[None]:
    """On CPU, run the enclosed ops on ATen's own kernels instead of handing some of them to oneDNN.

    Why: for a contiguous float32 CPU tensor, aten::gelu (exact erf) goes to a oneDNN primitive whose
    set-up cost per call dwarfs the work on one row, a large part of a small model's decode step; ATen's
    vectorised kernel computes the same exact-erf GELU (to float rounding). Training keeps oneDNN: on its
    larger activations oneDNN's GELU is the faster one (numbers in BENCHMARKS.md, "Generation speed").
    The switch (`torch.backends.mkldnn.enabled`) is process-wide, so generation holds it only around the
    model's compute and never across a `yield`; another thread computing meanwhile would at worst run
    ATen's kernels for those ops (the same results, another speed).
    """
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch._C._set_mkldnn_enabled(False)  # not the `flags()` context manager: it also resets oneDNN TF32
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(True)
