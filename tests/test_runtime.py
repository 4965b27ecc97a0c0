"""machine.py: precision choice, CPU core-parallel training steps, and the model's training-path math."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanogpt.runtime import cores, machine
from nanogpt.config import ModelConfig
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """One intra-op thread, as under CoreParallel: these models are tiny, and OpenMP's fork/join per op
    stalls for whole scheduler time slices when other processes (parallel test runs) hold the cores."""
    with machine.intra_op_threads(1):
        yield


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = {"vocab_size": 17, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}
    cfg.update(kw)
    return GPT(ModelConfig(**cfg))


def tiny_batch(batch: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 17, (batch, 17), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def train(model: GPT, dtype: torch.dtype, steps: int, workers: int) -> list[float]:
    """A few AdamW steps on one fixed batch (memorising it), as the engine runs them; returns the losses."""
    opt = build_optimizer(model, kind="adamw", lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    parallel = cores.CoreParallel(workers) if workers > 1 else None
    x, y = tiny_batch()
    losses = []
    for _ in range(steps):
        if parallel is not None:
            loss = parallel.forward_backward(model, x, y, loss_scale=1.0, device=CPU, dtype=dtype)
        else:
            with machine.autocast(CPU, dtype):
                _, loss = model(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    if parallel is not None:
        parallel.close()
    return losses


# ------------------------------------------------------------------------------------------ precision
def test_auto_dtype_on_cpu_is_bfloat16_only_where_the_cpu_does_it_natively():
    expected = torch.bfloat16 if machine.cpu_has_fast_bf16() else torch.float32
    assert machine.resolve_dtype("auto", CPU) == expected


def test_auto_dtype_never_picks_emulated_bfloat16(monkeypatch):
    # torch's oneDNN probe is what tells an AVX-512-BF16/AMX CPU from an AVX2 one: make it say "no"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert machine.cpu_has_fast_bf16() is False
    assert machine.resolve_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert machine.resolve_dtype("auto", CPU) == torch.bfloat16


def test_auto_on_a_native_bfloat16_cpu_takes_the_step_the_probe_measured_faster(tmp_path, monkeypatch):
    """A native bfloat16 is only a candidate: the run's own step, timed both ways, decides (and is cached)."""
    import json

    from nanogpt.runtime import dtype_probe
    from nanogpt.config import TrainConfig

    # say "native" everywhere: on a CPU that emulates bfloat16 the probe must then measure it slower
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path))
    cfg = ModelConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=64)
    train_cfg = TrainConfig(dtype="auto", device="cpu", batch_size=4)
    first = machine.resolve_hardware(cfg, train_cfg)
    (entry,) = json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text()).values()
    faster = "bfloat16" if entry["bfloat16_ms"] < dtype_probe.MARGIN * entry["float32_ms"] else "float32"
    assert entry["dtype"] == faster and first.dtype == dtype_probe.NAMED[faster]
    assert "measured now" in first.dtype_probe and f"float32 {entry['float32_ms']:.1f} ms" in first.dtype_probe
    # the next run reads the verdict, says nothing, and follows the cache even where it says the other dtype
    other = "float32" if faster == "bfloat16" else "bfloat16"
    key = next(iter(json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())))
    # (a verdict measured on a quiet machine and not a near tie: one from a busy machine is measured again)
    calm = {"load": 0.0, "float32_ms": 100.0, "bfloat16_ms": 150.0}
    (tmp_path / dtype_probe.CACHE_FILE).write_text(json.dumps({key: {**entry, **calm, "dtype": other}}))
    second = machine.resolve_hardware(cfg, train_cfg)
    assert second.dtype == dtype_probe.NAMED[other] and second.dtype_probe == ""
    # a named dtype is used as given, probe or not
    named = machine.resolve_hardware(cfg, TrainConfig(dtype="float32", device="cpu", batch_size=4))
    assert named.dtype == torch.float32


def test_explicit_dtypes_are_honoured():
    assert machine.resolve_dtype("float32", CPU) == torch.float32
    assert machine.resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert machine.resolve_dtype("float16", CPU) == torch.float16


