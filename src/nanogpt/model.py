"""The GPT-2-style decoder: token + position embeddings, pre-LayerNorm blocks, tied LM head, KV cache.

Parameter names and shapes map 1:1 onto GPT-2's (`transformer.wte`, `transformer.h.N.attn.c_attn`, ...),
except that our Linear weights are stored (out, in) as in every torch Linear, where Hugging Face's
Conv1D stores them (in, out): exchanging weights transposes the four matrices of each block.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop only the bias)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Pre-allocated keys and values of every layer for inference; `pos` is how many positions are filled.

    One static buffer `kv` (n_layer, B, 2, n_head, block_size, head_size) with `k` and `v` as views of it,
    so generating a token allocates nothing and one copy stores a layer's new key and value together.
    `GPT.forward(idx, cache=...)` fills it for any number of tokens; inference.py's `Decoder` owns one per
    generation and adds the fast path for one token.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype):
        hs = cfg.n_embd // cfg.n_head
        self.block_size = cfg.block_size
        self.batch_size = batch_size
        self.kv = torch.zeros(
            (cfg.n_layer, batch_size, 2, cfg.n_head, cfg.block_size, hs), device=device, dtype=dtype
        )
        self.k = self.kv[:, :, 0]  # (n_layer, B, nh, block_size, hs)
        self.v = self.kv[:, :, 1]
        self.pos = 0

    def reset(self) -> None:
        """Forget every position (the buffer is reused as is: stale entries are never read)."""
        self.pos = 0


# torch's CPU flash attention runs bfloat16 2-4x slower than float32 at short contexts, its backward above all, where
# the scores written out run on the CPU's bfloat16 matmuls; past ~128 positions the (T, T) scores cost what the
# kernel saves (BENCHMARKS.md, "Attention in bfloat16 on a CPU"). float32 and other devices keep the kernel.
EXPLICIT_ATTENTION_MAX_T = 128


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal self-attention of (B, nh, T, hs) queries, keys and values: torch's fused kernel, or for bfloat16 on a
    CPU at contexts up to EXPLICIT_ATTENTION_MAX_T the same sum written out, its softmax in float32 as the
    kernel's is."""
    T = q.size(-2)
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or T > EXPLICIT_ATTENTION_MAX_T:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    scores = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(diagonal=1)
    weights = scores.float().masked_fill(future, float("-inf")).softmax(dim=-1).to(v.dtype)
    return F.dropout(weights, dropout_p) @ v if dropout_p else weights @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        else:
            p = cache.pos
            cache.k[layer, :B, :, p : p + T] = k
            cache.v[layer, :B, :, p : p + T] = v
            if p == 0:  # a fresh window (a prompt): plain causal attention over the new tokens alone
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                k = cache.k[layer, :B, :, : p + T]
                v = cache.v[layer, :B, :, : p + T]
                if T == 1:  # one new token attends to everything before it: no mask needed
                    y = F.scaled_dot_product_attention(q, k, v)
                else:  # more prompt after p cached positions: causal within the new tokens
                    mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


def gelu_approximation(cfg: ModelConfig) -> str:
    """F.gelu's `approximate` for the config's activation: exact erf GELU, or GPT-2's tanh approximation
    (weights trained with one differ by up to 1e-3 in the logits when run with the other)."""
    return "tanh" if cfg.activation == "gelu_tanh" else "none"


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)
        self.approximate = gelu_approximation(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the dataset's vocabulary")
        self.config = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
                ln_f=LayerNorm(cfg.n_embd, bias=cfg.bias),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (the token ones are tied to lm_head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits, loss).

        With targets: logits for every position (B, T, vocab) and the mean cross-entropy.
        Without targets: logits of the last position only (B, 1, vocab), loss None (inference).
        With a cache: idx are the tokens after the cache's `pos` positions; the cache advances by T.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
