"""The parts of a trainer that a probe builds too (plan.py's speed probe): the optimizer and the batch samplers."""

from __future__ import annotations

from typing import Any

import torch

from .. import config, data, optim
from ..model import GPT
from ..runtime import machine
from .step import Samplers


def optimizer_for(model: GPT, train_cfg: config.TrainConfig, hardware: machine.Hardware) -> torch.optim.Optimizer:
    """The run's optimizer (optim.build_optimizer) over `model`, as the settings and the hardware say."""
    return optim.build_optimizer(
        model,
        kind=train_cfg.optimizer,
        lr=train_cfg.learning_rate,
        betas=(train_cfg.beta1, train_cfg.beta2),
        weight_decay=train_cfg.weight_decay,
        device=hardware.device,
        muon_lr=train_cfg.muon_learning_rate,
        muon_momentum=train_cfg.muon_momentum,
        ns_dtype=hardware.ns_dtype,
    )


def samplers(
    tokens: data.TokenData, model_cfg: config.ModelConfig, train_cfg: config.TrainConfig, device: torch.device
) -> Samplers:
    """The training batches (each a pure function of seed and index), the validation batches (windows spread
    evenly over val.bin, data.SpreadSampler), and for a mixology dataset each source's validation batches, spread
    over its own stretch of val.bin (a source with fewer tokens than a window is left out)."""

    def spread(tokens_of: Any) -> data.SpreadSampler:
        return data.SpreadSampler(
            tokens_of, block_size=model_cfg.block_size, batch_size=train_cfg.eval_batch_size,
            windows=train_cfg.eval_iters * train_cfg.eval_batch_size, device=device, vocab_size=tokens.vocab_size,
        )

    by_source = {
        name: spread(tokens.val[start:stop])
        for name, start, stop in data.val_sources(tokens.meta, len(tokens.val))
        if stop - start > model_cfg.block_size
    }
    train = data.BatchSampler(
        tokens.train, block_size=model_cfg.block_size, batch_size=train_cfg.batch_size, seed=train_cfg.seed,
        stream=data.TRAIN_STREAM, device=device, vocab_size=tokens.vocab_size,
    )
    return Samplers(train, spread(tokens.val), by_source)