# -------------------------------------------------------------------------------------- training steps
@pytest.mark.parametrize("workers", [1, 2])
def test_float32_training_steps_lower_the_loss(workers):
    losses = train(tiny_model(), torch.float32, steps=25, workers=workers)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_bfloat16_training_steps_run_and_lower_the_loss(workers):
    # tiny on purpose: on AVX2-only CPUs bfloat16 matmuls are emulated and ~100x slower
    losses = train(tiny_model(n_layer=1), torch.bfloat16, steps=8, workers=workers)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("batch", [6, 5])
def test_core_parallel_gives_the_gradient_of_the_whole_batch(batch):
    x, y = tiny_batch(batch)
    whole = tiny_model()
    _, loss = whole(x, y)
    (0.5 * loss).backward()  # loss_scale 0.5, as with --grad-accum 2
    sharded = tiny_model()
    parallel = cores.CoreParallel(3)
    sharded_loss = parallel.forward_backward(sharded, x, y, loss_scale=0.5, device=CPU, dtype=torch.float32)
    parallel.close()
    torch.testing.assert_close(sharded_loss, loss.detach())
    for (name, p), q in zip(whole.named_parameters(), sharded.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=name, rtol=1e-5, atol=1e-7)


def test_core_parallel_adds_to_existing_gradients_and_repeats_exactly():
    x, y = tiny_batch()
    runs = []
    for _ in range(2):
        model = tiny_model()
        parallel = cores.CoreParallel(2)
        for _ in range(2):  # two micro-batches accumulate, as with --grad-accum 2
            parallel.forward_backward(model, x, y, loss_scale=0.5, device=CPU, dtype=torch.float32)
        parallel.close()
        runs.append([p.grad.clone() for p in model.parameters()])
    reference = tiny_model()
    _, loss = reference(x, y)
    loss.backward()
    for a, b, r in zip(runs[0], runs[1], reference.parameters(), strict=True):
        assert torch.equal(a, b)  # the shards' gradients are summed in a fixed order: runs repeat bit for bit
        torch.testing.assert_close(a, r.grad, rtol=1e-5, atol=1e-7)


def test_core_parallel_is_used_only_where_it_is_safe():
    common = {"batch_size": 12, "dropout": 0.0, "dtype": torch.float32, "world_size": 1, "cores": 4}
    assert machine.core_parallel_workers(CPU, **common) == 4
    assert machine.core_parallel_workers(CPU, **{**common, "cores": 16}) == 12  # one shard per sequence at most
    assert machine.core_parallel_workers(CPU, **{**common, "cores": 1}) == 1  # OMP_NUM_THREADS=1
    assert machine.core_parallel_workers(torch.device("cuda"), **common) == 1
    assert machine.core_parallel_workers(CPU, **{**common, "dropout": 0.1}) == 1  # masks would not repeat
    assert machine.core_parallel_workers(CPU, **{**common, "world_size": 2}) == 1
    assert machine.core_parallel_workers(CPU, **{**common, "dtype": torch.float16}) == 1
    assert machine.core_parallel_workers(CPU, **{**common, "batch_size": 1}) == 1


def cpu_hardware(**train) -> machine.Hardware:
    from nanogpt.config import TrainConfig

    return machine.resolve_hardware(ModelConfig(dropout=0.0), TrainConfig(device="cpu", dtype="float32", **train))


def test_hardware_divides_the_cores_among_the_shards_and_training_process_restores(monkeypatch):
    torch.set_num_threads(2)  # as on a 2-core machine, whatever this one has
    hw = cpu_hardware(batch_size=12)
    assert (hw.shards, hw.threads, hw.world_size, hw.rank, hw.grad_scaler, hw.compile) == (2, 1, 1, 0, False, False)
    assert hw.sync_every == 1  # CPU: every loss is read at once
    switch = sys.getswitchinterval()
    with machine.training_process(hw):
        assert torch.get_num_threads() == 1  # one per shard: the cores divided among them
        assert sys.getswitchinterval() == switch  # no UI, no change
    assert torch.get_num_threads() == 2
    with machine.training_process(cpu_hardware(batch_size=1)):  # one shard: torch's own count
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("NANOGPT_SYNC_EVERY", "7")
    assert cpu_hardware().sync_every == 7


