"""Sampling: cached generation equals uncached generation, seeds, greedy, top-k/top-p, `nanogpt generate`."""

from __future__ import annotations

import io
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanogpt import checkpoint
from nanogpt.cli import main
from nanogpt.config import GenerateConfig, ModelConfig, TrainConfig
from nanogpt.generate import (
    SAMPLE_SEPARATOR,
    decode_escapes,
    default_slide,
    generate_rows,
    generate_tokens,
    sample_next,
    start_ids,
)
from nanogpt.model import GPT
from nanogpt.tokenizers import CharTokenizer, GPT2Tokenizer

SRC = Path(__file__).resolve().parents[1] / "src"
CHARS = string.ascii_letters + " \n.,:;!?'-"


def tiny(block_size: int = 16, vocab_size: int = 37, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # larger logits than at initialisation: clear winners, so greedy has no near-ties
        model.transformer.wte.weight.mul_(5.0)
    return model.eval()


def uncached(model: GPT, prompt: list[int], n: int, slide: int, temperature: float,
             generator: torch.Generator | None = None) -> list[int]:
    """The documented window rule without a cache: a full forward over ids[start:] for every token, where
    start advances by `slide` whenever the window would exceed block_size (slide=1 is nanoGPT's crop).
    Sampling goes through the same sample_next: what differs is only how the logits are computed."""
    block = model.config.block_size
    ids, out = list(prompt), []
    start = max(0, len(ids) - block)
    with torch.no_grad():
        for _ in range(n):
            if len(ids) - start > block:
                start += slide
            logits, _ = model(torch.tensor([ids[start:]]))
            token = sample_next(logits[:, -1], temperature, generator=generator)  # the sampler under test
            ids.append(token)
            out.append(token)
    return out


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("slide", [1, 4, None])  # 1 = nanoGPT's crop, None = the default
@pytest.mark.parametrize("prompt_len", [3, 21])  # shorter and longer than the window
def test_cached_generation_equals_uncached_token_for_token(slide, prompt_len):
    model = tiny()
    prompt = torch.randint(0, 37, (prompt_len,), generator=seeded(prompt_len)).tolist()
    n = 45  # well past block_size 16: the window slides several times
    rule = default_slide(16) if slide is None else slide
    for temperature in (0.0, 1.0):
        tokens = generate_tokens(model, prompt, n, temperature=temperature, generator=seeded(9), slide=slide)
        got = list(tokens)
        expected = uncached(model, prompt, n, rule, temperature, generator=seeded(9))
        assert got == expected


def one_row_sampler(logits, temperature, top_k=None, top_p=None, generator=None) -> int:
    """The sampler as it was before batching (one row, a Python int): the reference for "today's output"."""
    if temperature == 0:
        return int(logits.argmax())
    scaled = logits.float() / temperature
    if top_k is not None and top_k < scaled.size(-1):
        scaled = scaled.masked_fill(scaled < torch.topk(scaled, top_k).values[:, -1:], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    cdf = probs.cumsum(dim=-1)
    u = torch.rand((1, 1), generator=generator).mul_(cdf[:, -1:])
    return min(int(torch.searchsorted(cdf, u, right=True)), int((cdf[0] < cdf[0, -1]).sum()))


def uncached_rows(model: GPT, prompt: list[int], n: int, rows: int, generator: torch.Generator, **kw) -> list[list]:
    """`uncached` for a batch: full forwards over every row's window, one batched draw per token."""
    from nanogpt.generate import sample_rows

    block, slide = model.config.block_size, default_slide(model.config.block_size)
    ids, start = [list(prompt) for _ in range(rows)], max(0, len(prompt) - block)
    with torch.no_grad():
        for _ in range(n):
            if len(ids[0]) - start > block:
                start += slide
            logits, _ = model(torch.tensor([r[start:] for r in ids]))
            for r, t in zip(ids, sample_rows(logits[:, -1], generator=generator, **kw).tolist()):
                r.append(t)
    return [r[len(prompt) :] for r in ids]


SAMPLERS = [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 5},
            {"temperature": 1.0, "top_p": 0.7}, {"temperature": 1.2, "top_k": 12, "top_p": 0.9}]


@pytest.mark.parametrize("kw", SAMPLERS)
def test_one_sample_is_the_output_of_the_one_row_sampler(kw):
    """The batched path with one row draws exactly what the one-row sampler drew for the same seed."""
    model = tiny()
    got = list(generate_tokens(model, [5, 6, 7], 40, generator=seeded(11), **kw))
    ids, expected = [5, 6, 7], []
    g = seeded(11)
    with torch.no_grad():
        for _ in range(40):
            start = 0 if len(ids) <= 16 else len(ids) - 16 + (-(len(ids) - 16) % 8)  # the default slide, 8
            logits, _ = model(torch.tensor([ids[start:]]))
            ids.append(one_row_sampler(logits[:, -1], generator=g, **kw))
            expected.append(ids[-1])
    assert got == expected


@pytest.mark.parametrize("kw", SAMPLERS)
def test_num_samples_rows_are_the_batched_uncached_rows(kw):
    model = tiny()
    steps = list(generate_rows(model, [3, 4], 40, num_samples=4, generator=seeded(2), **kw))
    assert len(steps) == 40 and all(len(step) == 4 for step in steps)
    rows = [[step[r] for step in steps] for r in range(4)]
    assert rows == uncached_rows(model, [3, 4], 40, 4, seeded(2), **kw)
    if kw["temperature"] > 0:
        assert len({tuple(r) for r in rows}) == 4  # four different continuations
        assert rows == [[s[r] for s in generate_rows(model, [3, 4], 40, num_samples=4, generator=seeded(2), **kw)]
                        for r in range(4)]  # the same seed, the same four


@pytest.mark.parametrize("slide", [1, None])
@pytest.mark.parametrize("rows", [1, 3])
def test_fixed_shape_step_generates_the_tokens_of_the_eager_step(slide, rows):
    """The step CUDA records as a graph, run eagerly: the same tokens, past block_size too (the window slides)."""
    model = tiny()
    for kw in SAMPLERS[:3]:
        eager = list(generate_rows(model, [9], 45, num_samples=rows, generator=seeded(1), slide=slide,
                                   captured=False, **kw))
        fixed = list(generate_rows(model, [9], 45, num_samples=rows, generator=seeded(1), slide=slide,
                                   captured=True, **kw))
        assert fixed == eager


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = tiny()
    a = list(generate_tokens(model, [1, 2], 40, generator=seeded(5)))
    b = list(generate_tokens(model, [1, 2], 40, generator=seeded(5)))
    c = list(generate_tokens(model, [1, 2], 40, generator=seeded(6)))
    assert a == b
    assert a != c


def test_temperature_zero_is_greedy_and_draws_no_random_numbers():
    model = tiny()
    g1, g2 = seeded(1), seeded(2)
    state = g1.get_state()
    a = list(generate_tokens(model, [4], 30, temperature=0, generator=g1))
    b = list(generate_tokens(model, [4], 30, temperature=0, generator=g2))
    assert a == b == uncached(model, [4], 30, default_slide(16), 0.0)
    assert torch.equal(g1.get_state(), state)


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = tiny()
    greedy = list(generate_tokens(model, [7, 8], 25, temperature=0))
    assert list(generate_tokens(model, [7, 8], 25, top_k=1, generator=seeded(3))) == greedy
    assert list(generate_tokens(model, [7, 8], 25, top_p=1e-6, generator=seeded(3))) == greedy


@pytest.mark.parametrize("temperature", [1e-45, 5e-324, 1e-38, 1e-30])
def test_a_temperature_too_small_to_divide_by_is_greedy(temperature):
    """logits / 1e-45 overflows float32 to inf, and softmax then gives NaN: that is the greedy limit."""
    logits = torch.tensor([[0.5, 3.0, -2.0, 2.9, -7.0]])
    for kwargs in ({}, {"top_k": 3}, {"top_p": 0.9}):
        assert {sample_next(logits, temperature, generator=seeded(i), **kwargs) for i in range(20)} == {1}
    model = tiny()
    greedy = list(generate_tokens(model, [7, 8], 25, temperature=0))
    assert list(generate_tokens(model, [7, 8], 25, temperature=temperature, generator=seeded(3))) == greedy


def test_top_k_and_top_p_restrict_the_candidates():
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, -1.0]])  # probabilities ~ .005 .66 .24 .09 .002
    g = seeded(0)
    assert {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(300)} == {1, 2}
    assert {sample_next(logits, 1.0, top_p=0.8, generator=g) for _ in range(300)} == {1, 2}
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g) for _ in range(50)} == {1}
    assert {sample_next(logits, 1.0, generator=g) for _ in range(2000)} >= {1, 2, 3}


