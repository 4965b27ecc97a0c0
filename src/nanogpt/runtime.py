"""Hardware choices: which device, which precision, whether to compile, which optimizer implementation.

Kept apart from the engine so the speed work (what pays on which CPU/GPU) lives in one place.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. UserError if the named device is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (try --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple MPS is not available on this machine (try --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """True when this CPU does bfloat16 matmuls natively (AVX-512 BF16 / AMX), not by slow emulation."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch or a build without oneDNN: be safe
        return False


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype: 'auto' is bfloat16 where the hardware does it fast, else float32."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision context for the forward pass (a no-op for float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW with decay on matrices only; the fused kernel where torch has one for the device."""
    groups = model.optimizer_groups(weight_decay)
    kwargs = {}
    if device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **kwargs)


def should_compile(requested: bool | None, device: torch.device) -> bool:
    """torch.compile where it pays: on by default on CUDA, off on CPU/MPS (measured: no gain there)."""
    if requested is not None:
        return requested
    return device.type == "cuda"
