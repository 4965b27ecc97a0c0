"""The decoder's single-token paths (eager and fixed-shape) compute what GPT.forward computes, position by position."""

from __future__ import annotations

import pytest
import torch

from nanogpt.config import ModelConfig
from nanogpt.inference import CapturedStep, Decoder
from nanogpt.model import GPT


def tiny(bias: bool = False, block_size: int = 16, n_head: int = 2) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=37, block_size=block_size, n_layer=2, n_head=n_head, n_embd=32, bias=bias)
    return GPT(cfg).eval()


def all_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits of every position (passing targets makes forward return them all)."""
    logits, _ = model(idx, targets=idx)
    return logits


@pytest.mark.parametrize("rows", [1, 2])  # one row: the bmm attention; more: SDPA
@pytest.mark.parametrize("bias", [False, True])
def test_step_equals_full_forward(bias, rows):
    """Prefill, more prompt through forward(cache=), then single tokens through step: the same logits."""
    model = tiny(bias=bias)
    idx = torch.randint(0, 37, (rows, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = all_logits(model, idx)
        decoder = Decoder(model, batch_size=rows)
        got = [decoder.prefill(idx[:, :5])]
        got.append(model(idx[:, 5:9], cache=decoder.cache)[0][:, -1])  # more prompt after cached positions
        got += [decoder.step(idx[:, t]) for t in range(9, 16)]
    expected = [full[:, 4], full[:, 8], *(full[:, t] for t in range(9, 16))]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert decoder.cache.pos == 16


def test_step_rejects_more_than_block_size_and_prefill_starts_over():
    model = tiny(block_size=8)
    decoder = Decoder(model)
    with torch.inference_mode():
        decoder.prefill(torch.zeros(1, 8, dtype=torch.long))
        with pytest.raises(ValueError, match="full"):
            decoder.step(torch.zeros(1, dtype=torch.long))
        again = decoder.prefill(torch.tensor([[3, 4]]))  # a new window at positions 0..1
        step = decoder.step(torch.tensor([5]))
        reference = all_logits(model, torch.tensor([[3, 4, 5]]))
    torch.testing.assert_close(again, reference[:, 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step, reference[:, 2], rtol=1e-5, atol=1e-5)
    assert decoder.cache.pos == 3


def test_a_new_decoder_sees_weight_updates_made_before_it():
    """A decoder binds the parameters (the query part as a scaled copy): make a new one per generation."""
    model = tiny()
    tok = torch.tensor([3])
    with torch.inference_mode():
        before = Decoder(model).step(tok)
        model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)
        model.transformer.h[1].attn.c_attn.weight.mul_(1.5)  # q, k and v
        after = Decoder(model).step(tok)
        reference, _ = model(tok.view(1, 1))
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference[:, -1], rtol=1e-5, atol=1e-5)


def test_bfloat16_step_matches_bfloat16_forward():
    """Tiny on purpose: bfloat16 is emulated (slow) on CPUs without avx512_bf16."""
    model = tiny().to(torch.bfloat16)
    idx = torch.randint(0, 37, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = all_logits(model, idx)
        decoder = Decoder(model)
        assert decoder.cache.kv.dtype == torch.bfloat16
        decoder.prefill(idx[:, :4])
        decoder.step(idx[:, 4])
        last = decoder.step(idx[:, 5])
    assert last.dtype == torch.bfloat16
    torch.testing.assert_close(last.float(), full[:, -1].float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_fixed_shape_step_equals_full_forward_at_every_position(bias, rows):
    """The step a CUDA graph records (eager here): attention over the whole cache, unwritten positions masked."""
    model = tiny(bias=bias)
    idx = torch.randint(0, 37, (rows, 16), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        full = all_logits(model, idx)
        decoder = Decoder(model, batch_size=rows)
        step = CapturedStep(decoder)  # made before the prefill, as generation makes it
        assert step.graph is None  # no CUDA: the same fixed-shape step, run eagerly
        got = [decoder.prefill(idx[:, :1])]
        got += [step(idx[:, t]).clone() for t in range(1, 16)]  # up to the last position of the block
        with pytest.raises(ValueError, match="full"):
            step(idx[:, 0])
        # a new window (what generation does past block_size): prefill starts over, the step follows it
        again = [decoder.prefill(idx[:, 8:11]), *(step(idx[:, t]).clone() for t in range(11, 16))]
        window = all_logits(model, idx[:, 8:])
    for t, g in enumerate(got):
        torch.testing.assert_close(g, full[:, t], rtol=1e-5, atol=1e-5)
    for t, g in enumerate(again, start=2):
        torch.testing.assert_close(g, window[:, t], rtol=1e-5, atol=1e-5)
    assert decoder.cache.pos == 8