def test_sampled_frequencies_follow_the_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, float("-inf")]])
    probs = torch.softmax(logits / 0.8, -1)[0]
    g, n = seeded(4), 20000
    draws = torch.tensor([sample_next(logits, 0.8, generator=g) for _ in range(n)])
    counts = torch.bincount(draws, minlength=6)
    assert counts[5] == 0  # probability 0 is never drawn
    # within 5 standard deviations of the binomial count for every token
    assert torch.all((counts - n * probs).abs() <= 5 * (n * probs * (1 - probs)).sqrt() + 1)


@pytest.mark.parametrize("n", [0, 1, 7, 50])
def test_token_count_is_respected(n):
    assert len(list(generate_tokens(tiny(), [0], n, generator=seeded(0)))) == n


def test_training_mode_is_restored_and_bad_settings_rejected():
    model = tiny().train()
    list(generate_tokens(model, [1], 5, generator=seeded(0)))
    assert model.training
    for kwargs in ({"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"slide": 17}):
        with pytest.raises(ValueError):
            list(generate_tokens(model, [1], 5, **kwargs))
    with pytest.raises(ValueError):
        list(generate_tokens(model, [], 5))


def test_start_ids_and_escapes():
    tok = CharTokenizer(CHARS)
    assert start_ids(tok, "") == [tok.stoi["\n"]]
    assert start_ids(tok, "ab") == tok.encode("ab")
    assert decode_escapes(r"a\nb\tc\\n") == "a\nb\tc\\n"


# ----------------------------------------------------------------------------- the command line
def save_checkpoint(folder: Path, tokenizer, vocab_size: int) -> Path:
    """A real checkpoint written by checkpoint.save (untrained weights are enough to test sampling)."""
    model = tiny(vocab_size=vocab_size, seed=1)
    stem = checkpoint.stem_for(folder, 0)
    checkpoint.save(stem, step=0, model=model, model_cfg=model.config, train_cfg=TrainConfig(),
                    tokenizer_meta=tokenizer.to_meta(), log=[], optimizer_tensors={}, resume_state={})
    return stem


@pytest.fixture(scope="module")
def char_stem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = CharTokenizer(CHARS)
    return save_checkpoint(tmp_path_factory.mktemp("char_ckpt"), tok, tok.vocab_size)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "nanogpt", "generate", *args]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=120)


