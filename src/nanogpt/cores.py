"""A CPU micro-batch split into single-threaded shards run side by side, one per core (`runtime.Hardware.shards`
says how many pay; the measurements are in BENCHMARKS.md, "Training speed (CPU)")."""

from __future__ import annotations

import weakref
from concurrent.futures import ThreadPoolExecutor

import torch

from .runtime import autocast


class CoreParallel:
    """Splits each micro-batch across the CPU cores: one shard per worker, each on one intra-op thread.

    Why: at the small shapes CPU users train (cpu-small: 12 x 64 tokens, width 128) every op is short, and
    torch's intra-op threads pay an OpenMP fork/join per op (and stall badly when another process holds a
    core). Running whole forward+backward passes side by side, one single-threaded shard per core, keeps
    each core busy on its own work; the gradients are then summed. The result is the same computation: the
    mean loss over the batch and its gradient (up to float summation order, which is fixed, so runs repeat).
    """

    def __init__(self, workers: int, threads: int = 1):
        if workers < 2:
            raise ValueError("CoreParallel needs at least 2 workers")
        self.workers = workers
        # the calling thread runs shard 0 itself; the pool runs the others
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

        def run(shard: tuple[torch.Tensor, torch.Tensor, float]) -> tuple[torch.Tensor, list[torch.Tensor]]:
            xs, ys, weight = shard
            with autocast(device, dtype):  # autocast state is per thread: enter it in the worker
                _, loss = module(xs, ys)
            # autograd.grad, not backward(): each shard's gradients come back to be summed in a fixed order
            grads = torch.autograd.grad(loss * (loss_scale * weight), params)
            return loss.detach() * weight, list(grads)

        futures = [self._pool.submit(run, s) for s in shards[1:]]
        loss, grads = run(shards[0])
        for f in futures:
            shard_loss, shard_grads = f.result()
            loss = loss + shard_loss
            torch._foreach_add_(grads, shard_grads)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        return loss
