"""The KV-cached decoder behind generation: a prompt through the model once, then one token at a time.

`Decoder(model)` is one generation's state: a `KVCache` and the model's weights bound once for the fast
path. `prefill` runs a prompt through `GPT.forward` (model.py, the one definition of the math), which
fills the cache; `step` computes one new token's logits with that same math written as plain functional
calls. For a small model a decode step is nearly all per-operator overhead, so this path has no module
dispatch and no slicing (the cache is read through per-position views made once), and its matmuls take
the transposed weights directly and fold the residual add in (`addmm`).

`static_step` is the same step as a fixed-shape computation (the position is a tensor; attention reads the
whole preallocated cache, the positions not yet written masked out), so that `CapturedStep` can record it
once as a CUDA graph, with the draw of the next tokens, and replay it for every token: one launch a token
instead of one per operator. CPUs have no graphs and keep `step`. tests/test_inference.py checks both
against `GPT.forward` position by position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import GPT, Block, KVCache, gelu_approximation


class LayerWeights(NamedTuple):
    """One block's weights as `Decoder.step` uses them: matrices transposed (views), biases None without bias.

    The query columns of `attn_t` (and the query part of `attn_b`) are a copy scaled by 1/sqrt(head_size),
    the attention scale, so attention needs no scaling op; the other tensors are the parameters themselves.
    """

    ln_1_weight: torch.Tensor
    ln_1_bias: torch.Tensor | None
    attn_t: torch.Tensor  # c_attn (C, 3C): columns q | k | v
    attn_b: torch.Tensor | None
    attn_proj_t: torch.Tensor  # attn.c_proj (C, C)
    attn_proj_b: torch.Tensor | None
    ln_2_weight: torch.Tensor
    ln_2_bias: torch.Tensor | None
    fc_t: torch.Tensor  # mlp.c_fc (C, 4C)
    fc_b: torch.Tensor | None
    mlp_proj_t: torch.Tensor  # mlp.c_proj (4C, C)
    mlp_proj_b: torch.Tensor | None

    @classmethod
    def of(cls, block: Block, head_size: int) -> LayerWeights:
        a, m = block.attn, block.mlp
        C = a.n_embd
        attn_t = a.c_attn.weight.detach().t().clone()
        attn_t[:, :C] /= math.sqrt(head_size)
        attn_b = None
        if a.c_attn.bias is not None:
            attn_b = a.c_attn.bias.detach().clone()
            attn_b[:C] /= math.sqrt(head_size)
        return cls(
            block.ln_1.weight, block.ln_1.bias, attn_t, attn_b, a.c_proj.weight.t(), a.c_proj.bias,
            block.ln_2.weight, block.ln_2.bias, m.c_fc.weight.t(), m.c_fc.bias, m.c_proj.weight.t(), m.c_proj.bias,
        )


class Decoder:
    """One generation of `batch_size` rows: a KV cache and the model's weights bound for `step`.

    Inference only: use it under `torch.inference_mode()` with the model in eval mode (dropout is not
    applied). The weights are bound when it is made, so in-place updates made before then are seen; make
    a new Decoder for each generation.
    """

    def __init__(self, model: GPT, batch_size: int = 1):
        cfg, t = model.config, model.transformer
        wte = t.wte.weight
        self.model = model
        self.cache = KVCache(cfg, batch_size, wte.device, wte.dtype)
        self.n_embd, self.n_head = cfg.n_embd, cfg.n_head
        self.approximate = gelu_approximation(cfg)  # exact or tanh GELU, as the model computes
        self.wte, self.wte_t, self.wpe = wte, wte.t(), t.wpe.weight
        self.ln_f_weight, self.ln_f_bias = t.ln_f.weight, t.ln_f.bias
        self.layers = [LayerWeights.of(block, cfg.n_embd // cfg.n_head) for block in t.h]
        self.arange = torch.arange(cfg.block_size, device=wte.device)  # static_step's mask
        # per layer, per position p: the (B, 2, nh, hs) slot of p's key and value, then the keys and values
        # of positions 0..p: (nh, hs, p + 1) keys (transposed for bmm) and (nh, p + 1, hs) values with one
        # row, (B, nh, p + 1, hs) both for SDPA with more
        kv, k, v = self.cache.kv, self.cache.k, self.cache.v
        if batch_size == 1:
            self.positions = [[(kv[i, :, :, :, p], k[i, 0, :, : p + 1].transpose(1, 2), v[i, 0, :, : p + 1])
                               for p in range(cfg.block_size)] for i in range(cfg.n_layer)]
        else:
            self.positions = [[(kv[i, :, :, :, p], k[i, :, :, : p + 1], v[i, :, :, : p + 1])
                               for p in range(cfg.block_size)] for i in range(cfg.n_layer)]

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Forget the cache and run `idx` (B, T) at positions 0..T-1; logits (B, vocab) of the last one."""
        self.cache.reset()
        logits, _ = self.model(idx, cache=self.cache)
        return logits[:, -1, :]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, vocab) of one new token per row (tokens: (B,)) at position `cache.pos`; advances it.

        The same math as `GPT.forward(tokens[:, None], cache=self.cache)`.
        """
        cache = self.cache
        p = cache.pos
        if p >= cache.block_size:
            raise ValueError(f"the cache is full ({cache.block_size} positions); start a new window")
        C = self.n_embd
        B = tokens.shape[0]
        x = torch.index_select(self.wte, 0, tokens) + self.wpe[p]  # (B, C); cheaper than wte[tokens]
        for w, positions in zip(self.layers, self.positions):
            qkv = self._qkv(x, w)
            slot, k, v = positions[p]
            slot.copy_(qkv[:, 1:])  # this position's key and value, one copy into the static cache
            # one query attends to every cached position (this one included): no mask needed. With one
            # row, three batched-over-heads ops beat SDPA's general kernel (whose set-up is most of its
            # cost here); q is pre-scaled through the weights (LayerWeights).
            if B == 1:
                att = torch.softmax(torch.bmm(qkv[0, 0].unsqueeze(1), k), dim=-1)  # (nh, 1, p + 1)
                y = torch.bmm(att, v).view(B, C)
            else:
                y = F.scaled_dot_product_attention(qkv[:, :1].transpose(1, 2), k, v, scale=1.0).view(B, C)
            x = self._rest_of_block(x, y, w)
        cache.pos = p + 1
        return self._head(x)

    def static_step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """`step` with every shape fixed, for a CUDA graph: tokens (B,) at position `pos` (a (1,) tensor).

        Writes the keys and values at `pos` in place and attends over all `block_size` cached positions,
        those after `pos` masked out (their weight is exactly 0), so the same kernels serve every position.
        Leaves `cache.pos` alone: CapturedStep, which owns the position, advances it.
        """
        C, kv, k, v = self.n_embd, self.cache.kv, self.cache.k, self.cache.v
        B = tokens.shape[0]
        x = torch.index_select(self.wte, 0, tokens) + torch.index_select(self.wpe, 0, pos)  # (B, C)
        unwritten = self.arange > pos  # (block_size,): positions this query must not see
        for i, w in enumerate(self.layers):
            qkv = self._qkv(x, w)  # (B, 3, nh, hs)
            kv[i].index_copy_(3, pos, qkv[:, 1:].unsqueeze(3))  # kv[i]: (B, 2, nh, block_size, hs)
            att = torch.matmul(qkv[:, 0].unsqueeze(2), k[i].transpose(-2, -1))  # (B, nh, 1, block_size)
            att = torch.softmax(att.masked_fill(unwritten, float("-inf")), dim=-1)
            y = torch.matmul(att, v[i]).view(B, C)
            x = self._rest_of_block(x, y, w)
        return self._head(x)

    def _qkv(self, x: torch.Tensor, w: LayerWeights) -> torch.Tensor:
        """(B, 3, nh, hs): the block's query (pre-scaled), key and value of x (B, C)."""
        h = F.layer_norm(x, (self.n_embd,), w.ln_1_weight, w.ln_1_bias, 1e-5)
        qkv = torch.mm(h, w.attn_t) if w.attn_b is None else torch.addmm(w.attn_b, h, w.attn_t)
        return qkv.view(x.shape[0], 3, self.n_head, -1)

    def _rest_of_block(self, x: torch.Tensor, y: torch.Tensor, w: LayerWeights) -> torch.Tensor:
        """The residual stream after the block, given its attention output y (B, C): projection, then MLP."""
        if w.attn_proj_b is None:
            x = torch.addmm(x, y, w.attn_proj_t)
        else:
            x = torch.addmm(x + w.attn_proj_b, y, w.attn_proj_t)
        h = F.layer_norm(x, (self.n_embd,), w.ln_2_weight, w.ln_2_bias, 1e-5)
        h = torch.mm(h, w.fc_t) if w.fc_b is None else torch.addmm(w.fc_b, h, w.fc_t)
        h = F.gelu(h, approximate=self.approximate)
        if w.mlp_proj_b is None:
            return torch.addmm(x, h, w.mlp_proj_t)
        return torch.addmm(x + w.mlp_proj_b, h, w.mlp_proj_t)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mm(F.layer_norm(x, (self.n_embd,), self.ln_f_weight, self.ln_f_bias, 1e-5), self.wte_t)


