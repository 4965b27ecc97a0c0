"""cores.py: how many threads run the CPU shards (adapted to what the cores give) never changes a result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY

from nanogpt.runtime import cores, machine
from nanogpt.config import ModelConfig
from nanogpt.events import StepDone
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer
from nanogpt.train.setup import build_trainer

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """One intra-op thread per shard, as the engine runs them on a 2-core machine."""
    with machine.intra_op_threads(1):
        yield


# ------------------------------------------------------------------------------------ the decision
@pytest.mark.parametrize(
    ("median_ms", "expected"),
    [
        ({2: 50.0}, 2),  # only all the workers measured: nothing to compare
        ({2: 50.0, 1: 95.0}, 2),  # idle: one worker is slower
        ({2: 220.0, 1: 280.0}, 2),  # a busy machine where side by side still pays
        ({2: 220.0, 1: 190.0}, 2),  # one worker barely faster: not worth leaving (noise)
        ({2: 400.0, 1: 110.0}, 1),  # a core taken and the shards waiting on it: one after another wins
        ({4: 60.0, 2: 40.0, 1: 80.0}, 2),
        ({1: 100.0}, 1),
    ],
)
def test_choose_workers_leaves_all_shards_side_by_side_only_for_a_measured_gain(median_ms, expected):
    assert cores.choose_workers(max(median_ms), median_ms) == expected


def feed(count: cores.WorkerCount, micro_ms, n: int) -> list[int]:
    """n micro-batches through `count`, each taking micro_ms(workers) ms; the worker counts it chose."""
    chosen = []
    for _ in range(n):
        workers = count.next()
        count.record(workers, micro_ms(workers))
        chosen.append(workers)
    return chosen


def test_worker_count_falls_back_when_a_core_is_taken_and_returns_when_it_is_free():
    count = cores.WorkerCount(2)
    quiet = feed(count, lambda w: 50.0 if w == 2 else 95.0, 200)
    assert set(quiet) == {2} and count.reduced == 0  # idle: never tries fewer workers (no cost)
    feed(count, lambda w: 400.0 if w == 2 else 110.0, cores.PROBE_EVERY)  # a core taken: slower, then a trial
    assert count.current == 1
    busy = feed(count, lambda w: 400.0 if w == 2 else 110.0, 4 * cores.PROBE_EVERY)
    assert busy.count(2) == 4  # one probe in PROBE_EVERY on all workers; they still do not pay
    assert count.current == 1
    back = feed(count, lambda w: 50.0 if w == 2 else 95.0, 2 * cores.PROBE_EVERY)
    assert back.count(2) > 2 and back[-1] == 2 and count.current == 2  # two quiet probes outvote a slow one


def test_a_failed_trial_waits_twice_as_long_before_the_next():
    count = cores.WorkerCount(2)
    feed(count, lambda w: 50.0, 10)
    chosen = feed(count, lambda w: 220.0 if w == 2 else 280.0, 200)  # busy, but side by side still pays
    trials = [i for i, w in enumerate(chosen) if w == 1 and (i == 0 or chosen[i - 1] == 2)]
    gaps = [b - a for a, b in zip(trials, trials[1:])]
    assert count.current == 2 and len(trials) >= 3
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))


def test_a_fixed_worker_count_never_changes():
    count = cores.WorkerCount(2, fixed=1)
    assert set(feed(count, lambda w: 100.0, 40)) == {1} and count.current == 1 and count.reduced == 40


# ---------------------------------------------------------------------------- the same bits, whatever runs them
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


def train(parallel: cores.CoreParallel, steps: int = 6, threads_seen: list | None = None):
    """A few AdamW steps of a tiny GPT on fixed batches, its micro-batches through `parallel`; the losses and
    the final weights. threads_seen: gets the intra-op thread count each shard's forward ran with."""
    model = tiny_model()
    if threads_seen is not None:
        model.register_forward_pre_hook(lambda module, args: threads_seen.append(torch.get_num_threads()))
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
    """A WorkerCount that sees all the shards side by side turn slow after its first micro-batches (a core
    taken), so the adaptive path switches during the run: the real decision code, fed that time."""

    seen = 0

    def record(self, workers, micro_ms):
        self.seen += 1
        super().record(workers, micro_ms * 10 if workers == self.shards and self.seen > cores.WINDOW else micro_ms)


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_run_on_fewer_workers_give_the_same_bits(shards):
    plain_losses, plain_weights = train(cores.CoreParallel(shards, fixed_workers=shards))
    serial_losses, serial_weights = train(cores.CoreParallel(shards, fixed_workers=1))
    adaptive = cores.CoreParallel(shards)
    adaptive.schedule = Straggling(shards)
    adaptive_losses, adaptive_weights = train(adaptive, steps=2 * cores.PROBE_EVERY)
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
        with machine.intra_op_threads(2):  # two cores as torch sees them: two shards, on any machine
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
    for p, q in zip(plain.stepper.model.parameters(), serial.stepper.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_the_calling_thread_runs_its_shards_on_the_shards_thread_count():
    """The engine's thread may have another intra-op count (a UI's worker thread has torch's default): the
    shards it runs itself still get the pool's one thread each, so which thread ran a shard changes no bit."""
    plain_losses, plain_weights = train(cores.CoreParallel(2, threads=1, fixed_workers=2))
    with machine.intra_op_threads(4):
        seen: list[int] = []
        losses, weights = train(cores.CoreParallel(2, threads=1, fixed_workers=1), threads_seen=seen)
        assert seen == [1] * 12  # 6 micro-batches x 2 shards, all on this thread, each on one intra-op thread
        assert torch.get_num_threads() == 4  # restored after each micro-batch
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, losses, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, weights, strict=True))
