"""Sampling from a trained GPT: the token loop behind `nanogpt generate` and the training UI's `g` key.

Stable API (engine.py imports the first two):

    generate_tokens(model, prompt_ids, n_tokens, *, temperature=1.0, top_k=None, top_p=None,
                    generator=None, slide=None) -> Iterator[int]
        Yields `n_tokens` new token ids one at a time, as they are produced. Runs in eval mode under
        torch.inference_mode (the model's train/eval mode is restored afterwards) and draws its random
        numbers from `generator` only (the global RNG when None), so a seeded generator gives the same
        tokens every time. temperature 0 is greedy (argmax, no random numbers drawn).
    start_ids(tokenizer, prompt) -> list[int]
        The prompt's ids; an empty prompt starts from "\\n" (char vocabularies) or <|endoftext|> (GPT-2).
    generate_cli(stem, tokens=200, temperature=1.0, top_k=None, top_p=None, seed=1337, prompt="",
                 vocab_metadata=None, device="auto", slide=None) -> int
        `nanogpt generate`: the prompt and the generated text on stdout, streamed; the rest on stderr.

How the context is kept (the window). The model sees at most `block_size` tokens, at positions
0..block_size-1. While the text fits, every token costs one cached single-token step (`GPT.decode_step`).
When the window is full, its oldest `slide` tokens are dropped at once and the remaining
`block_size - slide` tokens plus the new one are run again as a prompt (their positions have changed, and
with learned position embeddings no cached key survives a shift). `slide=1` is exactly nanoGPT's crop
(`idx[:, -block_size:]` for every token): one full-window forward per token once the text is longer than
the window, the same work as nanoGPT's sample.py. The default, `slide = block_size // 2` (the usual
"context shift" of KV-cache generators), keeps at least half the window (33-64 tokens for block 64) and
re-runs it once every `block_size // 2` tokens, so nearly every token is a cheap cached step: 500 tokens of
a cpu-small model come out ~5x faster than with nanoGPT's sample.py, where slide 1 manages ~1.2x (see
BENCHMARKS.md, "Generation speed", which also measures what the shorter context costs: nothing visible on
a trained char model, whose loss is flat beyond ~16 characters of context). Either way the tokens equal
those of uncached generation under the same rule: full forward passes over `ids[start:]`, where `start`
advances by `slide` whenever `len(ids) - start` exceeds `block_size` (tests/test_generate.py checks this
token for token, for slide 1 and for the default).
"""

from __future__ import annotations

import codecs
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import read_vocab
from .errors import UserError
from .model import GPT, KVCache
from .tokenizers import CharTokenizer, GPT2Tokenizer, Tokenizer, from_meta

# Below this many parameters a CPU decode step is a chain of tiny operators whose cost is dispatch, not
# arithmetic: extra threads only add synchronisation, and on a busy machine (OpenMP threads waiting on a
# shared core) they made a cpu-small step 3x slower. One thread then; bigger models keep torch's default.
SINGLE_THREAD_PARAMS = 5_000_000


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
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id drawn from the logits (1, vocab) of the last position."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    vocab = logits.size(-1)
    if top_k is not None and top_k < vocab:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th are kept, as nanoGPT
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    # Inverse-CDF draw: one uniform number against the cumulative distribution. It costs a third of
    # torch.multinomial for one sample (measured: ~20 us against ~40 us on CPU, a tenth of a decode step);
    # a token of probability 0 has a zero-width interval and is never drawn.
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((1, 1), generator=generator, device=cdf.device).mul_(cdf[:, -1:])
    token = int(torch.searchsorted(cdf, u, right=True))
    if token >= vocab:  # u rounded up to the total: the last token with a non-zero probability
        token = int((cdf[0] < cdf[0, -1]).sum())
    return token


def generate_tokens(
    model: GPT,
    prompt_ids: list[int],
    n_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    slide: int | None = None,
) -> Iterator[int]:
    """Yield `n_tokens` sampled token ids after `prompt_ids`, one per step (KV cache; see the module doc)."""
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token (start_ids() gives a default start)")
    if n_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"bad settings: n_tokens={n_tokens} temperature={temperature} top_k={top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    block = model.config.block_size
    slide = default_slide(block) if slide is None else slide
    if not 1 <= slide <= block:
        raise ValueError(f"slide must be in [1, block_size={block}], got {slide}")
    if n_tokens == 0:
        return
    param = model.transformer.wte.weight
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            ids = list(prompt_ids)
            cache = KVCache(model.config, 1, param.device, param.dtype)
            # the prompt (cropped to the window, as nanoGPT does) in one forward pass
            with aten_kernels(param.device):
                logits = _prefill(model, cache, ids[-block:], param.device)
            step_input = torch.empty(1, dtype=torch.long, device=param.device)
            for i in range(n_tokens):
                token = sample_next(logits, temperature, top_k, top_p, generator)
                yield token
                if i == n_tokens - 1:
                    break
                ids.append(token)
                with aten_kernels(param.device):
                    if cache.pos < block:
                        step_input.fill_(token)
                        logits = model.decode_step(step_input, cache)
                    else:  # window full: drop its oldest `slide` tokens, re-run the rest at their new positions
                        logits = _prefill(model, cache, ids[-(block - slide + 1) :], param.device)
    finally:
        model.train(was_training)


