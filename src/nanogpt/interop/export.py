"""`nanogpt export STEM OUT_DIR`: a checkpoint as a Hugging Face GPT-2 folder.

The folder is what `GPT2LMHeadModel.save_pretrained` and a tokenizer's `save_pretrained` would write:
config.json, model.safetensors, generation_config.json, the tokenizer files and a README.md model card, so
`AutoModelForCausalLM.from_pretrained(OUT_DIR)`, `pipeline("text-generation", OUT_DIR)` and llama.cpp's
`convert_hf_to_gguf.py` take it as they take GPT-2. The folder appears whole or not at all: it is written
under a temporary name beside OUT_DIR and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .. import __version__, checkpoint
from . import hf
from ..store.atomic import temp_folder, write_failure
from ..config import ModelConfig, TrainConfig, field_flag, tokens_per_step
from ..errors import UserError
from .. import lineage
from ..tokenizers import from_meta


def export(stem: str | Path, out_dir: str | Path) -> Path:
    """Write checkpoint `stem` as a Hugging Face GPT-2 folder `out_dir` (which must not exist or be empty)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; export writes a new folder")
    stem = checkpoint.stem_of(stem)
    meta = checkpoint.read_meta(stem)
    model_cfg, train_cfg = checkpoint.configs(meta)
    hf.check_exportable(model_cfg)
    from_meta(meta["tokenizer"])  # UserError for a vocabulary the checkpoint cannot describe
    model, _ = checkpoint.load_model(stem)  # names and shapes checked against the config
    tensors = hf.to_hf_tensors(checkpoint.model_tensors(model), model_cfg)
    log_file = stem.with_name(stem.name + ".training_log.json")
    log = checkpoint.read_log(stem) if log_file.is_file() else []
    files = {
        "config.json": json.dumps(hf.hf_config(model_cfg, meta["tokenizer"]), indent=1),
        "generation_config.json": json.dumps(hf.generation_config(meta["tokenizer"]), indent=1),
        **hf.tokenizer_files(meta["tokenizer"], model_cfg.block_size),
        "README.md": model_card(
            stem, meta, model_cfg, train_cfg, log, out.name, model.num_params(), checkpoint.world_size_of(stem)
        ),
    }
    try:
        _write_folder(out, files, tensors)
    except (OSError, SafetensorError) as e:  # a full disk: safetensors says so in an error of its own
        raise UserError(f"cannot write {out}: {write_failure(e)}") from None
    return out


def _write_folder(out: Path, files: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Write the files into a temporary folder beside `out`, make them durable, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(out.parent, out.name)  # named to fit beside a long `out` (atomic._temp_path)
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})  # "pt": what transformers wants
        for name, text in files.items():
            # errors: a path in non-UTF-8 bytes (in the model card) is written as its escape (files.json_bytes)
            (tmp / name).write_text(text if text.endswith("\n") else text + "\n", "utf-8", "backslashreplace")
        mask = _umask()
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)  # the folder is meant to be shared, whatever mode mkdir gave it
        os.replace(tmp, out)  # an empty `out` is replaced; a non-empty one makes this fail, leaving it as it is
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def train_command(model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """The `nanogpt train` command with every setting that differs from the defaults (what reproduces it)."""
    words = ["nanogpt", "train"]
    for cfg in (model_cfg, train_cfg):
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get("cli") is False or value == f.default:
                continue
            flag = field_flag(f)
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag.removeprefix("--"))
            else:
                text = str(value)
                words += [flag, text if text and all(c.isalnum() or c in "-_./:" for c in text) else repr(text)]
    return " ".join(words)


def _commands(meta: dict[str, Any], model_cfg: ModelConfig, train_cfg: TrainConfig) -> str:
    """The commands that made the weights: each start of the run's lineage (a new run or --init-from, then each
    resume, dated); for a checkpoint saved before lineage was kept, the one command of its final settings."""
    history = lineage.read(meta)
    if not history:
        return train_command(model_cfg, train_cfg)
    what = {"new": "a new run", "init-from": "a new run from other weights", "resume": "resumed"}
    return "\n".join(
        f"# {e.get('date', '')}: {what.get(str(e.get('start')), 'started')} at step {e.get('at_step', 0)}\n"
        + lineage.command(e) for e in history
    )


