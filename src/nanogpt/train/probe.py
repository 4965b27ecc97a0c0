"""The speed probe of `train --time` (plan.py): how long one training step of a candidate shape takes on this
machine, timed through the real `Stepper` on the run's own hardware and data, cached per machine and shape.

A cached time is measured again when it was taken on a busy machine (as the dtype probe's verdicts are) or
with another torch; `--reprobe-dtype` does not touch it (it is not a precision).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from .. import config, data
from ..model import EXPLICIT_ATTENTION_MAX_T, GPT
from ..runtime import distributed, machine
from ..runtime.dtype_probe import busy, cpu_model, current_load, read_cache, write_cache
from ..store.files import cache_dir
from . import parts
from .step import Stepper

CACHE_FILE = "speed_probe.json"
WARMUP, TIMED = 2, 3  # steps run first (allocations, first-call costs), then timed; the median counts
# how much slower than `limit_s` the first step may be before the shape is too slow: compiling, it compiles (and a
# GPU's first step sets up its libraries); eager on a CPU it was 1.2-1.5x the next steps (BENCHMARKS.md, ninth
# session), which run at speed, so a shape far too slow is refused after one or two steps, not WARMUP + 1 (70-87 s
# of a `--time 1m` on a slow CPU)
FIRST_STEP_SLACK, EAGER_FIRST_STEP_SLACK = 5, 2


def key(model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, hardware: machine.Hardware) -> str:
    """What a step's time depends on: the machine, torch, the hardware resolved and the step's shape."""
    shape = (model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.block_size, model_cfg.vocab_size,
             train_cfg.batch_size, train_cfg.grad_accum, train_cfg.optimizer)
    where = f"{hardware.device.type}|{hardware.dtype}|shards {hardware.shards}|threads {hardware.threads}"
    if model_cfg.dropout:  # its masks cost time (~25% of a small CPU step); a run without keeps its key as it was
        where += f"|dropout {model_cfg.dropout:g}"
    if hardware.device.type == "cpu":  # times taken before bfloat16's explicit attention are measured again
        where += f"|explicit attention to {EXPLICIT_ATTENTION_MAX_T}"
    name = torch.cuda.get_device_name(hardware.device) if hardware.device.type == "cuda" else cpu_model()
    return f"{name}|torch {torch.__version__}|{where}|world {hardware.world_size}|{shape}"


def step_seconds(
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    hardware: machine.Hardware,
    tokens: data.TokenData,
    limit_s: float,
) -> float | None:
    """Seconds per optimizer step of this shape (cached, else timed); None when a step takes more than `limit_s`
    (the first, with its warm-up, may take FIRST_STEP_SLACK times that): too slow to be a plan."""
    path = Path(cache_dir()) / CACHE_FILE
    entries = read_cache(path, "speed probe cache")
    name = key(model_cfg, train_cfg, hardware)
    hit = entries.get(name)
    if isinstance(hit, dict) and isinstance(hit.get("ms"), (int, float)) and hit["ms"] > 0 and not _busy(hit):
        return float(hit["ms"]) / 1000
    load = current_load()
    seconds = _time_steps(model_cfg, train_cfg, hardware, tokens, limit_s)
    # every rank plans alike: rank 0's measurement is the plan's (-1: too slow)
    ms = distributed.broadcast_int(round(seconds * 1e6) if seconds is not None else -1, hardware.device) / 1000
    if ms < 0:
        return None
    entries[name] = {"ms": ms, "load": round(load, 2), "cores": os.cpu_count() or 1}
    if hardware.is_main:
        write_cache(path, entries)
    return ms / 1000


def _time_steps(
    model_cfg: config.ModelConfig,
    train_cfg: config.TrainConfig,
    hardware: machine.Hardware,
    tokens: data.TokenData,
    limit_s: float,
) -> float | None:
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_cfg).to(hardware.device)
    optimizer = parts.optimizer_for(model, train_cfg, hardware)
    samplers = parts.samplers(tokens, model_cfg, train_cfg, hardware.device)
    stepper = Stepper(train_cfg, hardware, model, optimizer, None, samplers, tokens.tokenizer)
    eager_cpu = hardware.device.type == "cpu" and not hardware.compile
    slack, judged_from = (EAGER_FIRST_STEP_SLACK, 1) if eager_cpu else (FIRST_STEP_SLACK, WARMUP)
    times = []
    for i in range(WARMUP + TIMED):
        t0 = time.perf_counter()
        stepper.step(i, i * stepper.micro_batches, check=True)  # check: the loss read, so the step is done
        times.append(time.perf_counter() - t0)
        if times[0] > slack * limit_s or (i >= judged_from and times[-1] > limit_s):
            return None
    return statistics.median(times[WARMUP:])


def _busy(entry: dict) -> bool:
    """A cached time taken on a busy machine (or with no load recorded) is measured again."""
    load, cores = entry.get("load"), entry.get("cores")
    if not isinstance(load, (int, float)) or not isinstance(cores, int) or cores < 1:
        return True
    return busy(load, cores)
