"""Sampling from a trained GPT: the token loop behind `nanogpt generate` and the training UI's `g` key.

`generate_tokens` yields new ids one at a time (KV cache, seeded `generator` only, temperature 0 greedy);
`generate_rows` does the same for `--num-samples` rows in one batch (on CUDA one replayed CUDA graph a
token: inference.CapturedStep); `start_ids` turns a prompt into ids (an empty one starts from "\\n", or
GPT-2's <|endoftext|>); `generate_cli` is the command. When the text outgrows `block_size`, the oldest
`slide` tokens are dropped at once and the rest re-run as a prompt (learned positions: no cached key
survives a shift). `slide=1` is nanoGPT's crop; the default `block_size // 2` keeps at least half the
window and makes nearly every token a cached step (speeds: BENCHMARKS.md, "Generation speed"). Either way
the tokens equal uncached generation under the same rule (tests/test_generate.py).
"""

from __future__ import annotations

import codecs
import itertools
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import GenerateConfig
from .data import read_vocab
from .errors import UserError
from .store.files import read_bytes
from .inference import CapturedStep, Decoder
from .model import GPT
from .store.files import listing
from .runtime.fit import check_generation_fits
from .runtime.machine import aten_kernels
from .tokenizers import BpeTokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer, from_meta

_DEFAULT = GenerateConfig()