@contextmanager
def aten_kernels(device: torch.device) -> Iterator[None]:
    """On CPU, run the enclosed ops on ATen's own kernels instead of handing some of them to oneDNN.

    Why: for a contiguous float32 CPU tensor, aten::gelu (exact erf) goes to a oneDNN primitive whose
    set-up costs ~15 us forward per call whatever the size: 17 us for one 512-wide row against 4.5 us for
    ATen's own vectorised kernel (measured on a Zen 3 core, torch 2.13), i.e. GELU was 18% of a cpu-small
    decode step. Both compute the same exact-erf GELU (to float rounding); tokens are unchanged in the
    tests and in bench/generate_speed.py. Training keeps oneDNN: on its (384 x 512) activations oneDNN's
    GELU is the faster one (243 against 410 us forward).
    The switch (`torch.backends.mkldnn.enabled`) is process-wide, so it is held only around the model's
    compute and not across a `yield`; another thread computing meanwhile would at worst run ATen's kernels
    for those ops (the same results, another speed).
    """
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch._C._set_mkldnn_enabled(False)  # not the `flags()` context manager: it also resets oneDNN TF32
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(True)


def _prefill(model: GPT, cache: KVCache, ids: list[int], device: torch.device) -> torch.Tensor:
    """Reset the cache, run `ids` through the model at positions 0..len-1; logits (1, vocab) of the last."""
    cache.reset()
    logits, _ = model(torch.tensor([ids], dtype=torch.long, device=device), cache=cache)
    return logits[:, -1, :]


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


def _check_settings(
    tokens: int, temperature: float, top_k: int | None, top_p: float | None, seed: int
) -> None:
    if tokens < 0:
        raise UserError(f"--tokens-to-generate must be >= 0, got {tokens}")
    if not temperature >= 0:  # also rejects NaN
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0 (0 = random), got {seed}")


def _stream(model: GPT, ids: list[int], n_tokens: int, tokenizer: Tokenizer, prompt: str,
            generator: torch.Generator, settings: dict) -> tuple[int, float]:
    """Write the prompt, then each generated token's text as it comes, to stdout; (count, start time)."""
    next_text, rest = _token_text(tokenizer)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    started = time.perf_counter()
    count = 0
    for token in generate_tokens(model, ids, n_tokens, generator=generator, **settings):
        out.write(next_text(token))
        out.flush()
        count += 1
    out.write(rest())
    if out.isatty():  # so a shell prompt does not follow the text on its last line; pipes get the text only
        out.write("\n")
    out.flush()
    return count, started


def generate_cli(
    stem: str,
    tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 1337,
    prompt: str = "",
    vocab_metadata: str | None = None,
    device: str = "auto",
    slide: int | None = None,
) -> int:
    """`nanogpt generate`: load checkpoint `stem`, stream prompt + generated text to stdout; returns 0.

    `slide` is the window slide (None: the default; 1: nanoGPT's exact crop), see the module docstring.
    """
    from .checkpoint import load_model
    from .runtime import resolve_device

    _check_settings(tokens, temperature, top_k, top_p, seed)
    dev = resolve_device(device)
    model, meta = load_model(stem, dev)
    if slide is not None and not 1 <= slide <= model.config.block_size:
        raise UserError(f"the window slide must be in [1, block size {model.config.block_size}], got {slide}")
    tokenizer = from_meta(read_vocab(Path(vocab_metadata))) if vocab_metadata else from_meta(meta["tokenizer"])
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(
            f"the vocabulary has {tokenizer.vocab_size} tokens but the model was trained on "
            f"{model.config.vocab_size}"
        )
    text = decode_escapes(prompt)
    ids = start_ids(tokenizer, text)  # a character outside a char vocabulary: UserError naming it
    if seed == 0:
        seed = secrets.randbelow(2**31 - 1) + 1
        print(f"seed: {seed}", file=sys.stderr)
    generator = torch.Generator(device=dev).manual_seed(seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{stem}: {n_params / 1e6:.2f}M parameters, {tokenizer.name} vocabulary of {tokenizer.vocab_size}, "
        f"on {dev.type}",
        file=sys.stderr,
    )
    threads = torch.get_num_threads()
    if dev.type == "cpu" and n_params < SINGLE_THREAD_PARAMS:
        torch.set_num_threads(1)
    try:
        count, started = _stream(model, ids, tokens, tokenizer, text, generator,
                                 {"temperature": temperature, "top_k": top_k, "top_p": top_p, "slide": slide})
    finally:  # the setting is process-wide: give it back (generate_cli may be called in-process)
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    print(f"{count} tokens in {seconds:.2f} s ({count / max(seconds, 1e-9):.0f} tokens/s)", file=sys.stderr)
    return 0
