"""A CPU micro-batch split into single-threaded shards run side by side, one per core (`machine.Hardware.shards`
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
from concurrent.futures import ThreadPoolExecutor

import torch

from . import machine
from .machine import autocast

# Fewer workers are kept only when measured at least this much faster, so that noise never flips the choice.
MARGIN = 0.8
# Micro-batches per worker count whose median decides: one slow micro-batch (a page fault, a short burst of
# other work) changes nothing; a core taken for longer does.
WINDOW = 3
# All shards side by side this much slower than their best so far: the cores give less; try fewer workers.
SLOWER = 1.5
# While on fewer workers, one micro-batch in this many runs on all of them again, to see the cores come back.
# A trial waits as long after the last one, twice as long after each that did not pay (up to RETRY_EVERY).
PROBE_EVERY = 16
# A trial this often in any case (a run that started on a busy machine has no quiet time to compare with):
# WINDOW slower micro-batches in RETRY_EVERY, well under 1% on an idle machine.
RETRY_EVERY = 500


def choose_workers(shards: int, median_ms: dict[int, float], margin: float = MARGIN) -> int:
    """The worker count to run `shards` shards on, from micro-batch times measured by worker count: all of them
    side by side (one per core) unless another count was measured at least `margin` faster."""
    best = min(median_ms, key=lambda w: (median_ms[w], -w))
    if shards not in median_ms:
        return best
    return best if median_ms[best] < margin * median_ms[shards] else shards


class WorkerCount:
    """How many threads run the next micro-batch's shards: all of them (one per core) while the cores keep up;
    when the micro-batch gets SLOWER than its best, a trial of WINDOW micro-batches on half the workers, kept
    if measured faster (`choose_workers`); probes on all workers then bring the count back when they pay.

    Whole micro-batch times decide, not per-shard ones: the shard threads share the GIL, so one descheduled by
    another process holds the others up too, and the shards' own times stay alike (BENCHMARKS.md, "Training
    speed under load"). `fixed` (ProcessOptions.shard_workers) pins the count: a diagnostic, the benchmark's "before".
    """

    def __init__(self, shards: int, fixed: int | None = None):
        self.shards = shards
        self.fixed = min(fixed, shards) if fixed else None
        self.current = self.fixed or shards
        self.reduced = 0  # micro-batches run on fewer workers than shards (for benchmarks and tests)
        self._ms: dict[int, deque[float]] = {}  # recent micro-batch milliseconds by worker count
        self._best = math.inf  # the best all-worker median seen
        self._trial: int | None = None  # the worker count on trial
        self._since = 0  # micro-batches since the last probe or trial
        self._wait = PROBE_EVERY  # before the next trial

    def next(self) -> int:
        """Workers for the next micro-batch."""
        if self.fixed or self._trial is not None:
            return self.fixed or self._trial
        self._since += 1
        if self.current < self.shards and self._since >= PROBE_EVERY:
            self._since = 0
            return self.shards
        return self.current

    def record(self, workers: int, micro_ms: float) -> None:
        """Take a micro-batch's wall time (milliseconds) on `workers` threads; decide the next count."""
        self.reduced += workers < self.shards
        if self.fixed:
            return
        window = self._ms.setdefault(workers, deque(maxlen=WINDOW))
        window.append(micro_ms)
        if len(window) < WINDOW:
            return
        medians = {w: statistics.median(d) for w, d in self._ms.items() if len(d) == WINDOW}
        if workers == self._trial:  # the trial's end: keep what was measured faster
            self._trial, self.current = None, choose_workers(self.shards, medians)
            self._wait = PROBE_EVERY if self.current < self.shards else min(RETRY_EVERY, 2 * self._wait)
        elif workers == self.shards and self.current < self.shards:  # a probe: are the cores back?
            self.current = choose_workers(self.shards, medians)
        elif workers == self.shards:
            self._best = min(self._best, medians[workers])
            slower = medians[workers] > SLOWER * self._best and self._since >= self._wait
            if slower or self._since >= RETRY_EVERY:
                self._trial, self._since = max(1, self.shards // 2), 0
                self._ms.pop(self._trial, None)  # measured afresh


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
        self.threads = threads
        self.schedule = WorkerCount(workers, fixed_workers)
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
        claim = itertools.count()  # shard indices, handed out in order to whichever worker is free first

        def run(i: int) -> None:
            xs, ys, weight = shards[i]
            with autocast(device, dtype):  # autocast state is per thread: enter it in the worker
                _, loss = module(xs, ys)
            # autograd.grad, not backward(): each shard's gradients come back to be summed in a fixed order
            grads = torch.autograd.grad(loss * (loss_scale * weight), params)
            results[i] = (loss.detach() * weight, list(grads))

        def drain() -> None:
            while (i := next(claim)) < n:  # next() on a count is atomic: each index goes to one worker
                run(i)

        workers = min(self.schedule.next(), n)
        t0 = time.perf_counter()
        futures = [self._pool.submit(drain) for _ in range(workers - 1)]
        try:
            # the calling thread runs shards too, on the pool's thread count: a shard's bits never depend on
            # which thread ran it (a UI runs the engine in a thread whose own count torch's default may be)
            with machine.intra_op_threads(self.threads if torch.get_num_threads() != self.threads else None):
                drain()
        finally:
            concurrent.futures.wait(futures)  # no shard still writing into `results` once this returns
        for f in futures:
            f.result()
        if n == self.workers:  # (a batch smaller than the shards is not the run's micro-batch)
            self.schedule.record(workers, (time.perf_counter() - t0) * 1e3)
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
