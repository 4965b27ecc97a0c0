"""The device work of training: one optimizer step, evaluation and sampling, knowing nothing of events,
queues or files.

Determinism, which exact resume rests on: batch i is a pure function of (seed, i) (data.py), a step's
global micro-batches are `batch_counter + m * world_size + rank`; the torch RNG (dropout) is re-seeded
before every micro-batch from (seed, global index), so no RNG state crosses a checkpoint and N ranks x
accumulation A train like 1 process x N*A; the learning rate is a pure function of the step.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import NamedTuple

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import config, data, optim, schedule
from ..runtime import cores, distributed, machine, sharding
from ..model import GPT
from ..tokenizers import Tokenizer
from .readback import FinishedStep, TrainingDiverged


def lr_at(cfg: config.TrainConfig, step: int) -> float:
    """The schedule's learning rate for (0-based) optimizer step `step` of a run with settings `cfg`."""
    return schedule.learning_rate(
        step,
        peak=cfg.learning_rate,
        minimum=cfg.min_learning_rate,
        warmup=cfg.warmup_steps,
        total=cfg.schedule_steps or cfg.steps,
        kind=cfg.lr_schedule,
        decay_fraction=cfg.decay_fraction,
    )


def dropout_seed(seed: int, index: int) -> int:
    """Seed of the torch RNG (dropout) for global micro-batch `index`: a pure function, so resume needs no
    state and the dropout masks do not depend on which rank draws the batch."""
    return (seed * 1_000_003 + index * 7919 + 1) % (2**63 - 1)


class Evaluation(NamedTuple):
    """One evaluation: the validation loss (nats per token) and bits per byte, and each mixology source's."""

    loss: float
    bpb: float
    source_losses: dict[str, float]
    source_bpb: dict[str, float]


class Samplers(NamedTuple):
    """The training batches, the validation batches, and a mixology dataset's validation batches by source."""

    train: data.BatchSampler
    val: data.WindowReader
    by_source: dict[str, data.WindowReader]


class Halted(Exception):
    """The run was told to stop at once (`Stepper.halt`): the step or evaluation in progress is dropped."""


class EvaluationCut(Exception):
    """The run was told to stop and save (`Stepper.cut`) during an evaluation: it is dropped, the save is not."""


def step_module(model: GPT, hardware: machine.Hardware) -> torch.nn.Module:
    """What a training step calls: `model`, compiled where that pays, wrapped in DDP on several processes;
    a sharded model (sharding.shard, which compiles its blocks) as it is."""
    if hardware.shard:
        return model
    module: torch.nn.Module = model
    if hardware.compile:
        module = machine.compile_model(model, hardware.device, hardware.shards, hardware.compile_mode)
    if hardware.world_size > 1:
        device = hardware.device
        ids = [device.index if device.index is not None else hardware.local_rank] if device.type == "cuda" else None
        module = DistributedDataParallel(module, device_ids=ids)
    return module


