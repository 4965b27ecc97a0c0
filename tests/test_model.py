"""The GPT itself: causal masking, GPT-2 parameter names, weight tying, parameter count, the KV cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanogpt.config import ModelConfig
from nanogpt.model import EXPLICIT_ATTENTION_MAX_T, GPT, KVCache, causal_attention


def tiny(bias: bool = False, block_size: int = 16, vocab_size: int = 37, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32, bias=bias)
    return GPT(cfg).eval()


def all_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Logits of every position (passing targets makes forward return them all)."""
    logits, _ = model(idx, targets=idx)
    return logits


def test_logits_at_t_do_not_depend_on_later_tokens():
    model = tiny()
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    t = 9
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 5) % 37  # every later token differs
    with torch.no_grad():
        a, b = all_logits(model, idx), all_logits(model, changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the later positions do see the change


def test_parameter_names_and_shapes_map_onto_gpt2():
    model = tiny(bias=True)
    C, V, T = 32, 37, 16
    # Hugging Face GPT2LMHeadModel's names; its Conv1D stores (in, out), torch Linear (out, in)
    expected = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C),
                "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (V, C)}
    for i in range(2):
        h = f"transformer.h.{i}."
        expected |= {
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,), h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "attn.c_attn.weight": (3 * C, C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "mlp.c_fc.weight": (4 * C, C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (C, 4 * C), h + "mlp.c_proj.bias": (C,),
        }
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert got == expected


def test_lm_head_is_tied_to_the_token_embedding():
    model = tiny()
    assert model.lm_head.weight is model.transformer.wte.weight
    idx = torch.randint(0, 37, (2, 8))
    _, loss = model.train()(idx, targets=idx)
    loss.backward()
    assert model.transformer.wte.weight.grad is not None and model.transformer.wte.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bias", [False, True])
def test_kv_cache_forward_equals_full_forward(bias):
    """Prefill in chunks, then single tokens through forward(cache=): the logits of a full forward."""
    model = tiny(bias=bias)
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = all_logits(model, idx)
        cache = KVCache(model.config, 2, "cpu", torch.float32)
        got = []
        for a, b in [(0, 5), (5, 9)]:  # a prompt, then more prompt after cached positions
            logits, _ = model(idx[:, a:b], cache=cache)
            got.append(logits[:, -1])
        for t in range(9, 16):  # one token at a time
            got.append(model(idx[:, t : t + 1], cache=cache)[0][:, -1])
    expected = [full[:, 4], full[:, 8], *(full[:, t] for t in range(9, 16))]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    assert cache.pos == 16


def test_forward_with_a_full_cache_is_rejected():
    model = tiny(block_size=8)
    cache = KVCache(model.config, 1, "cpu", torch.float32)
    with torch.inference_mode():
        model(torch.zeros(1, 8, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="block_size"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_num_params_counts_every_weight_once_but_the_position_embeddings():
    """The one count training and `nanogpt generate` both report: lm_head is wte (tied), wpe is left out."""
    model = tiny(bias=True)
    every = sum(t.numel() for t in model.state_dict().values())  # lm_head.weight listed besides wte.weight
    assert model.num_params() == every - 37 * 32 - 16 * 32
    assert model.num_params(non_embedding=False) == every - 37 * 32


@pytest.mark.parametrize("T", [16, EXPLICIT_ATTENTION_MAX_T, EXPLICIT_ATTENTION_MAX_T + 1])
def test_bfloat16_attention_on_cpu_matches_float32_attention(T):
    """bfloat16 on a CPU writes attention out up to EXPLICIT_ATTENTION_MAX_T positions (torch's kernel is slow
    there); its values and gradients are float32 attention's to bfloat16's precision, either side of the bound."""
    g = torch.Generator().manual_seed(T)
    q, k, v, grad = (torch.randn(2, 3, T, 16, generator=g) for _ in range(4))
    exact = [t.clone().requires_grad_() for t in (q, k, v)]
    reference = F.scaled_dot_product_attention(*exact, is_causal=True)
    reference.backward(grad)
    low = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = causal_attention(*low, dropout_p=0.0)
    out.backward(grad.to(torch.bfloat16))
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
    for a, b in zip(low, exact, strict=True):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=6e-2)


def test_bfloat16_attention_on_cpu_stays_causal_and_drops_out():
    model = tiny()
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 5) % 37
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = all_logits(model, idx), all_logits(model, changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    q = torch.randn(1, 2, 16, 8).to(torch.bfloat16)
    torch.manual_seed(0)
    dropped = causal_attention(q, q, q, dropout_p=0.5)
    assert torch.isfinite(dropped.float()).all()
    assert not torch.allclose(dropped, causal_attention(q, q, q, dropout_p=0.0))
