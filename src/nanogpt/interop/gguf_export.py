"""`nanogpt export STEM OUT --format gguf`: a checkpoint as one GGUF file that llama.cpp, Ollama and LM Studio run.

llama.cpp's `gpt2` architecture computes our GPT: learned positions, pre-LayerNorm blocks, one fused qkv
matrix, the LM head tied to the token embeddings. Its graph has a bias on every LayerNorm and Linear (a
bias-free model writes zeros there) and the tanh GELU (a model trained with exact GELU runs slightly off:
docs/generate-and-export.md, "Run it in llama.cpp or Ollama", says by how much). Matrices keep torch's (out,
in) layout, which is what GGUF wants (it lists the dimensions innermost first). Every vocabulary becomes
llama.cpp's `gpt2` byte-level BPE with the `gpt-2` pre-tokenizer: GPT-2's and our BPE's as they are, a
character vocabulary as one token a character, spelled in bytes, whose merges only rebuild each multi-byte
character (llama.cpp drops a character outside the vocabulary, as the Hugging Face export does). Not its
SentencePiece model: that needs 256 `<0xXX>` byte tokens with no weights (logit 0), which took a quarter of
the probability of a small model (BENCHMARKS.md). The file appears whole or not at all (atomic.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .. import __version__, checkpoint
from ..store.atomic import atomic_write, write_failure
from ..config import ModelConfig, field_flag
from ..errors import UserError
from ..tokenizers import GPT2_EOT, BpeTokenizer, GPT2Tokenizer, byte_chars, from_meta, gpt2_vocab_and_merges

ARCH = "gpt2"
DTYPES = ("float32", "float16", "bfloat16")
# the ModelConfig fields llama.cpp's gpt2 graph expresses (dropout does nothing at inference); any other
# field must keep its default to be exported
GGUF_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "activation")
EOT_TEXT = "<|endoftext|>"
# our parameter names -> llama.cpp's (per block, then the rest)
BLOCK_NAMES = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
TOP_NAMES = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm"}
# GGUF's token types (gguf.TokenType), spelled here so that reading a checkpoint does not need the package
NORMAL, CONTROL, UNUSED = 1, 3, 5


class Vocab(NamedTuple):
    """What GGUF's tokenizer.ggml.* keys say: the tokens in id order (byte-level spelling) and the merges."""

    tokens: list[str]
    types: list[int]
    merges: list[str]  # "a b", in rank order
    eos: int  # the end-of-text token (also BOS; never added to a prompt)
    n_added: int = 0  # the last tokens have no row in the model: zero rows are added for them


def export_gguf(stem: str | Path, out: str | Path, dtype: str = "float32") -> tuple[Path, list[str]]:
    """Write checkpoint `stem` as the GGUF file `out` (which must not exist); returns it and notes for the user."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} for GGUF, got {dtype!r}")
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} already exists; export writes a new file")
    stem = checkpoint.stem_of(stem)
    meta = checkpoint.read_meta(stem)
    model_cfg, _ = checkpoint.configs(meta)
    notes = check_gguf_exportable(model_cfg)
    vocab = vocabulary(meta["tokenizer"], model_cfg.vocab_size)
    model, _ = checkpoint.load_model(stem)  # names and shapes checked against the config
    tensors = gguf_tensors(checkpoint.model_tensors(model), model_cfg, len(vocab.tokens))
    try:
        atomic_write(out, lambda tmp: _write(tmp, model_cfg, vocab, tensors, dtype, f"{stem.name}"))
    except OSError as e:
        raise UserError(f"cannot write {out}: {write_failure(e)}") from None
    return out, notes


def check_gguf_exportable(cfg: ModelConfig) -> list[str]:
    """UserError naming the first setting llama.cpp's gpt2 graph cannot run; notes on what it runs approximately."""
    for f in dataclasses.fields(cfg):
        if f.name not in GGUF_FIELDS and getattr(cfg, f.name) != f.default:
            raise UserError(
                f"cannot export as GGUF: {field_flag(f)} {getattr(cfg, f.name)} has no counterpart in llama.cpp's "
                "gpt2 architecture (the only one whose graph is our GPT)"
            )
    if cfg.activation == "gelu":
        return [
            "note: this model was trained with exact GELU; llama.cpp's gpt2 graph computes the tanh approximation, "
            "so its logits differ slightly from nanogpt's "
            "(docs/generate-and-export.md: 'Run it in llama.cpp or Ollama')"
        ]
    return []


