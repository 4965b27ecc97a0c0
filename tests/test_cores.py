"""cores.py: how many threads run the CPU shards (adapted to what the cores give) never changes a result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY

from nanogpt import cores, runtime
from nanogpt.config import ModelConfig
from nanogpt.events import StepDone
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer
from nanogpt.train.setup import build_trainer

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """One intra-op thread per shard, as the engine runs them on a 2-core machine."""
    with runtime.intra_op_threads(1):
        yield


# ------------------------------------------------------------------------------------ the decision
@pytest.mark.parametrize(
    ("shard_ms", "expected"),
    [
        ([50.0, 52.0], 2),  # idle: both cores keep up
        ([50.0, 95.0], 2),  # one core at half speed: one worker (100 ms) would be no faster
        ([50.0, 200.0], 1),  # one core mostly taken: both shards on the free one (100 ms) beat waiting
        ([10.0, 10.0, 11.0, 60.0], 2),  # 4 shards, one core taken: 2 rounds on the 2 fastest (20 ms)
        ([10.0, 10.0, 10.0, 10.0], 4),
        ([10.0, 30.0, 31.0, 32.0], 4),  # one fast core is not worth running everything on (40 ms vs 32)
    ],
)
def test_workers_for_takes_fewer_workers_only_when_a_straggler_costs_more_than_they_save(shard_ms, expected):
    assert cores.workers_for(shard_ms) == expected


def test_worker_count_falls_back_on_a_persistent_straggler_and_returns_when_the_cores_are_back():
    count = cores.WorkerCount(2)
    count.record(2, [50.0, 400.0])  # one slow micro-batch changes nothing
    count.record(2, [50.0, 52.0])
    count.record(2, [50.0, 51.0])
    assert count.next() == 2
    count.record(2, [50.0, 300.0])  # the second core taken for a while: once is not yet persistent ...
    assert count.current == 2
    count.record(2, [50.0, 300.0])  # ... twice is the window's majority
    assert count.current == 1
    runs = [count.next() for _ in range(2 * cores.PROBE_EVERY)]
    # one micro-batch in PROBE_EVERY runs on both workers again, to see whether the core came back
    assert runs.count(2) == 2 and runs[cores.PROBE_EVERY - 1] == 2 and set(runs) == {1, 2}
    for workers in runs:
        count.record(workers, [100.0] if workers == 1 else [50.0, 300.0])  # still taken: stay on one
    assert count.current == 1
    probes = 0
    while count.current == 1:  # the core is free again: the probes say so
        workers = count.next()
        probes += workers == 2
        count.record(workers, [50.0, 51.0] if workers == 2 else [100.0])
    assert probes == 2 and count.next() == 2  # two quiet probes outvote the window's one slow sample
    assert count.reduced > 0


def test_a_fixed_worker_count_never_changes():
    count = cores.WorkerCount(2, fixed=1)
    for _ in range(40):
        assert count.next() == 1
        count.record(1, [100.0])
    assert count.current == 1 and count.reduced == 40


# ---------------------------------------------------------------------------- the same bits, whatever runs them
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


def train(parallel: cores.CoreParallel, steps: int = 6) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A few AdamW steps of a tiny GPT on fixed batches, its micro-batches through `parallel`; the losses and
    the final weights."""
    model = tiny_model()
    opt = build_optimizer(model, kind="adamw", lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, 17, (5, 17), generator=g)  # 5 rows: shards of unequal size
        loss = parallel.forward_backward(model, tokens[:, :-1], tokens[:, 1:], loss_scale=1.0, device=CPU,
                                         dtype=torch.float32)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss)
    parallel.close()
    return losses, [p.detach().clone() for p in model.parameters()]


class Straggling(cores.WorkerCount):
    """A WorkerCount whose cores always look taken, so the adaptive path switches (fewer workers, probes on
    all) during the run: the real decision code, fed times that say one core straggles."""

    def record(self, workers, shard_ms):
        super().record(workers, [t * (1 + 10 * i) for i, t in enumerate(sorted(shard_ms))])


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_run_on_fewer_workers_give_the_same_bits(shards):
    plain_losses, plain_weights = train(cores.CoreParallel(shards, fixed_workers=shards))
    serial_losses, serial_weights = train(cores.CoreParallel(shards, fixed_workers=1))
    adaptive = cores.CoreParallel(shards)
    adaptive.schedule = Straggling(shards)
    adaptive_losses, adaptive_weights = train(adaptive, steps=3 * cores.PROBE_EVERY // 2)
    assert adaptive.schedule.current < shards and adaptive.schedule.reduced > 0  # it did switch
    for other_losses, other_weights in ((serial_losses, serial_weights), (adaptive_losses, adaptive_weights)):
        assert all(torch.equal(a, b) for a, b in zip(plain_losses, other_losses))  # bit for bit
        if len(other_losses) == len(plain_losses):
            assert all(torch.equal(a, b) for a, b in zip(plain_weights, other_weights, strict=True))
    longer_losses, _ = train(cores.CoreParallel(shards, fixed_workers=shards), steps=len(adaptive_losses))
    assert all(torch.equal(a, b) for a, b in zip(longer_losses, adaptive_losses, strict=True))


def test_a_run_with_its_shards_on_one_worker_trains_exactly_like_the_plain_run(shakespeare_dir: Path, tmp_path: Path,
                                                                              monkeypatch):
    """Through the engine: NANOGPT_SHARD_WORKERS=1 (all shards one after another, as the fallback runs them)
    gives the plain two-worker run's losses and weights bit for bit."""

    def run(out: Path):
        with runtime.intra_op_threads(2):  # two cores as torch sees them: two shards, on any machine
            trainer = build_trainer({**TINY, "data_dir": str(shakespeare_dir), "out_dir": str(out), "steps": 8,
                                     "grad_accum": 2})
        assert trainer.hardware.shards == 2
        events: list = []
        trainer.run(events.append)
        return trainer, [e.loss for e in events if isinstance(e, StepDone)]

    monkeypatch.setenv("NANOGPT_SHARD_WORKERS", "2")
    plain, plain_losses = run(tmp_path / "plain")
    monkeypatch.setenv("NANOGPT_SHARD_WORKERS", "1")
    serial, serial_losses = run(tmp_path / "serial")
    assert serial.stepper.core_parallel.schedule.reduced == 16 and plain.stepper.core_parallel.schedule.reduced == 0
    assert len(plain_losses) == 8 and serial_losses == plain_losses
    for p, q in zip(plain.model.parameters(), serial.model.parameters(), strict=True):
        assert torch.equal(p, q)
