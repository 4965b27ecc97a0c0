"""`nanogpt export --format gguf`: the file read back with gguf-py, and (slow) run in real llama.cpp.

The models are tiny GPTs trained by the CLI on the bundled Tiny Shakespeare, one per tokenizer kind: char
(with a few characters of two and three bytes added), GPT-2, and a byte-level BPE. The BPE checkpoint
carries the vocabulary metadata `prepare --tokenizer bpe` writes ({"tokenizer": "bpe", "vocab_size": N,
"tokenizer_json": <the `tokenizers` JSON>}); its ids are trained from bins this file encodes with that
tokenizer.
"""

from __future__ import annotations

import gzip
import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import torch

from nanogpt import checkpoint
from nanogpt.cli import main
from nanogpt.tokenizers import from_meta

gguf = pytest.importorskip("gguf")

# 2 layers, 32 wide, a 96-token window (a prompt and 50 greedy tokens fit): a second or two of training
FLAGS = ["--layer-count", "2", "--head-count", "2", "--embedding-size", "32", "--block-size", "96",
         "--batch-size", "8", "--eval-iters", "2", "--device", "cpu", "--no-compile", "--dtype", "float32",
         "--validation-interval", "0", "--learning-rate", "3e-3", "--warmup-steps", "10", "--log-interval", "100"]


UNICODE = "\nCafé — naïve, señor.\n"  # characters of two and three bytes, which the char BPE merges rebuild


def bundled_text(n_chars: int) -> str:
    data = importlib.resources.files("nanogpt") / "data" / "tinyshakespeare.txt.gz"
    return gzip.decompress(data.read_bytes()).decode("utf-8")[:n_chars]


def train(data: Path, out: Path, steps: int, *extra: str) -> Path:
    assert main(["train", "--headless", *FLAGS, "--steps", str(steps), "--data-dir", str(data), "--out-dir", str(out),
                 *extra]) == 0
    return out / f"model_step_{steps}"


def prepared(tmp: Path, text: str, tokenizer: str) -> Path:
    (tmp / "input.txt").write_text(text, encoding="utf-8")
    size = ["--vocab-size", "512"] if tokenizer == "bpe" else []
    assert main(["prepare", str(tmp / "input.txt"), "--tokenizer", tokenizer, "--out-dir", str(tmp / "data"),
                 "--no-strip-gutenberg", *size]) == 0
    return tmp / "data"


def checkpoints(root: Path, steps: int) -> dict[str, Path]:
    """kind -> checkpoint: char (bias-free, exact GELU: the defaults), gpt2 (biases, tanh GELU), bpe."""
    out = {}
    for kind in ("char", "gpt2", "bpe"):
        (root / kind).mkdir()
        text = bundled_text(30_000) if kind == "gpt2" else bundled_text(100_000) + (UNICODE if kind == "char" else "")
        # GPT-2's 50,257-token head makes its steps slow on a CPU: smaller batches
        extra = ("--bias", "--activation", "gelu_tanh", "--batch-size", "2") if kind == "gpt2" else ()
        out[kind] = train(prepared(root / kind, text, kind), root / kind / "run", steps, *extra)
    return out


