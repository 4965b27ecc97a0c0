"""A CPU micro-batch split into single-threaded shards run side by side, one per core (`runtime.Hardware.shards`
says how many pay; the measurements are in BENCHMARKS.md, "Training speed (CPU)").

How the batch is split and summed is fixed for the run; how many threads run the shards adapts to what the
cores give (`WorkerCount`): the numbers never depend on it, only the speed does.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import statistics
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from . import runtime
from .runtime import autocast

# Fewer workers are taken only when predicted at least this much faster, so that an idle machine's noise never
# flips the choice.
MARGIN = 0.8
# All-worker micro-batches whose per-shard times decide (their element-wise median): one slow micro-batch (a
# page fault, a short burst of other work) changes nothing; a core taken for longer does.
WINDOW = 3
# While on fewer workers, one micro-batch in this many runs on all of them again, to see the cores come back.
PROBE_EVERY = 16


def workers_for(shard_ms: Sequence[float], margin: float = MARGIN) -> int:
    """How many workers should run n equal shards, from their times when each ran on a worker of its own.

    A worker that straggles (its core is shared with another process) holds the whole micro-batch. With w
    workers on the w fastest cores, n shards take about ceil(n / w) times the w-th fastest shard time; the
    best w is taken when it beats all n by `margin` (ties: more workers).
    """
    times = sorted(shard_ms)
    n = len(times)
    predicted = {w: math.ceil(n / w) * times[w - 1] for w in range(1, n + 1)}
    best = min(predicted, key=lambda w: (predicted[w], -w))
    return best if predicted[best] < margin * predicted[n] else n


class WorkerCount:
    """How many threads run the next micro-batch's shards: all of them (one per core) while the cores keep up,
    fewer while one persistently straggles (measured, `workers_for`), all again once a probe finds the cores
    back. `fixed` (NANOGPT_SHARD_WORKERS) pins the count: a diagnostic and the benchmark's "before"."""

    def __init__(self, shards: int, fixed: int | None = None):
        self.shards = shards
        self.fixed = min(fixed, shards) if fixed else None
        self.current = self.fixed or shards
        self.reduced = 0  # micro-batches run on fewer workers than shards (for benchmarks and tests)
        self._samples: deque[list[float]] = deque(maxlen=WINDOW)
        self._since_probe = 0

    def next(self) -> int:
        """Workers for the next micro-batch."""
        if self.fixed or self.current == self.shards:
            return self.current
        self._since_probe += 1
        if self._since_probe >= PROBE_EVERY:
            self._since_probe = 0
            return self.shards
        return self.current

    def record(self, workers: int, shard_ms: Sequence[float]) -> None:
        """Take a micro-batch's per-shard times (milliseconds); only all-worker ones say what the cores give."""
        if workers < self.shards:
            self.reduced += 1
        if self.fixed or workers < self.shards or len(shard_ms) != self.shards:
            return
        self._samples.append(sorted(shard_ms))
        if len(self._samples) == WINDOW:
            self.current = workers_for([statistics.median(col) for col in zip(*self._samples, strict=True)])


class CoreParallel:
    """Splits each micro-batch across the CPU cores: one shard per worker, each on one intra-op thread.

    Why: at the small shapes CPU users train (cpu-small: 12 x 64 tokens, width 128) every op is short, and
    torch's intra-op threads pay an OpenMP fork/join per op (and stall badly when another process holds a
    core). Running whole forward+backward passes side by side, one single-threaded shard per core, keeps
    each core busy on its own work; the gradients are then summed. The result is the same computation: the
    mean loss over the batch and its gradient (up to float summation order, which is fixed, so runs repeat).

    The shards stay the same and are summed in shard order whichever thread ran them, so when a core is taken
    by another process and `WorkerCount` runs them on fewer threads (one after another), every bit is the same.
    """

    def __init__(self, workers: int, threads: int = 1, fixed_workers: int | None = None):
        if workers < 2:
            raise ValueError("CoreParallel needs at least 2 workers")
        self.workers = workers  # the shards a micro-batch splits into (at most one per sequence)
        self.schedule = WorkerCount(workers, fixed_workers or runtime.fixed_shard_workers())
        # the calling thread runs shards itself; the pool runs the others
        # Each pool thread sets its own intra-op thread count: MKL's (mkl_set_num_threads_local) and
        # OpenMP's are per-thread settings, so a new thread would otherwise run its matmuls on every core
        # (while torch.get_num_threads() reports 1), oversubscribing the cores the other shards are on.
        # `threads`: intra-op threads per shard (Hardware.threads).
        self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="nanogpt-shard",
                                        initializer=torch.set_num_threads, initargs=(threads,))
        weakref.finalize(self, self._pool.shutdown, wait=False)  # a dropped Trainer leaves no idle threads

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def forward_backward(self, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                         loss_scale: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Add d(loss_scale * mean loss)/d(params) into the parameters' .grad; return the detached mean."""
        params = [p for p in module.parameters() if p.requires_grad]
        batch = x.shape[0]
        n = min(self.workers, batch)
        bounds = [batch * i // n for i in range(n + 1)]
        shards = [(x[a:b], y[a:b], (b - a) / batch) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        results: list = [None] * n
        shard_ms = [0.0] * n
        claim = itertools.count()  # shard indices, handed out in order to whichever worker is free first

        def run(i: int) -> None:
            xs, ys, weight = shards[i]
            t0 = time.perf_counter()
            with autocast(device, dtype):  # autocast state is per thread: enter it in the worker
                _, loss = module(xs, ys)
            # autograd.grad, not backward(): each shard's gradients come back to be summed in a fixed order
            grads = torch.autograd.grad(loss * (loss_scale * weight), params)
            results[i] = (loss.detach() * weight, list(grads))
            shard_ms[i] = (time.perf_counter() - t0) * 1e3

        def drain() -> None:
            while (i := next(claim)) < n:  # next() on a count is atomic: each index goes to one worker
                run(i)

        workers = min(self.schedule.next(), n)
        futures = [self._pool.submit(drain) for _ in range(workers - 1)]
        try:
            drain()
        finally:
            concurrent.futures.wait(futures)  # no shard still writing into `results` once this returns
        for f in futures:
            f.result()
        self.schedule.record(workers, shard_ms)
        loss, grads = results[0]
        for shard_loss, shard_grads in results[1:]:  # in shard order, whichever thread ran which
            loss = loss + shard_loss
            torch._foreach_add_(grads, shard_grads)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        return loss