# ----------------------------------------------------------------------------- tokenizers
def vocabulary(meta: dict[str, Any], n_rows: int) -> Vocab:
    """The GGUF vocabulary of a checkpoint's tokenizer metadata, for a model with `n_rows` token embeddings."""
    tokenizer = from_meta(meta)  # UserError for a vocabulary that is not whole (a merge that is not two tokens)
    if isinstance(tokenizer, BpeTokenizer):
        vocab = _bpe_vocab(meta["tokenizer_json"])
    elif isinstance(tokenizer, GPT2Tokenizer):
        vocab = _gpt2_vocab()
    else:
        vocab = _char_vocab(tokenizer.itos)
    n_real = len(vocab.tokens) - vocab.n_added
    if n_real > n_rows:
        raise UserError(f"the vocabulary has {n_real} tokens but the model only {n_rows} token embeddings")
    # rows past the vocabulary (a padded embedding): tokens that no text encodes to
    pad = [f"<|unused_{i}|>" for i in range(n_real, n_rows)]
    return vocab._replace(
        tokens=vocab.tokens[:n_real] + pad + vocab.tokens[n_real:],
        types=vocab.types[:n_real] + [UNUSED] * len(pad) + vocab.types[n_real:],
        eos=vocab.eos + len(pad) if vocab.eos >= n_real else vocab.eos,
    )


def _char_vocab(itos: list[str]) -> Vocab:
    """One token a character: BPE merges that only rebuild each multi-byte character from its bytes (a merge
    joins a character's leading bytes to its next one, so it never joins two characters), and an appended
    <|endoftext|>: llama.cpp needs an EOS, and its default (token 11) would stop generation at a character."""
    chars = byte_chars()
    spelled = ["".join(chars[b] for b in c.encode("utf-8")) for c in itos]
    merges = list(dict.fromkeys(f"{s[:k]} {s[k]}" for s in spelled for k in range(1, len(s))))
    # an ASCII vocabulary needs no merge, but llama.cpp refuses a BPE without: one that cannot apply (no
    # merge makes "ĠĠ", two spaces)
    merges = merges or [f"{chars[32]}{chars[32]} {chars[32]}"]
    return Vocab(spelled + [EOT_TEXT], [NORMAL] * len(itos) + [CONTROL], merges, len(itos), n_added=1)


def _gpt2_vocab() -> Vocab:
    vocab, merges = gpt2_vocab_and_merges()
    tokens = _in_id_order(vocab, "GPT-2's encoder.json")
    types = [NORMAL] * len(tokens)
    types[GPT2_EOT] = CONTROL
    return Vocab(tokens, types, merges, GPT2_EOT)


def _bpe_vocab(data: Any) -> Vocab:
    """Our byte-level BPE (its `tokenizers` JSON): the model's vocab and merges, added tokens as control tokens."""
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict) or not isinstance(
        model.get("merges"), list
    ):
        raise UserError("vocabulary metadata for a bpe tokenizer has no 'tokenizer_json' with a BPE model")
    vocab = dict(model["vocab"])
    if not all(isinstance(t, str) and type(i) is int for t, i in vocab.items()):
        raise UserError("vocabulary metadata for a bpe tokenizer: its vocab does not map token strings to ids")
    special = set()
    for added in data.get("added_tokens") or []:
        if isinstance(added, dict) and isinstance(added.get("content"), str) and isinstance(added.get("id"), int):
            vocab[added["content"]] = added["id"]
            special.add(added["id"])
    tokens = _in_id_order(vocab, "the bpe vocabulary")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # "a b" or ["a", "b"]
    if not merges:  # the GGUF writer drops an empty array, and llama.cpp refuses a BPE without merges
        raise UserError("cannot export as GGUF: the bpe vocabulary has no merges, which llama.cpp requires")
    types = [CONTROL if i in special else NORMAL for i in range(len(tokens))]
    # GPT-2's end-of-text token if the vocabulary has one; else the NUL byte's token ("Ā" in byte-level
    # spelling), which text never holds and training taught the model never to predict: llama.cpp needs an
    # EOS, and its default (token 11) would stop generation at a real token
    eos = vocab.get(EOT_TEXT, vocab.get(byte_chars()[0]))
    if eos is None:
        raise UserError("cannot export as GGUF: the bpe vocabulary has no token for the byte 0x00")
    return Vocab(tokens, types, merges, eos)