def test_cli_stdout_is_prompt_then_generated_text(char_stem):
    r = run_cli(str(char_stem), "--tokens-to-generate", "30", "--prompt", r"To be\nor", "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("To be\nor")
    generated = r.stdout[len("To be\nor") :]
    assert len(generated) == 30 and set(generated) <= set(CHARS)  # one char per token, nothing else
    assert "parameters" in r.stderr  # the chatter goes to stderr
    # the streamed text is exactly the decoded tokens of the same seeded sampler
    model, meta = checkpoint.load_model(char_stem)
    tok = CharTokenizer(meta["tokenizer"]["itos"])
    tokens = generate_tokens(model, tok.encode("To be\nor"), 30, generator=torch.Generator().manual_seed(7))
    assert generated == tok.decode(tokens)


def test_cli_same_seed_same_text_seed_zero_random(char_stem, capsys):
    outs = []
    for seed in ("11", "11", "12", "0"):
        assert main(["generate", str(char_stem), "--tokens-to-generate", "40", "--seed", seed]) == 0
        cap = capsys.readouterr()
        outs.append(cap.out)
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert "seed: " in cap.err  # seed 0 picks one and says which


def test_cli_temperature_zero_ignores_the_seed(char_stem, capsys):
    threads = torch.get_num_threads()
    outs = []
    for seed in ("1", "2"):
        assert main(["generate", str(char_stem), "--temperature", "0", "--seed", seed, "--prompt", "ab"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0]) == 2 + GenerateConfig.tokens_to_generate  # the default count
    assert torch.get_num_threads() == threads  # the CLI's one-thread setting does not leak


def test_cli_prompt_characters_outside_vocabulary_are_all_named_and_can_be_dropped(char_stem):
    r = run_cli(str(char_stem), "--prompt", "café ☕ au lait, naïve é")
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "3 character(s) not in this model's vocabulary: 'é' '☕' 'ï'" in lines[0] and "--drop-unknown" in lines[0]
    args = ("--prompt", "café ☕ au lait", "--tokens-to-generate", "20", "--seed", "3", "--temperature", "0")
    dropped = run_cli(str(char_stem), *args, "--drop-unknown")
    assert dropped.returncode == 0, dropped.stderr
    assert "left out of the prompt (not in the vocabulary): 'é' '☕'" in dropped.stderr
    # the same text as the prompt typed without them: the prompt it printed, then greedy tokens after it
    assert dropped.stdout.startswith("caf  au lait")
    reference = run_cli(str(char_stem), *args[2:], "--prompt", "caf  au lait")
    assert reference.returncode == 0 and dropped.stdout == reference.stdout


@pytest.mark.parametrize(
    "flags",
    [["--tokens-to-generate", "-1"], ["--temperature", "-0.5"], ["--top-p", "0"], ["--top-p", "1.5"],
     ["--top-k", "0"], ["--seed", "-3"], ["--window-slide", "0"], ["--window-slide", "17"],
     ["--temperature", "nan"], ["--num-samples", "0"]],
)
def test_cli_bad_settings_are_one_line_errors(char_stem, capsys, flags):
    assert main(["generate", str(char_stem), *flags]) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and flags[0] in cap.err


def test_cli_missing_or_corrupt_checkpoint(char_stem, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "model_step_9")]) == 1
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "model_step_0"
    for suffix in (".safetensors", ".config.json"):
        data = Path(str(char_stem) + suffix).read_bytes()
        Path(str(broken) + suffix).write_bytes(data[: len(data) // 2] if suffix == ".safetensors" else data)
    assert main(["generate", str(broken)]) == 1
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1 and "corrupt" in cap.err


def test_cli_vocab_metadata_override(char_stem, tmp_path, capsys):
    model_meta = checkpoint.read_meta(char_stem)["tokenizer"]
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(model_meta), encoding="utf-8")
    args = ["generate", str(char_stem), "--tokens-to-generate", "20"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--vocab-metadata", str(vocab)]) == 0
    assert capsys.readouterr().out == plain
    vocab.write_text(json.dumps(CharTokenizer("abc").to_meta()), encoding="utf-8")
    assert main(["generate", str(char_stem), "--vocab-metadata", str(vocab)]) == 1
    assert "vocabulary" in capsys.readouterr().err


def test_cli_gpt2_streaming_decodes_like_the_whole_text(tmp_path, capsys):
    """GPT-2 tokens can split a UTF-8 character; the streamed text equals decoding all tokens at once."""
    tok = GPT2Tokenizer()
    stem = save_checkpoint(tmp_path, tok, tok.vocab_size)
    prompt = "Olá, café ☕"
    assert main(["generate", str(stem), "--tokens-to-generate", "25", "--prompt", prompt, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    model, _ = checkpoint.load_model(stem)
    tokens = list(generate_tokens(model, tok.encode(prompt), 25, generator=torch.Generator().manual_seed(3)))
    assert out == prompt + tok.decode(tokens)


def test_generate_cli_window_slide(char_stem, capsys):
    """slide=1 (nanoGPT's crop) is reachable from generate_cli; a slide beyond the block is a UserError."""
    from nanogpt.errors import UserError
    from nanogpt.generate import generate_cli

    assert generate_cli(str(char_stem), GenerateConfig(tokens_to_generate=40, temperature=0, window_slide=1)) == 0
    model, meta = checkpoint.load_model(char_stem)
    greedy = uncached(model, start_ids(CharTokenizer(meta["tokenizer"]["itos"]), ""), 40, 1, 0.0)
    assert capsys.readouterr().out == CharTokenizer(meta["tokenizer"]["itos"]).decode(greedy)
    with pytest.raises(UserError, match="slide"):
        generate_cli(str(char_stem), GenerateConfig(window_slide=17))


class Terminal(io.StringIO):
    """stdout as a terminal would be (only isatty differs from a pipe for the CLI)."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("prompt", ["ab", r"ab\n"])
@pytest.mark.parametrize("n", ["0", "12"])
def test_cli_ends_the_text_with_a_newline_on_a_terminal_only(char_stem, monkeypatch, capsys, prompt, n):
    args = ["generate", str(char_stem), "--prompt", prompt, "--tokens-to-generate", n, "--seed", "5"]
    assert main(args) == 0
    piped = capsys.readouterr().out  # what a pipe or a file gets: the text alone
    assert len(piped) == len(decode_escapes(prompt)) + int(n)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(args) == 0
    assert terminal.getvalue() == (piped if piped.endswith("\n") else piped + "\n")


def test_cli_reports_the_parameter_count_training_reports(tmp_path, capsys):
    """GPT.num_params() (without position embeddings), not every tensor: a long block makes them differ."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=len(CHARS), block_size=4096, n_layer=1, n_head=2, n_embd=32))
    stem = checkpoint.stem_for(tmp_path, 0)
    checkpoint.save(stem, step=0, model=model, model_cfg=model.config, train_cfg=TrainConfig(),
                    tokenizer_meta=CharTokenizer(CHARS).to_meta(), log=[], optimizer_tensors={}, resume_state={})
    assert main(["generate", str(stem), "--tokens-to-generate", "1"]) == 0
    err = capsys.readouterr().err
    every = sum(p.numel() for p in model.parameters())
    assert f"{model.num_params() / 1e6:.2f}M parameters" in err
    assert f"{every / 1e6:.2f}M" != f"{model.num_params() / 1e6:.2f}M"  # the test tells the two apart


def test_cli_num_samples_prints_each_sample_then_a_separator(char_stem, capsys):
    args = ["generate", str(char_stem), "--prompt", "ab", "--tokens-to-generate", "20", "--num-samples", "3"]
    assert main([*args, "--seed", "4"]) == 0
    cap = capsys.readouterr()
    samples = cap.out.split(SAMPLE_SEPARATOR + "\n")
    assert samples[-1] == "" and len(samples) == 4
    texts = [t[:-1] if len(t) == 23 else t for t in samples[:3]]  # a newline is added when the text lacks one
    assert all(t.startswith("ab") and len(t) == 22 for t in texts) and len(set(texts)) == 3
    assert "3 x 20 tokens in" in cap.err
    model, meta = checkpoint.load_model(char_stem)
    tok = CharTokenizer(meta["tokenizer"]["itos"])
    steps = list(generate_rows(model, tok.encode("ab"), 20, num_samples=3, generator=seeded(4)))
    assert texts == ["ab" + tok.decode([s[r] for s in steps]) for r in range(3)]
    assert main([*args, "--seed", "4"]) == 0
    assert capsys.readouterr().out == cap.out  # the same seed, the same three samples


def test_a_model_that_writes_only_whitespace_gets_a_hint(tmp_path, char_stem, capsys):
    """Greedy decoding of an undertrained model often prints only line breaks: generate says why (issue 34)."""
    tok = CharTokenizer(["\n", " "])  # whatever it samples is whitespace
    stem = save_checkpoint(tmp_path, tok, tok.vocab_size)
    assert main(["generate", str(stem), "--temperature", "0", "--tokens-to-generate", "20", "--prompt", " "]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "" and len(out.out) == 21
    assert "note: the model wrote only spaces and line breaks" in out.err and "greedy (--temperature 0)" in out.err
    assert main(["generate", str(stem), "--tokens-to-generate", "20", "--seed", "1", "--prompt", " "]) == 0
    err = capsys.readouterr().err
    assert "only spaces and line breaks" in err and "--temperature" not in err  # at 1, only the real fix
    assert main(["generate", str(stem), "--tokens-to-generate", "5", "--num-samples", "2", "--prompt", " "]) == 0
    assert "only spaces and line breaks" in capsys.readouterr().err
    assert main(["generate", str(char_stem), "--tokens-to-generate", "40", "--seed", "7"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() and "only spaces" not in out.err  # text: no hint