def test_a_ui_run_gets_a_short_gil_switch_interval_and_gives_it_back():
    """The engine's threads wait less for the GIL while a UI thread draws (BENCHMARKS.md, the UI's overhead)."""
    before = sys.getswitchinterval()
    with machine.training_process(cpu_hardware(), ui=True):
        assert sys.getswitchinterval() == machine.UI_SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before  # restored when the UI goes
    with pytest.raises(RuntimeError), machine.training_process(cpu_hardware(), ui=True):
        raise RuntimeError("the run failed")
    assert sys.getswitchinterval() == before  # also after a failure


_FAULTS_PER_STEP = """
import resource, sys, torch
from nanogpt.runtime import machine
from nanogpt.config import ModelConfig
from nanogpt.model import GPT
from nanogpt.optim import build_optimizer
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    assert machine.keep_freed_memory()
torch.manual_seed(0)
model = GPT(ModelConfig(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=65, dropout=0.0))
x = torch.randint(0, 65, (12, 64))
def step():
    _, loss = model(x, x)
    loss.backward()
    model.zero_grad(set_to_none=True)
for _ in range(3):
    step()
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# the median step: what recurs every step, not the rare step that grows the heap to a new high-water mark
print(sorted(faults)[len(faults) // 2])
"""


@pytest.mark.skipif(not (sys.platform == "linux" and platform.libc_ver()[0] == "glibc"), reason="glibc only")
def test_keep_freed_memory_stops_the_page_faults_of_every_step():
    """glibc's default gives back and re-faults a cpu-small-sized step's activations every step."""
    env = {**os.environ, "PYTHONPATH": str(Path(machine.__file__).parents[2])}
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        env.pop(name, None)
    # glibc's default starts at a 128 KiB mmap threshold and raises it when a large block is freed, so whether
    # steps re-fault depended on the order of frees (1 fault a step in one CI run in three): the default side
    # pins that starting threshold, so it shows what an untuned step does every time
    envs = {"default": {**env, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}, "tuned": env}
    faults = {
        mode: float(subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP, mode], env=envs[mode], check=True,
                                   capture_output=True, text=True).stdout)
        for mode in ("default", "tuned")
    }
    assert faults["default"] > 100 and faults["tuned"] < faults["default"] / 10, faults


# ------------------------------------------------------------------------------ the model's training math
def test_mlp_activation_is_gpt2_exact_gelu():
    model = tiny_model()
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 5, 32)
    h = mlp.c_fc(x)
    reference = mlp.c_proj(0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0))))
    torch.testing.assert_close(mlp(x), reference)


def test_training_attention_equals_explicit_causal_softmax_with_gradients():
    torch.manual_seed(3)
    model = tiny_model()
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 16, 32, requires_grad=True)
    out = attn(x)
    # the textbook formula: softmax(q k^T / sqrt(hs) + causal mask) v, heads side by side, then c_proj
    x2 = x.detach().clone().requires_grad_(True)
    q, k, v = attn.c_attn(x2).split(32, dim=2)
    q, k, v = (t.view(2, 16, 2, 16).transpose(1, 2) for t in (q, k, v))
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    att = (q @ k.transpose(-2, -1) / math.sqrt(16)).masked_fill(~mask, float("-inf"))
    ref = attn.c_proj((F.softmax(att, dim=-1) @ v).transpose(1, 2).reshape(2, 16, 32))
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x2, g)[0])


def test_the_update_runs_on_every_core_the_shards_share():
    from nanogpt.config import TrainConfig

    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32)
    hardware = machine.resolve_hardware(cfg, TrainConfig(dtype="float32", device="cpu", batch_size=4))
    sharded = dataclasses.replace(hardware, shards=2, threads=1)
    with machine.intra_op_threads(1):  # as a shard's thread runs
        with machine.all_cores(sharded):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
        with machine.all_cores(dataclasses.replace(hardware, shards=1)):  # one pass: nothing to change
            assert torch.get_num_threads() == 1
