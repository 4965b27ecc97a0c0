"""optim.py: batched Newton-Schulz against torch's own, Muon resume through the checkpoint's tensors, adamw as today."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from nanogpt import checkpoint, data
from nanogpt.config import ModelConfig
from nanogpt.model import GPT
from nanogpt.optim import BatchedMuon, OptimizerPair, build_optimizer, muon_parameters, newton_schulz, set_lr

CPU = torch.device("cpu")
NS = {"ns_coefficients": (3.4445, -4.7750, 2.0315), "ns_steps": 5, "eps": 1e-7}


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32))


def batches(shakespeare_dir: Path, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tokens = data.load(shakespeare_dir)
    sampler = data.BatchSampler(tokens.train, block_size=16, batch_size=4, seed=3, stream=data.TRAIN_STREAM,
                                device=CPU)
    return [sampler.batch(i) for i in range(n)]


def train(model: GPT, opt, batch_list, lr: float = 1e-3) -> None:  # noqa: ANN001
    for x, y in batch_list:
        set_lr(opt, lr)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("shape", [(384, 128), (128, 512), (64, 64)])
def test_batched_newton_schulz_matches_torch_per_matrix(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    grads = torch.randn(3, *shape)
    ours = newton_schulz(grads, dtype=torch.float32)
    # torch's own iteration (bfloat16, one matrix at a time), compared in float32
    theirs = torch.stack([_zeropower_via_newtonschulz(g, NS["ns_coefficients"], 5, 1e-7).float() for g in grads])
    assert ours.dtype == torch.float32 and ours.shape == grads.shape
    torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=0.05)
    # batching changes nothing against one matrix at a time in the same dtype
    single = torch.stack([newton_schulz(g[None], dtype=torch.float32)[0] for g in grads])
    torch.testing.assert_close(ours, single, atol=1e-5, rtol=1e-5)
    # singular values come out near 1 (the quintic lands them in roughly (0.5, 1.5)); a random square
    # matrix has singular values near 0 that five iterations cannot lift, so rectangular ones only
    if shape[0] != shape[1]:
        s = torch.linalg.svdvals(ours)
        assert s.min() > 0.3 and s.max() < 1.5


def test_batched_muon_step_matches_torch_muon(shakespeare_dir: Path) -> None:
    [(x, y)] = batches(shakespeare_dir, 1)
    models = [tiny_gpt(), tiny_gpt()]
    opts = [
        torch.optim.Muon(muon_parameters(models[0]), lr=0.02, weight_decay=0.1),
        BatchedMuon(muon_parameters(models[1]), lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16),
    ]
    for model, opt in zip(models, opts):
        for _ in range(2):
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    theirs, ours, initial = (muon_parameters(m) for m in (*models, tiny_gpt()))
    for p, q, p0 in zip(theirs, ours, initial):
        torch.testing.assert_close(q, p, atol=1e-3, rtol=0)
        assert (q - p0).abs().max() > 1e-2  # the steps moved the weights by far more than the tolerance
    # the state has torch's format, so torch's Muon can take ours over
    fresh = torch.optim.Muon(muon_parameters(tiny_gpt()), lr=0.02, weight_decay=0.1)
    fresh.load_state_dict(opts[1].state_dict())
    assert set(fresh.state_dict()["state"][0]) == {"momentum_buffer"}


def test_muon_resume_through_checkpoint_tensors_continues_identically(shakespeare_dir: Path) -> None:
    steps = batches(shakespeare_dir, 6)
    model = tiny_gpt()
    opt = build_optimizer(model, kind="muon", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    assert isinstance(opt, OptimizerPair)
    train(model, opt, steps[:3])
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    # cloned, as writing them to disk would: they are the optimizer's live tensors
    tensors = {k: v.clone() for k, v in checkpoint.optimizer_tensors(opt).items()}
    assert any(name.endswith(".momentum_buffer") for name in tensors)
    assert any(name.endswith(".exp_avg_sq") for name in tensors)
    train(model, opt, steps[3:])  # the uninterrupted run

    resumed = tiny_gpt(seed=1)  # other weights, overwritten by the saved ones
    resumed.load_state_dict(saved_weights)
    opt2 = build_optimizer(resumed, kind="muon", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    checkpoint.load_optimizer(opt2, tensors)
    train(resumed, opt2, steps[3:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)


def test_muon_without_its_state_differs(shakespeare_dir: Path) -> None:
    """The resume test above can fail: dropping the momentum buffers changes the continued run."""
    steps = batches(shakespeare_dir, 4)
    model = tiny_gpt()
    opt = build_optimizer(model, kind="muon", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    train(model, opt, steps[:2])
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, opt, steps[2:])
    fresh = tiny_gpt()
    fresh.load_state_dict(saved)
    opt2 = build_optimizer(fresh, kind="muon", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    train(fresh, opt2, steps[2:])
    w = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(fresh.state_dict()[w], model.state_dict()[w])


def test_adamw_is_nanogpts_optimizer_step_for_step(shakespeare_dir: Path) -> None:
    steps = batches(shakespeare_dir, 3)
    ours, theirs = tiny_gpt(), tiny_gpt()
    opt = build_optimizer(ours, kind="adamw", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
    # nanoGPT's GPT.configure_optimizers: decay on every tensor of 2 or more dimensions, none on the rest
    params = [p for p in theirs.parameters() if p.requires_grad]
    ref = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.99),
    )
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == len(ref.param_groups)
    implementation = ("params", "lr_scale", "fused", "foreach")  # the fused CPU kernel: same math, faster
    for g, r in zip(opt.param_groups, ref.param_groups):
        assert g["lr_scale"] == 1.0
        assert {k: v for k, v in g.items() if k not in implementation} == {
            k: v for k, v in r.items() if k not in implementation
        }
        assert [p.shape for p in g["params"]] == [p.shape for p in r["params"]]
    for x, y in steps:
        set_lr(opt, 7e-4)
        for group in ref.param_groups:  # nanoGPT's loop: one rate for every group
            group["lr"] = 7e-4
        for model, o in ((ours, opt), (theirs, ref)):
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            o.step()
            o.zero_grad(set_to_none=True)
    initial = tiny_gpt().state_dict()
    for (name, a), b, a0 in zip(ours.state_dict().items(), theirs.state_dict().values(), initial.values()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=0, msg=name)  # fused and unfused round alike to ~1e-8
        assert name.endswith(".bias") or (a - a0).abs().max() > 1e-4  # the weights did move (lr 7e-4)


def test_each_group_follows_the_schedule_at_its_own_height() -> None:
    model = tiny_gpt()
    opt = build_optimizer(model, kind="muon", lr=2e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU,
                          muon_lr=0.04)
    set_lr(opt, 1e-3)  # half the peak
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert lrs == [1e-3, 0.02]
    n_muon = sum(len(g["params"]) for g in opt.param_groups if g["lr"] == 0.02)
    assert n_muon == 2 * 4  # four matrices per block
    # every parameter is in exactly one group
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(tiny_gpt(), kind="sgd", lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, device=CPU)