@pytest.fixture(scope="module")
def stems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints after 2 steps: what the file holds, not what the model says, is checked with these."""
    return checkpoints(tmp_path_factory.mktemp("gguf"), 2)


def export(capsys, stem: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["export", str(stem), str(out), "--format", "gguf", *extra])
    printed, err = capsys.readouterr()
    return code, printed, err


def our_tensors(stem: Path) -> dict[str, torch.Tensor]:
    model, _ = checkpoint.load_model(stem)
    return {k: v.float() for k, v in model.state_dict().items()}


def field(reader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_gguf_holds_the_gpt2_graph_tokenizer_and_weights(kind, stems, tmp_path, capsys):
    stem = stems[kind]
    code, printed, err = export(capsys, stem, tmp_path / "model.gguf")
    assert code == 0, err
    assert printed.strip().endswith(str(tmp_path / "model.gguf"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]  # no temporary file left beside it
    r = gguf.GGUFReader(tmp_path / "model.gguf")
    cfg = checkpoint.configs(checkpoint.read_meta(stem))[0]
    assert field(r, "general.architecture") == "gpt2"
    assert [field(r, f"gpt2.{k}") for k in ("context_length", "embedding_length", "block_count",
                                             "feed_forward_length", "attention.head_count")] == [96, 32, 2, 128, 2]
    assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    tokens = field(r, "tokenizer.ggml.tokens")
    eos = field(r, "tokenizer.ggml.eos_token_id")
    meta = checkpoint.read_meta(stem)["tokenizer"]
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    merges = field(r, "tokenizer.ggml.merges")
    if kind == "char":  # byte-level spelling: a space is "Ġ", "é" the two bytes "Ã©"; an EOS added
        itos = meta["itos"]
        spelled = {" ": "Ġ", "\n": "Ċ", "é": "Ã©", "ï": "Ã¯", "ñ": "Ã±", "—": "âĢĶ"}
        assert tokens[: len(itos)] == [spelled.get(c, c) for c in itos]
        assert (eos, tokens[eos], len(tokens)) == (len(itos), "<|endoftext|>", len(itos) + 1)
        assert {"Ã ©", "â Ģ", "âĢ Ķ", "Ã ¯", "Ã ±"} == set(merges)  # é ï ñ and the dash, nothing else
    else:
        assert len(tokens) == cfg.vocab_size and len(merges) > 0
        # a BPE prepared since issue 30 has <|endoftext|> as its last id: that is the EOS (it was the NUL byte's)
        assert (eos, tokens[eos]) == (50256 if kind == "gpt2" else len(tokens) - 1, "<|endoftext|>")
    assert field(r, "general.sampling.top_k") == 0 and field(r, "general.sampling.temp") == 1.0
    # tensors: llama.cpp's names, every bias present, (out, in) matrices, the weights ours
    ours = our_tensors(stem)
    found = {t.name: t for t in r.tensors}
    expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(2):
        for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            expected |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
    assert set(found) == expected
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)
    pairs = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
             "blk.1.attn_qkv.weight": "transformer.h.1.attn.c_attn.weight",
             "blk.0.ffn_down.weight": "transformer.h.0.mlp.c_proj.weight",
             "blk.0.attn_norm.weight": "transformer.h.0.ln_1.weight", "output_norm.weight": "transformer.ln_f.weight"}
    for theirs, mine in pairs.items():
        data = torch.from_numpy(np.array(found[theirs].data))
        want = ours[mine]
        if theirs == "token_embd.weight" and kind == "char":  # the added EOS's row is zeros
            assert torch.equal(data[want.shape[0]:], torch.zeros(1, 32))
            data = data[: want.shape[0]]
        assert torch.equal(data, want), theirs
    assert list(found["blk.0.ffn_up.weight"].shape) == [32, 128]  # GGUF lists (in, out): a (128, 32) matrix
    bias = torch.from_numpy(np.array(found["blk.0.attn_qkv.bias"].data))
    if kind == "gpt2":
        assert torch.equal(bias, ours["transformer.h.0.attn.c_attn.bias"])
    else:  # bias-free: zeros
        assert torch.equal(bias, torch.zeros(96))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_matrices_with_float32_vectors(dtype, stems, tmp_path, capsys):
    code, _, err = export(capsys, stems["char"], tmp_path / "m.gguf", "--dtype", dtype)
    assert code == 0, err
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    qtype = {"float16": gguf.GGMLQuantizationType.F16, "bfloat16": gguf.GGMLQuantizationType.BF16}[dtype]
    for t in r.tensors:
        assert t.tensor_type == (qtype if len(t.shape) == 2 else gguf.GGMLQuantizationType.F32), t.name
    t = next(t for t in r.tensors if t.name == "blk.0.attn_qkv.weight")
    raw = np.array(t.data)
    if dtype == "bfloat16":  # gguf-py reads BF16 as its raw bytes
        data = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    else:
        data = torch.from_numpy(raw)
    want = our_tensors(stems["char"])["transformer.h.0.attn.c_attn.weight"].to(getattr(torch, dtype))
    assert torch.equal(data, want)
    assert field(r, "general.file_type") == {"float16": 1, "bfloat16": 32}[dtype]


def test_exact_gelu_is_exported_with_a_note(stems, tmp_path, capsys):
    code, printed, err = export(capsys, stems["char"], tmp_path / "m.gguf")
    assert code == 0 and err.count("\n") == 1 and "exact GELU" in err and "tanh" in err
    code, printed, err = export(capsys, stems["gpt2"], tmp_path / "m2.gguf")  # trained with tanh GELU
    assert code == 0 and err == ""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--format", "gguf", "--dtype", "int8"], "--dtype must be one of float32, float16, bfloat16 for GGUF"),
        (["--format", "onnx"], "argument --format: invalid choice: 'onnx'"),
    ],
)
def test_bad_flags_are_one_line(args, said, stems, tmp_path, capsys):
    try:
        code = main(["export", str(stems["char"]), str(tmp_path / "m.gguf"), *args])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and said in err, err
    assert list(tmp_path.iterdir()) == []


def test_dtype_is_refused_for_the_hf_folder(stems, tmp_path, capsys):
    code = main(["export", str(stems["char"]), str(tmp_path / "hf"), "--dtype", "float16"])
    _, err = capsys.readouterr()
    assert code == 1 and err == (
        "nanogpt export: error: --dtype is for --format gguf; the Hugging Face folder keeps the checkpoint's float32\n"
    )
    assert not (tmp_path / "hf").exists()


def test_an_existing_output_is_never_replaced(stems, tmp_path, capsys):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"precious")
    code, _, err = export(capsys, stems["char"], target)
    assert code == 1 and err == f"nanogpt export: error: {target} already exists; export writes a new file\n"
    assert target.read_bytes() == b"precious" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_an_ascii_char_vocabulary_gets_one_merge_that_never_applies(tmp_path, capsys):
    stem = train(prepared(tmp_path, bundled_text(20_000), "char"), tmp_path / "run", 1)
    capsys.readouterr()
    assert export(capsys, stem, tmp_path / "m.gguf")[0] == 0
    # llama.cpp refuses a BPE without merges; nothing ever makes "ĠĠ" (two spaces) for this one to join
    assert field(gguf.GGUFReader(tmp_path / "m.gguf"), "tokenizer.ggml.merges") == ["ĠĠ Ġ"]


# ----------------------------------------------------------------------------- real llama.cpp
PROMPTS = {"char": "ROMEO:\nCafé, señor", "gpt2": "ROMEO: What say'st thou, my lord?",
           "bpe": "ROMEO: What say'st thou?"}


def encode(stem: Path, text: str) -> list[int]:
    meta = checkpoint.read_meta(stem)["tokenizer"]
    return from_meta(meta).encode(text)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints after 150 steps: their greedy choices are not near-ties that llama.cpp's rounding could flip."""
    return checkpoints(tmp_path_factory.mktemp("gguf_trained"), 150)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_llama_cpp_runs_the_export_as_nanogpt_does(kind, trained, tmp_path, capsys):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install it to run)")
    from nanogpt.generate import generate_tokens

    stem = trained[kind]
    assert export(capsys, stem, tmp_path / "m.gguf")[0] == 0
    model, _ = checkpoint.load_model(stem)
    llm = llama_cpp.Llama(str(tmp_path / "m.gguf"), logits_all=True, n_ctx=96, n_threads=1, verbose=False)
    prompt = PROMPTS[kind]
    ids = encode(stem, prompt)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
    if kind == "char":  # a character outside the vocabulary is dropped (nanogpt refuses it), not a crash
        assert llm.tokenize("Café ☃!".encode(), add_bos=False, special=False) == encode(stem, "Café !")
    llm.eval(ids)
    vocab = model.config.vocab_size
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids)])[:, :vocab])
    with torch.no_grad():
        ours = model(torch.tensor([ids]), targets=torch.tensor([ids]))[0][0]
    diff = (theirs - ours).abs().max().item()
    with capsys.disabled():  # the measurement, for BENCHMARKS.md (seen with -s)
        print(f"\n{kind}: max |logit difference| on the prompt {diff:.2e}")
    assert diff < 1e-2
    # greedy: 50 tokens, llama.cpp's argmax against `nanogpt generate --temperature 0`'s
    mine = list(generate_tokens(model, ids, 50, temperature=0.0))
    greedy = []
    for _ in range(50):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        if len(greedy) < 50:  # the last one need not be run: that would be position 97 of a 96 window
            llm.eval(greedy[-1:])
    assert greedy == mine
    # the text too, from the real CLI
    assert main(["generate", str(stem), "--temperature", "0", "--tokens-to-generate", "50", "--prompt",
                 prompt.replace("\n", "\\n"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == prompt + llm.detokenize(greedy).decode("utf-8")