class CapturedStep:
    """`Decoder.static_step`, and with `sample` the draw of the next tokens too, recorded once as a CUDA graph
    and replayed for each token (run eagerly off CUDA, where there are no graphs).

    `sample(logits, u)` turns the step's logits and one uniform number per row (None when `draws` is False:
    greedy) into the next token ids; the numbers are drawn outside the graph, from the caller's generator, so
    the tokens are those of the eager path. Made after the decoder and before its first prefill: recording
    runs the step a few times (CUDA needs a warm-up before capture), writing at position 0, which the prefill
    then overwrites. What it returns is the graph's own output buffer, valid until the next call.
    """

    WARMUP = 3

    def __init__(self, decoder: Decoder, sample: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
                 | None = None, draws: bool = False):
        self.decoder = decoder
        device = decoder.wte.device
        rows = decoder.cache.batch_size
        self.tokens = torch.zeros(rows, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.u = torch.full((rows, 1), 0.5, device=device) if sample is not None and draws else None
        self.sample = sample
        self.graph: torch.cuda.CUDAGraph | None = None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    self._compute()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._compute()
                if sample is not None:
                    self.tokens.copy_(self.out)  # the next replay starts from the tokens this one drew

    def _compute(self) -> torch.Tensor:
        logits = self.decoder.static_step(self.tokens, self.pos)
        return logits if self.sample is None else self.sample(logits, self.u)

    def __call__(self, tokens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One new token per row (tokens: (B,)) at position `cache.pos`, which it advances, as `Decoder.step`:
        its logits (B, vocab), or with `sample` the next tokens (B,), drawn with `generator`."""
        cache = self.decoder.cache
        p = cache.pos
        if p >= cache.block_size:
            raise ValueError(f"the cache is full ({cache.block_size} positions); start a new window")
        if self.graph is None or tokens is not self.out:  # the graph's own output is already its input
            self.tokens.copy_(tokens)
        self.pos.fill_(p)
        if self.u is not None:
            self.u.uniform_(0.0, 1.0, generator=generator)  # what torch.rand((B, 1), generator=...) draws
        if self.graph is None:
            out = self._compute()
        else:
            self.graph.replay()
            out = self.out
        cache.pos = p + 1
        return out
