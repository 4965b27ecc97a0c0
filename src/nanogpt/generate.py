"""Sampling from a trained GPT: the token loop behind `nanogpt generate` and the training UI's `g` key.

Stable API (engine.py imports the first two):

    generate_tokens(model, prompt_ids, n_tokens, *, temperature=1.0, top_k=None, top_p=None,
                    generator=None, slide=None) -> Iterator[int]  (defaults: config.GenerateConfig)
        Yields `n_tokens` new token ids one at a time, as they are produced. Runs in eval mode under
        torch.inference_mode (the model's train/eval mode is restored afterwards) and draws its random
        numbers from `generator` only (the global RNG when None), so a seeded generator gives the same
        tokens every time. temperature 0 is greedy (argmax, no random numbers drawn).
    start_ids(tokenizer, prompt) -> list[int]
        The prompt's ids; an empty prompt starts from "\\n" (char vocabularies) or <|endoftext|> (GPT-2).
    generate_cli(stem, settings=GenerateConfig()) -> int
        `nanogpt generate`: the prompt and the generated text on stdout, streamed; the rest on stderr.

How the context is kept (the window). The model sees at most `block_size` tokens, at positions
0..block_size-1. While the text fits, every token costs one cached single-token step (inference.py).
When the window is full, its oldest `slide` tokens are dropped at once and the remaining
`block_size - slide` tokens plus the new one are run again as a prompt (their positions have changed, and
with learned position embeddings no cached key survives a shift). `slide=1` is exactly nanoGPT's crop
(`idx[:, -block_size:]` for every token): one full-window forward per token once the text is longer than
the window, the same work as nanoGPT's sample.py. The default, `slide = block_size // 2` (the usual
"context shift" of KV-cache generators), keeps at least half the window (33-64 tokens for block 64) and
re-runs it once every `block_size // 2` tokens, so nearly every token is a cheap cached step (BENCHMARKS.md,
"Generation speed", has the speeds against nanoGPT's sample.py and what the shorter context costs).
Either way the tokens equal those of uncached generation under the same rule: full forward passes over
`ids[start:]`, where `start` advances by `slide` whenever `len(ids) - start` exceeds `block_size`
(tests/test_generate.py checks this token for token, for slide 1 and for the default).
"""

from __future__ import annotations

import codecs
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import GenerateConfig
from .data import read_vocab
from .errors import UserError
from .inference import Decoder
from .model import GPT
from .runtime import aten_kernels
from .tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer, from_meta

_DEFAULT = GenerateConfig()