def model_card(
    stem: Path,
    meta: dict[str, Any],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    log: list[dict[str, Any]],
    name: str,
    n_params: int,
    world_size: int = 1,
) -> str:
    """README.md of the exported folder: what the model is, what it was trained on and how, how to use it."""
    tok = meta["tokenizer"]
    vals = [e for e in log if isinstance(e.get("validation_loss"), (int, float))]
    val = f"{vals[-1]['validation_loss']:.4f} at step {vals[-1]['step']}" if vals else "not measured"
    step = meta["step"]
    per_step = tokens_per_step(model_cfg, train_cfg, world_size)
    started = f"\n| started from | `{train_cfg.init_from}` |" if train_cfg.init_from else ""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- gpt2
- nanogpt
---

# {name}

A GPT-2-style language model trained with nanogpt {__version__}, exported from
checkpoint `{stem.name}` (step {step}) as a Hugging Face GPT-2 folder.

| | |
|---|---|
| data | {_data_line(tok, train_cfg)} |
| tokenizer | {_tokenizer_line(tok, model_cfg.vocab_size)} |
| shape | {_shape_line(model_cfg, n_params)} |
| steps | {step} ({per_step:,} tokens a step) |
| validation loss | {val} |{started}

## Trained with

```bash
{_commands(meta, model_cfg, train_cfg)}
```

## Use

```python
from transformers import pipeline

generate = pipeline("text-generation", "{name}")
out = generate({json.dumps(_prompt(tok))}, max_new_tokens={max(1, model_cfg.block_size // 2)}, do_sample=True)
print(out[0]["generated_text"])
```

The model reads at most {model_cfg.block_size} tokens: keep the prompt and the new tokens within that.
{_tokenizer_note(tok)}"""


def _data_line(tok: dict[str, Any], train_cfg: TrainConfig) -> str:
    """The data a model was trained on, and its token counts when the vocabulary records them."""
    source = tok.get("source") or train_cfg.data_dir or train_cfg.training_dataset or "unknown"
    counts = ""
    if isinstance(tok.get("train_tokens"), int) and isinstance(tok.get("val_tokens"), int):
        counts = f" ({tok['train_tokens']:,} training tokens, {tok['val_tokens']:,} validation tokens)"
    return f"`{source}`{counts}"


def _tokenizer_line(tok: dict[str, Any], vocab_size: int) -> str:
    if tok.get("tokenizer") == "gpt2":
        return "GPT-2 BPE (50,257 tokens; `<|endoftext|>` = 50256)"
    if tok.get("tokenizer") == "bpe":
        return f"byte-level BPE learned from the training text, {vocab_size:,} tokens"
    return f"character level, {vocab_size} characters"


def _shape_line(model_cfg: ModelConfig, n_params: int) -> str:
    activation = {"gelu": "exact GELU", "gelu_tanh": "tanh-approximated GELU (GPT-2's)"}[model_cfg.activation]
    return (
        f"{model_cfg.n_layer} layers, {model_cfg.n_head} heads, {model_cfg.n_embd} wide, context "
        f"{model_cfg.block_size} tokens, biases {'on' if model_cfg.bias else 'off (exported as zeros)'}, "
        f"{activation}; {n_params:,} parameters"
    )


def _tokenizer_note(tok: dict[str, Any]) -> str:
    """How Hugging Face's tokenizer differs from nanogpt's."""
    if tok.get("tokenizer") == "bpe":
        return "\nThe tokenizer gives the ids nanogpt gives, for any text (every byte is a token).\n"
    if tok.get("tokenizer") == "gpt2":
        return (
            "\nOne difference from nanogpt's own tokenizer: Hugging Face's reads the text `<|endoftext|>` as the "
            "special token 50256, where `nanogpt prepare` encodes those characters as ordinary text.\n"
        )
    return (
        "\nThe tokenizer maps each character to its id exactly as nanogpt does; a character outside the "
        "vocabulary is dropped (nanogpt refuses it).\n"
    )


def _prompt(tok: dict[str, Any]) -> str:
    """A short prompt made of characters the vocabulary has (a char model knows only its own)."""
    if tok.get("tokenizer") in ("gpt2", "bpe"):  # any text encodes
        return "Once upon a time"
    chars = set(tok.get("itos") or [])
    for word in ("ROMEO:", "The ", "the ", "a"):
        if set(word) <= chars:
            return word
    return next((c for c in sorted(chars) if c.isalnum()), "")
