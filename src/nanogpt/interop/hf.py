"""Hugging Face GPT-2 interchange without `transformers`: weight names and layout, config.json, tokenizer files.

Our GPT is GPT-2 (model.py): the parameter names equal `GPT2LMHeadModel.save_pretrained`'s, and the four
matrices of each block (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`) are stored transposed,
because torch's Linear keeps (out, in) and Hugging Face's Conv1D (in, out). `attn.c_proj` is square, so a
missed transpose loads without any error: only logits tell. Everything here is plain safetensors and JSON,
so the runtime never needs `transformers` (the tests use it to check the folders). Reading weights back in
(`train --init-from`) is hf_import.py.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from ..config import ModelConfig, field_flag
from ..errors import UserError
from ..tokenizers import GPT2_EOT, GPT2_VOCAB_SIZE, from_meta, gpt2_vocab_and_merges

# the block matrices that Hugging Face's Conv1D stores (in, out)
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
CONV1D_MODULES = tuple(n.removesuffix(".weight") for n in CONV1D)
# our activation setting <-> Hugging Face's activation_function (GPT-2's own weights use gelu_new, the tanh
# approximation; gelu_pytorch_tanh is the same function through torch's fused kernel)
TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
FROM_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# the ModelConfig fields a GPT-2 config expresses; any other field must keep its default to be exported
GPT2_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "activation")
NANOGPT_PADDED_VOCAB = 50304  # nanoGPT rounds GPT-2's 50257 up to a multiple of 64 for speed
EOT_TEXT = "<|endoftext|>"


# ----------------------------------------------------------------------------- weights
def _linear_names(cfg: ModelConfig) -> list[str]:
    """Names of every Linear/LayerNorm weight of a GPT with this shape that has a bias in GPT-2."""
    names = []
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}."
        names += [p + s for s in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")]
    return names + ["transformer.ln_f"]


def to_hf_tensors(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our checkpoint tensors (tied head stored once) -> `GPT2LMHeadModel`'s: Conv1D matrices transposed,
    and zero biases where ours has none (Hugging Face's GPT-2 always has them)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight, which Hugging Face stores alone as well
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t.contiguous()
    if not cfg.bias:
        for name in _linear_names(cfg):
            weight = out[name + ".weight"]
            width = weight.shape[-1] if name.endswith(CONV1D_MODULES) else weight.shape[0]
            out[name + ".bias"] = torch.zeros(width, dtype=weight.dtype)
    return out



def from_hf_tensors(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """`GPT2LMHeadModel` tensors (any of Hugging Face's historical namings) -> ours, tied head stored once."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers older transformers versions saved
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # the original GPT-2 uploads name the GPT2Model's tensors alone
        out[name] = t.t().contiguous() if name.endswith(CONV1D) else t
    head = out.pop("lm_head.weight", None)
    if head is not None and "transformer.wte.weight" in out and not torch.equal(head, out["transformer.wte.weight"]):
        raise UserError(f"{where}: its lm_head is not tied to the token embeddings, which our GPT requires")
    return out


# ----------------------------------------------------------------------------- config.json
def check_exportable(cfg: ModelConfig) -> None:
    """UserError naming the first setting a GPT-2 config cannot express (one left at its default is fine)."""
    for f in dataclasses.fields(cfg):
        if f.name not in GPT2_FIELDS and getattr(cfg, f.name) != f.default:
            raise UserError(
                f"cannot export as GPT-2: {field_flag(f)} {getattr(cfg, f.name)} has no GPT-2 equivalent"
            )
    if cfg.activation not in TO_HF_ACTIVATION:
        raise UserError(f"cannot export as GPT-2: --activation {cfg.activation} has no GPT-2 equivalent")


def hf_config(cfg: ModelConfig, tokenizer_meta: dict[str, Any]) -> dict[str, Any]:
    """config.json of the `GPT2LMHeadModel` that computes what `cfg`'s GPT computes."""
    eot = end_of_text_id(tokenizer_meta)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,  # gone from GPT2Config, but llama.cpp's converter reads it (as GPT-2's own has it)
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,  # 4 * n_embd, as ours
        "activation_function": TO_HF_ACTIVATION[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": None,
        "dtype": "float32",
    }


def end_of_text_id(tokenizer_meta: dict[str, Any]) -> int | None:
    """The id of <|endoftext|>: GPT-2's, or a learned BPE's last id (prepare puts it between documents); None for
    a char vocabulary or a BPE learned before it had one. Only the model's configs name it: the tokenizer keeps
    the text "<|endoftext|>" ordinary bytes, as ours does."""
    if tokenizer_meta.get("tokenizer") == "gpt2":
        return GPT2_EOT
    if tokenizer_meta.get("tokenizer") == "bpe":
        return from_meta(tokenizer_meta).eot  # type: ignore[union-attr]
    return None


def generation_config(tokenizer_meta: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json: the end-of-text token, so that `generate` stops at it as ours does."""
    eot = end_of_text_id(tokenizer_meta)
    return {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}


def model_fields_from_hf(hf: Any, where: str) -> dict[str, Any]:
    """The ModelConfig fields of a Hugging Face GPT-2 config.json; UserError for anything our GPT cannot be."""
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else None
        raise UserError(f"{where} is not a GPT-2 model (model_type {kind!r}); --init-from takes GPT-2 weights")

    def setting(name: str, default: Any = None) -> Any:
        return hf.get(name, default)

    try:
        fields = {
            "vocab_size": int(setting("vocab_size", GPT2_VOCAB_SIZE)),
            "block_size": int(setting("n_positions", setting("n_ctx", 1024))),
            "n_layer": int(setting("n_layer", 12)),
            "n_head": int(setting("n_head", 12)),
            "n_embd": int(setting("n_embd", 768)),
        }
    except (TypeError, ValueError):
        raise UserError(f"{where}: its shape settings are not integers") from None
    activation = setting("activation_function", "gelu_new")
    if activation not in FROM_HF_ACTIVATION:
        raise UserError(f"{where}: activation_function {activation!r} is not one our GPT has (gelu, gelu_new)")
    fields.update(bias=True, activation=FROM_HF_ACTIVATION[activation])
    unsupported = [
        ("n_inner", setting("n_inner") not in (None, 4 * fields["n_embd"])),
        ("layer_norm_epsilon", setting("layer_norm_epsilon", 1e-5) != 1e-5),
        ("scale_attn_weights", setting("scale_attn_weights", True) is not True),
        ("scale_attn_by_inverse_layer_idx", setting("scale_attn_by_inverse_layer_idx", False) is not False),
        ("tie_word_embeddings", setting("tie_word_embeddings", True) is not True),
        ("add_cross_attention", setting("add_cross_attention", False) is not False),
    ]
    for name, bad in unsupported:
        if bad:
            raise UserError(f"{where}: {name} = {setting(name)!r} is a GPT-2 variant our GPT does not implement")
    check_shape(fields, where, {"block_size": "n_positions"})
    return fields


def check_shape(fields: dict[str, Any], where: str, names: dict[str, str] | None = None) -> None:
    """UserError, in the file's own names (`names`: ours -> the file's where they differ), for a shape no GPT
    has: a size not positive, heads that do not divide the width. Checked later as a ModelConfig, the line
    named flags (--head-count (3)) that the user never typed."""
    names = names or {}
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        if fields[key] <= 0:
            raise UserError(f"{where}: {names.get(key, key)} = {fields[key]} is not a positive size")
    if fields["n_embd"] % fields["n_head"]:
        raise UserError(f"{where}: n_head = {fields['n_head']} does not divide n_embd = {fields['n_embd']}, as "
                        "every GPT's heads divide its width")


# ----------------------------------------------------------------------------- tokenizer files
def _bpe_model(vocab: dict[str, int], merges: list[str]) -> dict[str, Any]:
    return {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": "",
        "end_of_word_suffix": "",
        "fuse_unk": False,
        "byte_fallback": False,
        "ignore_merges": False,
        "vocab": vocab,
        "merges": merges,
    }


def _tokenizer_json(meta: dict[str, Any]) -> dict[str, Any]:
    """A `tokenizers` tokenizer.json that gives our ids exactly.

    GPT-2: byte-level BPE with GPT-2's regex (as tiktoken's). A learned BPE: its own tokenizer.json, rebuilt
    from its checked vocabulary and merges. Char: a BPE with no merges and no pre-tokenizer splits the text
    into code points and maps each to its id; the Fuse decoder joins the pieces without the spaces the
    default decoder would put between them.
    """
    if meta.get("tokenizer") == "bpe":
        return from_meta(meta).to_meta()["tokenizer_json"]
    if meta.get("tokenizer") == "gpt2":
        vocab, merges = gpt2_vocab_and_merges()
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": GPT2_EOT, "content": EOT_TEXT, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": True, "special": True}
            ],
            "normalizer": None,
            "pre_tokenizer": byte_level,
            "post_processor": {**byte_level, "trim_offsets": False},
            "decoder": byte_level,
            "model": _bpe_model(vocab, merges),
        }
    itos = meta["itos"]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": _bpe_model({c: i for i, c in enumerate(itos)}, []),
    }


def tokenizer_files(meta: dict[str, Any], block_size: int) -> dict[str, str]:
    """File name -> text of the tokenizer files `AutoTokenizer.from_pretrained` reads for this vocabulary."""
    files = {"tokenizer.json": json.dumps(_tokenizer_json(meta), ensure_ascii=False)}
    common = {"model_max_length": block_size, "clean_up_tokenization_spaces": False}
    if meta.get("tokenizer") == "gpt2":
        vocab, merges = gpt2_vocab_and_merges()
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False)
        files["merges.txt"] = "#version: 0.2\n" + "\n".join(merges) + "\n"
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": EOT_TEXT,
                  "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, **common}
        files["special_tokens_map.json"] = json.dumps(
            {"bos_token": EOT_TEXT, "eos_token": EOT_TEXT, "unk_token": EOT_TEXT}, indent=1
        )
    else:
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **common}
    files["tokenizer_config.json"] = json.dumps(config, indent=1)
    return files