def _in_id_order(vocab: dict[str, int], what: str) -> list[str]:
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise UserError(f"cannot export as GGUF: the ids of {what} are not 0..{len(tokens) - 1} without gaps")
    return tokens


# ----------------------------------------------------------------------------- tensors
def gguf_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig, n_tokens: int) -> dict[str, torch.Tensor]:
    """Our checkpoint tensors (tied head stored once) under llama.cpp's names, float32: zero biases where ours
    has none, and zero token embeddings for tokens past the model's (the EOS added to a char vocabulary)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp uses token_embd when the file has no `output`
        module, _, kind = name.rpartition(".")
        if module.startswith("transformer.h."):
            layer, _, part = module.removeprefix("transformer.h.").partition(".")
            new = f"blk.{layer}.{BLOCK_NAMES[part]}"
        else:
            new = TOP_NAMES[module]
        out[f"{new}.{kind}"] = t.detach().to("cpu", torch.float32).contiguous()
    wte = out["token_embd.weight"]
    if n_tokens > wte.shape[0]:
        out["token_embd.weight"] = torch.cat([wte, wte.new_zeros(n_tokens - wte.shape[0], wte.shape[1])])
    for name in [n for n in out if n.endswith(".weight") and not n.endswith("_embd.weight")]:
        bias = name.removesuffix(".weight") + ".bias"
        if bias not in out:
            out[bias] = torch.zeros(out[name].shape[0])  # (out, in) weights: one bias per output
    return out


def _array(t: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """(numpy data, GGUF raw type or None): vectors stay float32, as llama.cpp's own converter keeps them."""
    from gguf import GGMLQuantizationType

    if t.dim() == 1 or dtype == "float32":
        return t.numpy(), None
    if dtype == "float16":
        return t.to(torch.float16).numpy(), None
    # numpy has no bfloat16: the raw 16-bit patterns, with the type named
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16), GGMLQuantizationType.BF16


def _write(path: Path, cfg: ModelConfig, vocab: Vocab, tensors: dict[str, torch.Tensor], dtype: str,
           name: str) -> None:
    """The GGUF file itself: architecture, shape, tokenizer and sampling metadata, then the tensors."""
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the package gguf: pip install 'gguf>=0.17,<1'") from None
    w = gguf.GGUFWriter(path, ARCH)
    w.add_name(name)
    w.add_description(f"GPT-2-style model trained with nanogpt {__version__}")
    w.add_file_type({"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
                     "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(1e-5)
    w.add_vocab_size(len(vocab.tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # GPT-2's regex, which our BPE uses too; without it llama.cpp warns
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.eos)
    w.add_eos_token_id(vocab.eos)
    w.add_add_bos_token(False)  # we never start a prompt with a special token
    w.add_add_eos_token(False)
    # nanogpt generate's defaults, which llama.cpp's tools read when the user names none (top-k 0 is off)
    w.add_sampling_temp(1.0)
    w.add_sampling_top_k(0)
    w.add_sampling_top_p(1.0)
    w.add_sampling_min_p(0.0)
    w.add_sampling_penalty_repeat(1.0)
    for tname, t in tensors.items():
        data, raw = _array(t, dtype)
        w.add_tensor(tname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