class Stepper:
    """Owns the model, its optimizer and grad scaler, the batch samplers and the CPU's core-parallel shards.

    Two handles on the one model: `model`, the plain GPT (saved, restored, clipped and sampled from), and
    `step_module`, what a training step calls (compiled where that pays, wrapped in DDP on several
    processes). Evaluation calls `eval_module`: the step module without DDP. With --shard (hardware.shard)
    the two are one FSDP2 model whose parameters are DTensor shards (runtime/sharding.py).
    """

    def __init__(
        self,
        train_cfg: config.TrainConfig,
        hardware: machine.Hardware,
        model: GPT,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        samplers: Samplers,
        tokenizer: Tokenizer,
    ):
        self.cfg = train_cfg
        self.hardware = hardware
        self.device, self.dtype = hardware.device, hardware.dtype
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.step_module = step_module(model, hardware)
        # CPU: each micro-batch runs as single-threaded shards side by side, one per core (see runtime)
        self.core_parallel = (
            cores.CoreParallel(hardware.shards, hardware.threads or 1, hardware.shard_workers)
            if hardware.shards > 1 else None
        )
        self.train_batches, self.val_batches, self.source_val_batches = samplers
        self.tokenizer = tokenizer
        # UTF-8 bytes per token id, on the device: an evaluation gathers its targets' bytes without a sync
        self.token_bytes = torch.from_numpy(tokenizer.token_bytes()).to(self.device)
        self.model.train()
        # set (from any thread) to drop the step or evaluation in progress at its next batch: a second stop
        # request, for a step that would take too long to finish (a huge --grad-accum, --eval-iters)
        self.halt = threading.Event()
        # set by a stop request that saves: an evaluation in progress is dropped at its next batch, so Ctrl-C
        # saves in a moment, not after 200 batches of baby-gpt on a slow CPU (~23 min). One process only: under
        # torchrun every rank must finish the evaluation's all-reduce, and a signal reaches them at different batches
        self.cut = threading.Event()

    def _check_halt(self) -> None:
        if self.halt.is_set():
            raise Halted("stopped at once: the step in progress was dropped")

    @property
    def micro_batches(self) -> int:
        """Global micro-batches one optimizer step consumes (over all ranks)."""
        return self.cfg.grad_accum * self.hardware.world_size

    @property
    def eval_module(self) -> torch.nn.Module:
        """The step module without its DDP wrapper: each rank evaluates its own share of the batches (a sharded
        model gathers each block for every rank's forward pass, so all ranks pass alike)."""
        module = self.step_module
        return module.module if isinstance(module, DistributedDataParallel) else module

    # ------------------------------------------------------------------------- one step
    def step(self, step: int, batch_counter: int, check: bool) -> FinishedStep:
        """Optimizer step `step + 1` over grad_accum micro-batches per rank, from global micro-batch
        `batch_counter` on. check: read the loss now and refuse a NaN/inf before the weights move (CPU, where
        reading costs nothing; raises TrainingDiverged); otherwise the loss stays a device tensor (no sync)."""
        cfg, world, rank = self.cfg, self.hardware.world_size, self.hardware.rank
        t0 = time.perf_counter()
        if self.hardware.compile and self.hardware.compile_mode != "default":  # CUDA graphs (CUDA only)
            torch.compiler.cudagraph_mark_step_begin()  # a new step: the last one's graph outputs may be reused
        lr = lr_at(cfg, step)
        optim.set_lr(self.optimizer, lr)  # each group at its own height (Muon's is higher)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            self._check_halt()
            index = data.global_batch_index(batch_counter, micro, rank, world)
            x, y = self.train_batches.batch(index)
            torch.manual_seed(dropout_seed(cfg.seed, index))
            if self.core_parallel is not None:
                total += self.core_parallel.forward_backward(
                    self.step_module, x, y, loss_scale=1 / cfg.grad_accum, device=self.device, dtype=self.dtype
                )
                continue
            # under DDP only the last micro-step all-reduces the gradients; sharded, only it reduce-scatters them
            last = micro == cfg.grad_accum - 1
            if self.hardware.shard:
                self.step_module.set_requires_gradient_sync(last)
            sharded_or_last = last or world == 1 or self.hardware.shard
            sync = contextlib.nullcontext() if sharded_or_last else self.step_module.no_sync()
            with sync:
                with machine.autocast(self.device, self.dtype):
                    _, loss = self.step_module(x, y)
                scaled = loss / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach()
        loss_now: torch.Tensor | float = total / cfg.grad_accum
        if check:
            # the logged loss is the mean over all micro-batches of all ranks, so logs compare across sizes
            loss_now = distributed.mean(loss_now).item()
            if not math.isfinite(loss_now):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged.at(step + 1, loss_now)
        with machine.all_cores(self.hardware):
            grad_norm = self._update(check)
        return FinishedStep(step=step + 1, lr=lr, loss=loss_now, t0=t0, t1=time.perf_counter(), grad_norm=grad_norm)

    def _update(self, check: bool) -> torch.Tensor | float:
        """Clip, step the optimizer and clear the gradients; returns the gradients' norm before clipping.

        No host sync on CUDA unless `check`: the norm stays a device tensor, clipping scales by a device-side
        factor, the learning rate is a Python float (fused AdamW keeps its step count on the device). The one
        exception is float16's GradScaler, whose step reads found-inf back to skip a step (bfloat16 needs none).
        """
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0 and not self.hardware.shard:
            grad_norm: torch.Tensor | float = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.cfg.grad_clip
            )
        else:  # the same norm, for the log (one pass over the gradients, no sync), clipped by as torch's clip does
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = sharding.norm(torch.nn.utils.get_total_norm(grads))  # sharded: all ranks' shards summed
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.cfg.grad_clip, grad_norm)
        if check:
            grad_norm = float(grad_norm)  # CPU: free to read, like the loss
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ------------------------------------------------------------------------- evaluation and sampling
    @torch.no_grad()
    def evaluate(self) -> Evaluation:
        """The validation loss and bits per byte, and for a mixology dataset each source's, on eval_iters fixed
        batches each (the same ones every time; no RNG touched), all read back in one transfer."""
        self.model.eval()
        try:
            sets = (self.val_batches, *self.source_val_batches.values())
            # rows of (sum of batch losses, batches, target bytes), summed over the ranks, read in one transfer
            rows = distributed.total(torch.stack([torch.stack(self._eval_sums(b)) for b in sets])).tolist()
        finally:
            self.model.train()
        losses, bpbs = [], []
        for batches, (loss_sum, n_batches, n_bytes) in zip(sets, rows):
            losses.append(loss_sum / n_batches)
            # bits per byte: all the nats over all the target bytes (a ratio of totals, not a mean of per-batch
            # ratios); every batch has batch_size x block_size targets. nan if they hold no byte at all
            nats = loss_sum * batches.batch_size * batches.block_size
            bpbs.append(nats / math.log(2) / n_bytes if n_bytes else math.nan)
        names = list(self.source_val_batches)
        return Evaluation(losses[0], bpbs[0], dict(zip(names, losses[1:])), dict(zip(names, bpbs[1:])))

    def _eval_sums(self, batches: data.WindowReader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Over this rank's share of batches 0..eval_iters-1 of `batches`: the sum of the batch losses (each the
        mean over its targets, none ignored), the batches, and the targets' UTF-8 bytes; on the device (no sync)."""
        loss_sum = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        n_bytes = torch.zeros((), device=self.device)
        world = self.hardware.world_size
        # sharded, every rank takes part in every forward pass: the last round is whole, its extra batches unused
        end = -(-self.cfg.eval_iters // world) * world if self.hardware.shard else self.cfg.eval_iters
        for i in range(self.hardware.rank, end, world):
            self._check_halt()
            if self.cut.is_set() and world == 1:
                raise EvaluationCut
            x, y = batches.batch(i)
            with machine.autocast(self.device, self.dtype):
                _, loss = self.eval_module(x, y)
            if i >= self.cfg.eval_iters:
                continue
            loss_sum += loss.float()
            count += 1
            n_bytes += self.token_bytes[y].sum()  # <|endoftext|> counts 0 bytes but its loss counts
        return loss_sum, count, n_bytes

    @torch.no_grad()
    def sample(self, n_tokens: int, prompt: str, seed: int, cuttable: bool = False) -> str:
        """Text sampled from the current weights (prompt + continuation); leaves the run unchanged. `cuttable`: an
        evaluation's, dropped (EvaluationCut) at a stop request that saves, as the evaluation's batches are.

        Uses generate.py's sampler (temperature 1) in eval mode with its own generator seeded with `seed`, and
        restores train mode and the global RNG state, so a run that samples trains exactly like one that does not.
        """
        from ..generate import generate_tokens, start_ids

        ids = start_ids(self.tokenizer, prompt)  # UserError for a character outside the vocabulary
        model = self._whole_model() if self.hardware.shard else self.model
        if model is None:  # sharded: rank 0 samples from the weights every rank helped to gather
            return ""
        cpu_state = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        try:
            new = []
            for token in generate_tokens(model, ids, n_tokens, temperature=1.0, generator=generator):
                self._check_halt()  # a second stop request: a sample of 10**17 tokens is dropped too
                if cuttable and self.cut.is_set():  # rank 0 samples alone: no other rank waits on it
                    raise EvaluationCut
                new.append(token)
        finally:
            self.model.train()
            torch.set_rng_state(cpu_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)
        return prompt + self.tokenizer.decode(new)

    def _whole_model(self) -> GPT | None:
        """A sharded model's weights gathered into a plain GPT in rank 0's CPU memory (None on the other ranks,
        which must call this too: the gather is a collective); sampled from there, it never fills one device."""
        weights = sharding.full_weights(self.model, self.hardware.is_main)
        if not self.hardware.is_main:
            return None
        with torch.device("meta"):  # no memory and no random numbers spent on weights about to be replaced
            model = GPT(self.model.config)
        model.load_state_dict(weights, assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # tied again: assign replaced them one by one
        return model.eval()