def default_slide(block_size: int) -> int:
    """Tokens dropped from the window at once when it is full (see the module docstring)."""
    return max(1, block_size // 2)


def start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt`; an empty prompt starts from <|endoftext|> (GPT-2, a BPE that has it: a document's
    start), else from a newline."""
    if prompt:
        return tokenizer.encode(prompt)
    if isinstance(tokenizer, (GPT2Tokenizer, BpeTokenizer)) and tokenizer.eot is not None:
        return [tokenizer.eot]
    if isinstance(tokenizer, BpeTokenizer):
        return tokenizer.encode("\n")
    return [tokenizer.stoi["\n"]] if "\n" in tokenizer.stoi else [0]


def sample_rows(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row (B,) drawn from logits (B, vocab), on their device; temperature 0 is greedy.

    Row by row the same draw as `sample_next`, with no host sync: the results stay on the device.
    """
    u = None if temperature == 0 else torch.rand((logits.size(0), 1), generator=generator, device=logits.device)
    return sample_with(logits, u, temperature, top_k, top_p)


def sample_with(
    logits: torch.Tensor, u: torch.Tensor | None, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """The draw of `sample_rows` given its uniform numbers u (B, 1) in [0, 1) (None for greedy): no random
    numbers, no host sync, fixed shapes, so that a CUDA graph can record it (inference.CapturedStep)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
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
    # Inverse-CDF draw: one uniform number per row against the cumulative distribution, cheaper than
    # torch.multinomial (BENCHMARKS.md); a token of probability 0 has a zero-width interval and is never drawn.
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:]
    token = torch.searchsorted(cdf, u * total, right=True).squeeze(1)
    # u rounded up to the total: the last token with a non-zero probability. A total that is not finite
    # (a temperature so small that logits / temperature overflowed, inf - inf in the softmax): the limit of
    # sampling as the temperature goes to 0, greedy.
    fallback = torch.where(total.isfinite().squeeze(1), (cdf < total).sum(dim=-1), logits.argmax(dim=-1))
    return torch.where(token >= vocab, fallback, token)


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One token id drawn from the logits (1, vocab) of the last position; temperature 0 is greedy."""
    return int(sample_rows(logits, temperature, top_k, top_p, generator)[0])


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
    rows = generate_rows(model, prompt_ids, n_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=generator, slide=slide)
    for row in rows:
        yield row[0]


def generate_rows(
    model: GPT,
    prompt_ids: list[int],
    n_tokens: int,
    *,
    num_samples: int = 1,
    temperature: float = _DEFAULT.temperature,
    top_k: int | None = _DEFAULT.top_k,
    top_p: float | None = _DEFAULT.top_p,
    generator: torch.Generator | None = None,
    slide: int | None = _DEFAULT.window_slide,
    captured: bool | None = None,
) -> Iterator[list[int]]:
    """Yield `n_tokens` steps of `num_samples` continuations of `prompt_ids` sampled in one batch: each step
    the list of the rows' new token ids. `captured`: the fixed-shape decode step (CapturedStep, a CUDA graph
    on CUDA) instead of `Decoder.step`; None takes it on CUDA only."""
    if not prompt_ids:
        raise ValueError("prompt_ids must hold at least one token (start_ids() gives a default start)")
    block = model.config.block_size
    settings = GenerateConfig(tokens_to_generate=n_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              window_slide=slide, num_samples=num_samples)
    problem = settings.problem(block)
    if problem is not None:  # a programming error here: the CLI validated the same settings as a UserError
        raise ValueError(problem)
    if n_tokens == 0:
        return
    device = model.transformer.wte.weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield from _decode(model, prompt_ids, n_tokens, settings, generator, captured, device)
    finally:
        model.train(was_training)


def _decode(model: GPT, prompt_ids: list[int], n_tokens: int, s: GenerateConfig,
            generator: torch.Generator | None, captured: bool | None, device: torch.device) -> Iterator[list[int]]:
    """The token loop of generate_rows (in eval and inference mode): prefill, then one step per token."""
    block, n = model.config.block_size, s.num_samples
    slide = default_slide(block) if s.window_slide is None else s.window_slide
    rows = [list(prompt_ids) for _ in range(n)]
    decoder = Decoder(model, batch_size=n)
    if device.type == "cuda" if captured is None else captured:  # the step and the draw as one CUDA graph
        step = CapturedStep(decoder, partial(sample_with, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p),
                            draws=s.temperature != 0)
    else:
        def step(tokens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
            return sample_rows(decoder.step(tokens), s.temperature, s.top_k, s.top_p, generator)
    # the prompt (cropped to the window, as nanoGPT does) in one forward pass
    with aten_kernels(device):
        logits = decoder.prefill(torch.tensor([r[-block:] for r in rows], dtype=torch.long, device=device))
    tokens = sample_rows(logits, s.temperature, s.top_k, s.top_p, generator)
    for i in range(n_tokens):
        new = tokens.tolist()  # the one host sync of a token: its ids are streamed now
        yield new
        if i == n_tokens - 1:
            break
        for r, t in zip(rows, new):
            r.append(t)
            if len(r) > 2 * block:  # only the window is ever re-run: a long generation keeps no more
                del r[:-block]
        with aten_kernels(device):
            if decoder.cache.pos < block:
                tokens = step(tokens, generator)
            else:  # window full: drop its oldest `slide` tokens, re-run the rest at their new positions
                window = [r[-(block - slide + 1) :] for r in rows]
                logits = decoder.prefill(torch.tensor(window, dtype=torch.long, device=device))
                tokens = sample_rows(logits, s.temperature, s.top_k, s.top_p, generator)


# ----------------------------------------------------------------------------- the command line
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def decode_escapes(text: str) -> str:
    r"""Turn the two-character escapes \n, \t, \r and \\ typed on a command line into the characters."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def _token_text(tokenizer: Tokenizer) -> tuple[Callable[[int], str], Callable[[], str]]:
    """(text of the next token, what is left at the end) for streaming; BPE tokens (GPT-2's or learned) may
    split a UTF-8 character across tokens, so their bytes go through an incremental decoder."""
    if isinstance(tokenizer, CharTokenizer):
        itos = tokenizer.itos
        return itos.__getitem__, str
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    token_bytes = tokenizer.bytes_of
    return (lambda i: decoder.decode(token_bytes(i))), (lambda: decoder.decode(b"", final=True))


def _stream(tokens: Iterator[int], tokenizer: Tokenizer, prompt: str) -> tuple[int, float, bool]:
    """Write the prompt, then each generated token's text as it comes, to stdout; (count, start time, whether
    the generated text was only whitespace)."""
    next_text, rest = _token_text(tokenizer)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    last = prompt  # the last non-empty text written
    started = time.perf_counter()
    count = 0
    blank = True
    for token in tokens:
        text = next_text(token)
        out.write(text)
        out.flush()
        last = text or last
        blank = blank and not text.strip()
        count += 1
    text = rest()
    out.write(text)
    last = text or last
    blank = blank and not text.strip()
    # on a terminal, end the last line so that a shell prompt does not follow the text on it; pipes and
    # files get the text only
    if last and not last.endswith("\n") and out.isatty():
        out.write("\n")
    out.flush()
    return count, started, blank


def _known_prompt(tokenizer: Tokenizer, text: str, drop: bool) -> str:
    """The prompt, refused when a character vocabulary lacks some of its characters (all named), or with
    `drop` (--drop-unknown) without them. GPT-2's BPE encodes any text."""
    missing = tokenizer.unknown(text) if isinstance(tokenizer, CharTokenizer) else []
    if not missing:
        return text
    shown = listing([repr(c) for c in missing], 20).replace(", ", " ")  # one line, however many there are
    if not drop:
        raise UserError(
            f"the prompt has {len(missing)} character(s) not in this model's vocabulary: {shown} "
            "(--drop-unknown leaves them out)"
        )
    print(f"note: left out of the prompt (not in the vocabulary): {shown}", file=sys.stderr)
    known = tokenizer.stoi  # a set built once: built per character, 35 K distinct unknowns took 38 s
    return "".join(c for c in text if c in known)


PROMPT_FILE_LIMIT = 16 << 20  # far beyond any context window; a prompt is cropped to the last block anyway


def _prompt_text(s: GenerateConfig) -> str:
    """The prompt: --prompt with its escapes decoded, or the text of --prompt-file as it is (not both)."""
    if s.prompt_file is None:
        return decode_escapes(s.prompt)
    if s.prompt:
        raise UserError("give --prompt or --prompt-file, not both")
    path = Path(s.prompt_file)
    if not path.is_file():
        raise UserError(f"prompt file not found: {path}" if not path.exists() else f"prompt file {path} is not a file")
    try:  # bounded by the bytes read (store/files.py)
        return read_bytes(path, "prompt file", PROMPT_FILE_LIMIT).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text (byte {e.start})") from None


def generate_cli(stem: str, settings: GenerateConfig | None = None) -> int:
    """`nanogpt generate`: load checkpoint `stem`, stream prompt + generated text to stdout; returns 0."""
    from .checkpoint import load_model
    from .runtime.machine import generation_threads, resolve_device

    s = settings if settings is not None else GenerateConfig()
    s.validate()
    prompt = _prompt_text(s)  # a missing file is said before the model is loaded
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
    text = _known_prompt(tokenizer, prompt, s.drop_unknown)
    ids = start_ids(tokenizer, text)
    check_generation_fits(model.config, model.transformer.wte.weight.element_size(), s, len(ids), dev)
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
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    if codecs.lookup(encoding).name != "utf-8":  # cli makes the stream escape what it cannot show; say so
        print(f"note: standard output is {encoding}: characters it cannot show are written as \\x.. escapes "
              "(PYTHONIOENCODING=utf-8 shows them)", file=sys.stderr)
    rows = generate_rows(model, ids, s.tokens_to_generate, num_samples=s.num_samples, temperature=s.temperature,
                         top_k=s.top_k, top_p=s.top_p, generator=generator, slide=s.window_slide)
    eot = getattr(tokenizer, "eot", None) if s.stop_at_end_of_text else None
    with generation_threads(dev, n_params):
        try:
            if s.num_samples == 1:
                tokens = (row[0] for row in rows)
                tokens = tokens if eot is None else itertools.takewhile(lambda t: t != eot, tokens)
                count, started, blank = _stream(tokens, tokenizer, text)
            else:
                count, started, blank = _print_samples(rows if eot is None else _until_all_end(rows, eot), tokenizer,
                                                       text, s.num_samples, eot)
        except BrokenPipeError:
            raise  # `| head`: the reader had what it wanted
        except OSError as e:  # nothing is read while sampling: it is stdout that failed (`> /dev/full`)
            raise UserError(f"cannot write the output: {e.strerror or e}") from None
    seconds = time.perf_counter() - started
    total = count * s.num_samples
    times = f"{s.num_samples} x {count}" if s.num_samples > 1 else f"{count}"
    print(f"{times} tokens in {seconds:.2f} s ({total / max(seconds, 1e-9):.0f} tokens/s)", file=sys.stderr)
    if blank and count:
        print(blank_hint(s.temperature), file=sys.stderr)
    return 0


def blank_hint(temperature: float) -> str:
    """What generate says when it wrote only whitespace: what usually causes it, and what to try."""
    how = "greedy (--temperature 0)" if temperature == 0 else f"at --temperature {temperature:g}"
    low = (f"; {how} it writes that token again and again: a higher --temperature (1 samples the model as "
           "trained) shows more of what it learnt") if temperature < 0.7 else ""
    return ("note: the model wrote only spaces and line breaks: an undertrained model's likeliest next token is "
            f"often a line break or a space{low}; training longer is the real fix")


SAMPLE_SEPARATOR = "-" * 15  # the line nanoGPT's sample.py prints after each sample


def _until_all_end(rows: Iterator[list[int]], eot: int) -> Iterator[list[int]]:
    """The steps of a batch of samples until every row has written <|endoftext|> (--stop-at-end-of-text)."""
    ended: set[int] = set()
    for step in rows:
        yield step
        ended.update(r for r, t in enumerate(step) if t == eot)
        if len(ended) == len(step):
            return


def _print_samples(rows: Iterator[list[int]], tokenizer: Tokenizer, prompt: str, n: int,
                   eot: int | None = None) -> tuple[int, float, bool]:
    """Sample all rows together, then print each (prompt + text, up to its <|endoftext|> when `eot` is given)
    followed by a separator; (tokens per row, start, whether every sample's text was only whitespace)."""
    started = time.perf_counter()
    steps = list(rows)
    out = sys.stdout
    blank = True
    for r in range(n):
        ids = [step[r] for step in steps]
        if eot is not None and eot in ids:
            ids = ids[: ids.index(eot)]
        blank = blank and not tokenizer.decode(ids).strip()
        text = prompt + tokenizer.decode(ids)
        out.write(text if text.endswith("\n") else text + "\n")
        out.write(SAMPLE_SEPARATOR + "\n")
    out.flush()
    return len(steps), started, blank
