"""The optimizers of a GPT: `adamw` (nanoGPT's recipe) and `muon` (Muon on the block matrices, AdamW on the rest).

The contract with the engine: every parameter group carries `lr_scale`, its peak learning rate divided by
the run's peak (`--learning-rate`), so the schedule stays one function of the step and each group follows it
at its own height: `set_lr(optimizer, schedule_lr)` sets `group["lr"] = schedule_lr * group["lr_scale"]`.
For `adamw` every scale is 1.0 (nanoGPT's recipe, step for step). For `muon` the Muon group's scale is
`muon_lr / learning_rate`.

Both kinds expose one object with `param_groups`, `step`, `zero_grad`, `state_dict` and `load_state_dict`
whose state is indexed by one running parameter index (AdamW's parameters, then Muon's), so
`checkpoint.optimizer_tensors` / `checkpoint.load_optimizer` save and restore Muon's `momentum_buffer`
exactly as they do AdamW's moments.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch

from .runtime import sharding

MUON_MOMENTUM = 0.95


def muon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weight matrices inside the transformer blocks (attention and MLP), Muon's part of the model.

    Embeddings and the LM head stay with AdamW: Muon's orthogonalised update suits hidden linear maps, not
    a lookup table whose rows are updated one token at a time (Keller Jordan's Muon post says the same).
    """
    blocks = model.transformer.h
    return [p for p in blocks.parameters() if p.requires_grad and p.dim() == 2]


def newton_schulz(
    grads: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximate orthogonalisation (U S' V^T with S' ~ 1) of a stack of same-shape matrices (n, A, B).

    The quintic iteration of torch.optim.Muon (`_zeropower_via_newtonschulz`), batched: one bmm per product
    for all n matrices instead of n small mms, in `dtype` (float32 on CPUs, whose bfloat16 matmuls are often
    emulated and slower; bfloat16 on CUDA). Returns a tensor of `grads`' shape in `dtype`.
    """
    a, b, c = coefficients
    x = grads.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    # Frobenius norm per matrix bounds the spectral norm, so all singular values start in (0, 1]
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b*G + c*G@G
        x = torch.baddbmm(x, poly, x, beta=a)  # a*X + (b*G + c*G@G) @ X
    return x.mT if tall else x


def default_ns_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where matmuls in it are native and fast (CUDA), float32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-shape learning rate (its documented `adjust_lr_fn`), kept here rather than
    imported from torch's private module, whose helpers change between releases: "original" (Keller
    Jordan's sqrt(max(1, A/B))), "match_rms_adamw" (Moonshot's 0.2 * sqrt(max(A, B)))."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class BatchedMuon(torch.optim.Muon):
    """torch.optim.Muon with Newton-Schulz batched over same-shape matrices and run in `ns_dtype`.

    The same update as torch's (momentum buffer as an EMA, Nesterov, decoupled weight decay, its
    `adjust_lr_fn`) and the same state (`momentum_buffer` per parameter), so a state_dict moves between the
    two. Only the orthogonalisation differs: one batch per shape instead of one matrix at a time, in a
    dtype the device computes fast.
    """

    def __init__(self, params: Any, *, ns_dtype: torch.dtype = torch.float32, **kwargs: Any):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        """One Muon step over every group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            momentum, lr, wd = group["momentum"], float(group["lr"]), group["weight_decay"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)  # buf = momentum*buf + (1-momentum)*grad
            updates = [g.lerp(buf, momentum) for g, buf in zip(grads, bufs)] if group["nesterov"] else bufs
            # tall matrices go in transposed, so c_fc (4C, C) and the MLP's c_proj (C, 4C) share one batch
            oriented = [u.mT if u.size(0) > u.size(1) else u for u in updates]
            by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for i, u in enumerate(oriented):
                by_shape[tuple(u.shape)].append(i)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            for part in (chunk for indices in by_shape.values() for chunk in _parts(indices, oriented)):
                # sharded (FSDP2): each matrix gathered whole, orthogonalised, and each rank keeps its own rows
                ortho = newton_schulz(
                    torch.stack([sharding.whole(oriented[i]) for i in part]),
                    steps=group["ns_steps"],
                    coefficients=group["ns_coefficients"],
                    eps=group["eps"],
                    dtype=self.ns_dtype,
                )
                for k, i in enumerate(part):
                    p = params[i]
                    o = ortho[k] if oriented[i] is updates[i] else ortho[k].mT
                    scaled = _adjusted_lr(lr, group["adjust_lr_fn"], p.shape)
                    p.add_(sharding.shard_like(o.to(p.dtype), p), alpha=-scaled)
        return loss