def default_slide(block_size: int) -> int:
    """Tokens dropped from the window at once when it is full (see the module docstring)."""
    return max(1, block_size // 2)


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt`; an empty prompt starts from a newline (char) or <|endoftext|> (GPT-2)."""
    if prompt:
        return tokenizer.encode(prompt)
    if isinstance(tokenizer, GPT2Tokenizer):
        return [tokenizer.eot]
    return [tokenizer.stoi["\n"]] if "\n" in tokenizer.stoi else [0]


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id drawn from the logits (1, vocab) of the last position; temperature 0 is greedy."""
    if temperature == 0:
        return int(logits.argmax())
    scaled = logits.float()
    if temperature != 1.0:
        scaled = scaled / temperature
    vocab = scaled.size(-1)
    if top_k is not None and top_k < vocab:
        kth = torch.topk(scaled, top_k).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))  # ties with the k-th are kept, as nanoGPT
    probs = F.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    # Inverse-CDF draw: one uniform number against the cumulative distribution, cheaper than
    # torch.multinomial for one sample (BENCHMARKS.md); a token of probability 0 has a zero-width interval
    # and is never drawn.
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((1, 1), generator=generator, device=cdf.device).mul_(cdf[:, -1:])
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= vocab:  # u rounded up to the total, or the total is NaN (the cdf is searched past its end)
        total = cdf[0, -1]
        if not torch.isfinite(total):
            # a temperature so small that logits / temperature overflowed (inf - inf in the softmax):
            # the limit of sampling as the temperature goes to 0 is greedy
            return int(logits.argmax())
        token = int((cdf[0] < total).sum())  # the last token with a non-zero probability
    return token


def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    n_tokens: int,
    *,
    temperature: float = _DEFAULT.temperature,
    top_k: int | None = _DEFAULT.top_k,
    top_p: float | None = _DEFAULT.top_p,
    generator: torch.Generator | None = None,
    slide: int | None = _DEFAULT.window_slide,
) -> Iterator[int]:
    """Yield `n_tokens` sampled token ids after `prompt_ids`, one per step (KV cache; see the module doc)."""
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token (start_ids() gives a default start)")
    block = model.config.block_size
    settings = GenerateConfig(tokens_to_generate=n_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              window_slide=slide)
    problem = settings.problem(block)
    if problem is not None:  # a programming error here: the CLI validated the same settings as a UserError
        raise ValueError(problem)
    slide = default_slide(block) if slide is None else slide
    if n_tokens == 0:
        return
    device = model.transformer.wte.weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ids = list(prompt_ids)
            decoder = Decoder(model)
            # the prompt (cropped to the window, as nanoGPT does) in one forward pass
            with aten_kernels(device):
                logits = decoder.prefill(torch.tensor([ids[-block:]], dtype=torch.long, device=device))
            step_input = torch.empty(1, dtype=torch.long, device=device)
            for i in range(n_tokens):
                token = sample_next(logits, temperature, top_k, top_p, generator)
                yield token
                if i == n_tokens - 1:
                    break
                ids.append(token)
                with aten_kernels(device):
                    if decoder.cache.pos < block:
                        step_input.fill_(token)
                        logits = decoder.step(step_input)
                    else:  # window full: drop its oldest `slide` tokens, re-run the rest at their new positions
                        window = ids[-(block - slide + 1) :]
                        logits = decoder.prefill(torch.tensor([window], dtype=torch.long, device=device))
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- the command line
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def decode_escapes(text: str) -> str:
    r"""Turn the two-character escapes \n, \t, \r and \\ typed on a command line into the characters."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def _token_text(tokenizer: Tokenizer) -> tuple[Callable[[int], str], Callable[[], str]]:
    """(text of the next token, what is left at the end) for streaming; GPT-2 tokens may split a UTF-8
    character across tokens, so their bytes go through an incremental decoder."""
    if isinstance(tokenizer, CharTokenizer):
        itos = tokenizer.itos
        return itos.__getitem__, str
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    token_bytes = tokenizer.enc.decode_single_token_bytes
    return (lambda i: decoder.decode(token_bytes(i))), (lambda: decoder.decode(b"", final=True))


def _stream(tokens: Iterator[int], tokenizer: Tokenizer, prompt: str) -> tuple[int, float]:
    """Write the prompt, then each generated token's text as it comes, to stdout; (count, start time)."""
    next_text, rest = _token_text(tokenizer)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    last = prompt  # the last non-empty text written
    started = time.perf_counter()
    count = 0
    for token in tokens:
        text = next_text(token)
        out.write(text)
        out.flush()
        last = text or last
        count += 1
    text = rest()
    out.write(text)
    last = text or last
    # on a terminal, end the last line so that a shell prompt does not follow the text on it; pipes and
    # files get the text only
    if last and not last.endswith("\n") and out.isatty():
        out.write("\n")
    out.flush()
    return count, started


def _known_prompt(tokenizer: Tokenizer, text: str, drop: bool) -> str:
    """The prompt, refused when a character vocabulary lacks some of its characters (all named), or with
    `drop` (--drop-unknown) without them. GPT-2's BPE encodes any text."""
    missing = tokenizer.unknown(text) if isinstance(tokenizer, CharTokenizer) else []
    if not missing:
        return text
    shown = " ".join(map(repr, missing))
    if not drop:
        raise UserError(
            f"the prompt has {len(missing)} character(s) not in this model's vocabulary: {shown} "
            "(--drop-unknown leaves them out)"
        )
    print(f"note: left out of the prompt (not in the vocabulary): {shown}", file=sys.stderr)
    return "".join(c for c in text if c not in set(missing))


def generate_cli(stem: str, settings: GenerateConfig | None = None) -> int:
    """`nanogpt generate`: load checkpoint `stem`, stream prompt + generated text to stdout; returns 0."""
    from .checkpoint import load_model
    from .runtime import generation_threads, resolve_device

    s = settings if settings is not None else GenerateConfig()
    s.validate()
    dev = resolve_device(s.device)
    model, meta = load_model(stem, dev)
    s.validate(model.config.block_size)
    vocab = read_vocab(Path(s.vocab_metadata)) if s.vocab_metadata else meta["tokenizer"]
    tokenizer = from_meta(vocab)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(
            f"the vocabulary has {tokenizer.vocab_size} tokens but the model was trained on "
            f"{model.config.vocab_size}"
        )
    text = _known_prompt(tokenizer, decode_escapes(s.prompt), s.drop_unknown)
    ids = start_ids(tokenizer, text)
    seed = s.seed
    if seed == 0:
        seed = secrets.randbelow(2**31 - 1) + 1
        print(f"seed: {seed}", file=sys.stderr)
    generator = torch.Generator(device=dev).manual_seed(seed)
    n_params = model.num_params()  # the count training reports, by the same rule
    print(
        f"{stem}: {n_params / 1e6:.2f}M parameters, {tokenizer.name} vocabulary of {tokenizer.vocab_size}, "
        f"on {dev.type}",
        file=sys.stderr,
    )
    tokens = generate_tokens(model, ids, s.tokens_to_generate, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p, generator=generator, slide=s.window_slide)
    with generation_threads(dev, n_params):
        count, started = _stream(tokens, tokenizer, text)
    seconds = time.perf_counter() - started
    print(f"{count} tokens in {seconds:.2f} s ({count / max(seconds, 1e-9):.0f} tokens/s)", file=sys.stderr)
    return 0
