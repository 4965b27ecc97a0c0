"""What a run is made of, in words both front ends show at its start (where the parameters are, how often
the run will see its text, a hint when the data is small for the model) and at its end, and its training
log split into curves. Torch-free (the UI uses it).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from .events import RunFinished, RunStarted
from .tokenizers import MIN_BPE_VOCAB


def count(n: float) -> str:
    """1234 -> '1.2k', 812345 -> '812.3k', 10_700_000 -> '10.70M'."""
    for limit, suffix, digits in ((1e9, "B", 2), (1e6, "M", 2), (1e3, "k", 1)):
        if abs(n) >= limit:
            return f"{n / limit:.{digits}f}{suffix}"
    return f"{n:.0f}"


def plural(n: int, word: str) -> str:
    """'1 step', '2 steps'."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def epochs(run: RunStarted) -> float:
    """How many times the whole run (all its steps) reads the training split."""
    return run.total_steps * run.tokens_per_step / run.train_tokens if run.train_tokens else 0.0


def embedding_params(run: RunStarted) -> int:
    """The parameters outside the blocks: the embeddings (and the final LayerNorm's few)."""
    return run.n_params - run.block_params if run.block_params else 0


def smaller_vocab(run: RunStarted) -> int:
    """A BPE vocabulary size to suggest: the largest power of two whose embedding is no larger than the blocks."""
    fit = max(MIN_BPE_VOCAB, run.block_params // max(1, int(run.model.get("n_embd", 1))))
    return 1 << (fit.bit_length() - 1)


def parameter_parts(run: RunStarted) -> str:
    """'7.22M parameters: 6.44M in embeddings, 787.5k in 4 blocks'."""
    if not run.block_params:
        return f"{count(run.n_params)} parameters"
    blocks = plural(int(run.model.get("n_layer", 0)), "block")
    return f"{count(run.n_params)} parameters: {count(embedding_params(run))} in embeddings, " \
        f"{count(run.block_params)} in {blocks}"


def times(x: float) -> str:
    """'6.7 times', or '2% of them' below once."""
    if x >= 1:
        return f"{x:.1f} times"
    return f"{x:.0%} of them" if x >= 0.01 else "under 1% of them"


def data_use(run: RunStarted) -> str:
    """'1.00M training tokens, read 1.5 times in 2,000 steps'."""
    if not run.train_tokens:
        return ""
    return f"{count(run.train_tokens)} training tokens, read {times(epochs(run))} in {plural(run.total_steps, 'step')}"


def hints(run: RunStarted, short: bool = False) -> list[str]:
    """Warnings worth reading before the run: a model mostly made of embeddings, data too small for it.

    `short`: the same in fewer words, for a screen whose header already shows the numbers.
    """
    out = []
    if short:
        if embedding_params(run) > run.n_params / 2:
            out.append(f"most parameters are embeddings: a smaller vocabulary (`prepare --tokenizer bpe --vocab-size "
                       f"{smaller_vocab(run)}`) makes a smaller, faster model")
        if run.train_tokens and run.train_tokens < run.n_params and epochs(run) >= 1:
            out.append(f"{count(run.train_tokens)} tokens are few for {count(run.n_params)} parameters: "
                       "the model may memorise them")
        if _warmup_outlasts(run):
            out.append(f"the {run.train.get('warmup_steps')}-step warm-up outlasts the run: the learning rate "
                       "never reaches its peak")
        return out
    if embedding_params(run) > run.n_params / 2:
        vocab = int(run.model.get("vocab_size", 0))
        out.append(
            f"{embedding_params(run) / run.n_params:.0%} of the parameters are embeddings (a {vocab:,}-token "
            f"vocabulary); for a small text a smaller learned vocabulary (`nanogpt prepare --tokenizer bpe "
            f"--vocab-size {smaller_vocab(run)}`) makes a smaller, faster model"
        )
    if run.train_tokens and run.train_tokens < run.n_params and epochs(run) >= 1:
        out.append(
            f"the data is small for this model: {count(run.train_tokens)} training tokens for "
            f"{count(run.n_params)} parameters, read {times(epochs(run))}; expect the model to memorise the "
            "text (watch the validation loss), or use more text or a smaller model"
        )
    if _warmup_outlasts(run):
        out.append(
            f"the warm-up ({plural(int(run.train.get('warmup_steps', 0)), 'step')}) is as long as the run or "
            f"longer: the learning rate never leaves it to reach --learning-rate; a shorter --warmup-steps "
            "reaches it"
        )
    return out


def _warmup_outlasts(run: RunStarted) -> bool:
    """The whole run is warm-up: its learning rate only climbs, and stops short of the peak."""
    warmup = int(run.train.get("warmup_steps") or 0)
    return warmup > 0 and warmup >= run.total_steps


def split_log(log: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A training log's entries with a training loss, and those with a validation loss (the two curves)."""
    return [e for e in log if "loss" in e], [e for e in log if e.get("validation_loss") is not None]


# A chart works out its axes from the spans of its values in floats: a NaN, an infinity or a value near the float
# limit (two of them overflow a span to inf) makes plotext fail, and matplotlib too, and so does a value <= 0 on a
# log axis. NaN and inf validation losses are real (a run that diverged in evaluation); other such values come from
# a log edited by hand. Both charts (the UI's, `nanogpt plot`) leave those points out.
MAX_DRAWN = 1e300


def is_drawable(value: float, log: bool = False) -> bool:
    """Whether a chart can draw `value` (see MAX_DRAWN); `log`: on a log axis."""
    return math.isfinite(value) and abs(value) <= MAX_DRAWN and (value > 0 or not log)


def drawable(steps: Sequence[float], values: Sequence[float], log: bool = False) -> tuple[list[float], list[float]]:
    """The points of a series a chart can draw: (steps, values) without the others."""
    kept = [(s, v) for s, v in zip(steps, values) if is_drawable(v, log)]
    return [s for s, _ in kept], [v for _, v in kept]


def print_end_of_run(finished: RunFinished) -> int:
    """Print how a run ended (the same headless and after the UI) and return the exit code.

    stdout's last line is the checkpoint, for scripts; what to type next goes to stderr.
    """
    if finished.reason == "error":
        print(f"nanogpt train: error: {finished.message}", file=sys.stderr, flush=True)
        return 1
    if finished.reason == "stopped":
        print(f"stopped at step {finished.step}", file=sys.stderr, flush=True)
    if finished.stem:
        print(f"checkpoint: {finished.stem}", flush=True)
        if finished.reason == "stopped":
            print(f"Resume with: nanogpt train --resume-training {finished.stem}", file=sys.stderr, flush=True)
        else:
            print(f"Generate text with: nanogpt generate {finished.stem}", file=sys.stderr, flush=True)
    return 0