# Sharded, the whole matrices of one batch of Newton-Schulz live on every rank at once: at most this many bytes
# of them (float32), so that the update never holds the whole Muon part of a model that only fits sharded.
GATHER_BYTES = 256 * 2**20


def _parts(indices: list[int], updates: list[torch.Tensor]) -> list[list[int]]:
    """Same-shape `indices` in batches for Newton-Schulz: all at once unsharded (as always), a few at a time
    sharded (GATHER_BYTES)."""
    if not sharding.is_sharded(updates[indices[0]]):
        return [indices]
    size = max(1, GATHER_BYTES // (4 * updates[indices[0]].numel()))
    return [indices[i : i + size] for i in range(0, len(indices), size)]


class OptimizerPair:
    """AdamW and Muon as one optimizer: one list of param groups, one state indexed over both.

    `state_dict()["state"]` numbers AdamW's parameters first, then Muon's, the order of `param_groups`;
    `load_state_dict` splits it back, so checkpoint.optimizer_tensors / load_optimizer need no change.
    """

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Optimizer):
        self.optimizers = (adamw, muon)

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self) -> dict:
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state: dict[int, dict] = {}
        groups: list[dict] = []
        offset = 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            for index, entry in sd["state"].items():
                state[index + offset] = entry
            for group in sd["param_groups"]:
                groups.append({**group, "params": [i + offset for i in group["params"]]})
            offset += sum(len(g["params"]) for g in opt.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{len(groups)} parameter groups saved, {len(self.param_groups)} here")
        offset = 0
        start = 0
        for opt in self.optimizers:
            n_groups = len(opt.param_groups)
            n_params = sum(len(g["params"]) for g in opt.param_groups)
            own = groups[start : start + n_groups]
            opt.load_state_dict({
                "state": {i - offset: s for i, s in state_dict["state"].items() if offset <= i < offset + n_params},
                "param_groups": [{**g, "params": [i - offset for i in g["params"]]} for g in own],
            })
            offset += n_params
            start += n_groups


def decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: decay the matrices (dim >= 2), not biases and LayerNorm gains."""
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def build_optimizer(
    model: torch.nn.Module,
    *,
    kind: str,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    device: torch.device,
    muon_lr: float = 0.02,
    muon_momentum: float = MUON_MOMENTUM,
    muon_weight_decay: float = 0.0,
    ns_dtype: torch.dtype | None = None,
) -> torch.optim.Optimizer | OptimizerPair:
    """The optimizer of `model` for a run: `adamw` or `muon`; every group carries its `lr_scale` (see module).

    adamw: nanoGPT's recipe (AdamW, decay on matrices only, fused where torch has a kernel for the device).
    muon: BatchedMuon (lr `muon_lr`) on `muon_parameters`, AdamW (lr `lr`, the same betas, decay on the
    remaining matrices: the embedding / tied head) on everything else.
    """
    fused = {"fused": True} if device.type in ("cuda", "cpu") else {}
    if kind == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(decay_groups(params, weight_decay), lr=lr, betas=betas, **fused)
    if kind != "muon":
        raise ValueError(f"unknown optimizer {kind!r} (adamw or muon)")
    matrices = muon_parameters(model)
    in_muon = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    adamw = torch.optim.AdamW(decay_groups(rest, weight_decay), lr=lr, betas=betas, **fused)
    muon = BatchedMuon(
        [{"params": matrices, "lr_scale": muon_lr / lr}],
        lr=muon_lr,
        momentum=muon_momentum,
        weight_decay=muon_weight_decay,
        ns_dtype=ns_dtype if ns_dtype is not None else default_ns_dtype(device),
    )
    return OptimizerPair(adamw, muon)


def set_lr(optimizer: torch.optim.Optimizer | OptimizerPair, schedule_lr: float) -> None:
    """Give every group the schedule's learning rate at this step times its own `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = schedule_lr * group.get("lr_scale", 1.0)
