"""`train --init-from SOURCE`: GPT-2 weights from outside, checked and fitted to the run.

SOURCE is a `save_pretrained` folder (ours or Hugging Face's), a snapshot in the Hugging Face cache found by
name (`gpt2`, `gpt2-medium`, ...; never downloaded), or a karpathy/nanoGPT `ckpt.pt` (weights only). The
names and layout they share with our GPT are hf.py's.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint
from ..config import ModelConfig, field_flag
from ..errors import UserError
from ..store.files import read_json
from ..tokenizers import GPT2_VOCAB_SIZE, bpe_model_key, from_meta
from .hf import NANOGPT_PADDED_VOCAB, from_hf_tensors, model_fields_from_hf


# ----------------------------------------------------------------------------- reading weights for --init-from
@dataclass
class Imported:
    """Weights to start a run from, in our names and layout, and the architecture they fix."""

    source: str  # where they came from, for messages
    fields: dict[str, Any]  # ModelConfig fields: vocab_size, block_size, n_layer, n_head, n_embd, bias, activation
    tensors: dict[str, torch.Tensor]  # our names, tied head stored once (as in our checkpoints)
    tokenizer: str | None  # "gpt2" when the weights expect GPT-2 BPE ids, None when only vocab_size is known
    itos: list[str] | None = None  # the characters, when the folder is a character-level export of ours
    bpe: tuple[Any, list[list[str]]] | None = None  # (vocab, merges) when the folder is a learned-BPE export of ours


def hf_cache_dirs() -> list[Path]:
    """Where the Hugging Face hub keeps its cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return [Path(os.path.expanduser(home)) / "hub"]


def find_snapshot(name: str) -> Path | None:
    """The cached snapshot folder of hub model `name` (refs/main's, else the newest one with a config.json)."""
    repos = [name] if "/" in name else [name, f"openai-community/{name}"]  # the GPT-2 uploads moved there
    for cache in hf_cache_dirs():
        for repo in repos:
            root = cache / ("models--" + repo.replace("/", "--"))
            ref = root / "refs" / "main"
            if ref.is_file():
                snap = root / "snapshots" / ref.read_text(encoding="utf-8").strip()
                if (snap / "config.json").is_file():
                    return snap
            snaps = sorted(
                (p for p in (root / "snapshots").glob("*") if (p / "config.json").is_file()),
                key=lambda p: p.stat().st_mtime,
            )
            if snaps:
                return snaps[-1]
    return None


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_source(source: str) -> Imported:
    """Read `--init-from SOURCE`: a nanoGPT ckpt.pt, a Hugging Face GPT-2 folder, or a cached hub name."""
    path = Path(os.path.expanduser(source))  # os.path leaves ~nobody as it is; pathlib raises RuntimeError
    ours = read_own_run(path)
    if ours is not None:
        return ours
    if path.is_file():
        return read_nanogpt_ckpt(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return read_hf_folder(path)
        if (path / "ckpt.pt").is_file():  # a nanoGPT out_dir
            return read_nanogpt_ckpt(path / "ckpt.pt")
        raise UserError(f"--init-from {source}: the folder has no config.json (a Hugging Face folder) or ckpt.pt")
    if _HUB_NAME.match(source) and not source.endswith((".pt", ".json", ".safetensors")):
        snap = find_snapshot(source)
        if snap is not None:
            return read_hf_folder(snap)
        cache = hf_cache_dirs()[0]
        raise UserError(
            f"--init-from {source}: no such file or folder, and not in the Hugging Face cache ({cache}); "
            f"nothing is downloaded: run `hf download {source}` on a machine with internet and copy its "
            f"models--{source.replace('/', '--')} folder into {cache} here (or set HF_HOME)"
        )
    raise UserError(f"--init-from {source}: no such file or folder")


def read_own_run(path: Path) -> Imported | None:
    """A checkpoint of ours (a stem, one of its files, or a run folder: its best by validation loss) as weights
    to start from, with its tokenizer; None when `path` is none of these."""
    from ..store import runs

    stem = checkpoint.stem_of(path)
    if path.is_dir():
        if not runs.sets_in(path).whole:
            return None
        stem = runs.pick(path, best=True)[0]
    elif not stem.with_name(stem.name + ".config.json").is_file():
        return None
    model, meta = checkpoint.load_model(stem)
    cfg, tok = model.config, meta["tokenizer"]
    fields = {k: getattr(cfg, k) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias",
                                           "activation")}
    kind = tok.get("tokenizer")
    return Imported(
        source=str(stem), fields=fields, tensors=checkpoint.model_tensors(model),
        tokenizer="gpt2" if kind == "gpt2" else None, itos=tok.get("itos") if kind == "char" else None,
        bpe=bpe_model_key(tok) if kind == "bpe" else None,
    )


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # sharded (gpt2-xl and larger exports)
        meta = checkpoint.read_json(index, "weights index")
        shards = sorted(set((meta.get("weight_map") or {}).values())) if isinstance(meta, dict) else []
        if not shards:
            raise UserError(f"weights index {index} lists no files")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(checkpoint.read_tensors(folder / shard, "model weights"))
        return tensors
    weights = folder / "model.safetensors"
    if not weights.is_file() and (folder / "pytorch_model.bin").is_file():
        raise UserError(
            f"{folder} has only pytorch_model.bin (a pickle); convert it to model.safetensors with "
            "transformers (from_pretrained then save_pretrained) and try again"
        )
    return checkpoint.read_tensors(weights, "model weights")


def read_hf_folder(folder: Path) -> Imported:
    """A `save_pretrained` GPT-2 folder (or hub snapshot): its architecture and weights in our layout."""
    where = str(folder)
    fields = model_fields_from_hf(checkpoint.read_json(folder / "config.json", "model config"), where)
    tensors = from_hf_tensors(_read_safetensors(folder), where)
    _check_tensors(tensors, fields, where)
    tokenizer = "gpt2" if fields["vocab_size"] == GPT2_VOCAB_SIZE else None
    itos = None if tokenizer else _char_vocabulary(folder)
    bpe = None if tokenizer or itos else _learned_bpe(folder)
    return Imported(source=where, fields=fields, tensors=tensors, tokenizer=tokenizer, itos=itos, bpe=bpe)


def read_nanogpt_ckpt(path: Path) -> Imported:
    """A karpathy/nanoGPT ckpt.pt, read as weights only (`weights_only=True` unpickles no code)."""
    where = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle that wants code, not a torch file at all
        raise UserError(f"{where} is not a nanoGPT checkpoint readable as weights only ({str(e)[:80]})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(
        ckpt.get("model_args"), dict
    ):
        raise UserError(f"{where} is not a nanoGPT checkpoint (it needs 'model' and 'model_args')")
    args = ckpt["model_args"]
    try:
        fields = {k: int(args[k]) for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")}
        fields.update(bias=bool(args.get("bias", True)), activation="gelu")  # nanoGPT's MLP: exact nn.GELU()
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: its model_args lack the GPT shape (vocab_size, block_size, n_layer, ...)") from None
    tensors = _plain_weights(ckpt["model"], path)
    _check_tensors(tensors, fields, where)  # before the copy below: its size is now what the file holds
    tokenizer = None
    if fields["vocab_size"] in (NANOGPT_PADDED_VOCAB, GPT2_VOCAB_SIZE):
        tokenizer = "gpt2"
        fields["vocab_size"] = GPT2_VOCAB_SIZE
        # the padding rows are never used
        tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:GPT2_VOCAB_SIZE].clone()
    return Imported(source=where, fields=fields, tensors=tensors, tokenizer=tokenizer)


def _plain_weights(model: dict[Any, Any], path: Path) -> dict[str, torch.Tensor]:
    """The weights of a nanoGPT state dict by our names (the tied head once), each a plain tensor the file holds.

    `weights_only` unpickles no code, but a tensor's shape and strides are the pickle's to say: a 1,769-byte
    file holds `torch.zeros(1).expand(50304, 131072)`, 26 GB once copied. A tensor that is not contiguous is
    refused, and so are tensors larger together than the file (views of one storage), so that no copy made
    later is larger than the file.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.items():
        if not isinstance(name, str) or not torch.is_tensor(t):
            shown = f"{repr(name)[:40]}: {type(t).__name__}"
            raise UserError(f"{path}: its model holds {shown}, where a state dict has a name and a tensor")
        name = name.removeprefix("_orig_mod.")  # torch.compile's wrapper, saved by nanoGPT as is
        if name.endswith(".attn.bias"):
            continue  # the causal-mask buffer nanoGPT keeps without flash attention (c_attn.bias is a weight)
        if t.layout != torch.strided or not t.is_contiguous():
            raise UserError(f"{path}: {name} is not a plain tensor (shape {tuple(t.shape)}, strides {t.stride()})")
        tensors[name] = t
    head = tensors.pop("lm_head.weight", None)  # tied: the token embeddings' storage
    if head is not None and "transformer.wte.weight" not in tensors:
        tensors["transformer.wte.weight"] = head
    claimed, size = sum(t.nbytes for t in tensors.values()), path.stat().st_size
    if claimed > size:
        raise UserError(f"{path}: its tensors claim {claimed:,} bytes, more than the file's {size:,} (shared views)")
    return tensors


def _check_tensors(tensors: dict[str, torch.Tensor], fields: dict[str, Any], where: str) -> None:
    """UserError unless the tensors are exactly those of a GPT with `fields`: names, shapes (the sizes `fields`
    claims first, so that the GPT built here is the tensors' size), dtypes and finite values."""
    from ..model import GPT

    found = checkpoint.sizes_of({name: tuple(t.shape) for name, t in tensors.items()})
    if found is None:
        raise UserError(f"{where}: the weights are not a GPT's (no token and position embeddings)")
    for name, value in found.items():
        if fields[name] != value:
            raise UserError(f"{where}: its config says {name} {fields[name]}, but its weights have {value}")
    cfg = ModelConfig(**{k: v for k, v in fields.items()})
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
        expected = checkpoint.model_tensors(GPT(cfg))
    problem = checkpoint.weights_mismatch(expected, tensors) or checkpoint.values_problem(tensors)
    if problem:
        raise UserError(f"{where}: {problem}")


def _char_vocabulary(folder: Path) -> list[str] | None:
    """The characters of a character-level tokenizer.json as `export` writes it (None for any other kind);
    UserError for a file that is not a tokenizer.json or whose BPE vocab has ids that are not integers."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    # a damaged file is refused, not taken for another kind: that would leave the data's vocabulary unchecked
    data = read_json(path, "tokenizer")
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise UserError(f"{path} is not a tokenizer.json (it has no \"model\" object)")
    vocab = model.get("vocab")
    if model.get("type") == "BPE" and not (isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())):
        raise UserError(f"{path}: its BPE vocab does not map each token to a whole-number id")
    if model.get("type") != "BPE" or model.get("merges"):
        return None
    if sorted(vocab.values()) != list(range(len(vocab))) or not all(len(c) == 1 for c in vocab):
        return None
    return sorted(vocab, key=vocab.__getitem__)


def _learned_bpe(folder: Path) -> tuple[Any, list[list[str]]] | None:
    """The (vocab, merges) of a byte-level BPE tokenizer.json, as `export` writes a learned BPE's (None for
    any other, or one that is not a whole BPE)."""
    try:
        data = read_json(folder / "tokenizer.json", "tokenizer")
        return bpe_model_key(from_meta({"tokenizer": "bpe", "tokenizer_json": data}).to_meta())
    except UserError:
        return None


# ----------------------------------------------------------------------------- starting a run from them
def take_architecture(model_cfg: ModelConfig, imported: Imported, overrides: dict[str, Any]) -> ModelConfig:
    """The model settings of a run started from `imported`: its shape, bias and activation, with the
    block size cropped by a smaller explicit --block-size. UserError for a flag that contradicts them."""
    fields = dict(imported.fields)
    names = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for name in ("n_layer", "n_head", "n_embd", "bias", "activation"):
        if name in overrides and overrides[name] != fields[name]:
            raise UserError(
                f"{field_flag(names[name])} {overrides[name]} conflicts with --init-from {imported.source}, "
                f"which has {fields[name]} (a model started from weights keeps their shape)"
            )
    if "block_size" in overrides:
        if overrides["block_size"] > fields["block_size"]:
            raise UserError(
                f"--block-size {overrides['block_size']} exceeds the {fields['block_size']} positions of "
                f"--init-from {imported.source}; use at most {fields['block_size']}"
            )
        fields["block_size"] = overrides["block_size"]
    cfg = dataclasses.replace(model_cfg, **fields)
    cfg.validate()
    return cfg


def check_data(imported: Imported, meta: dict[str, Any], source: str) -> None:
    """UserError unless the dataset (vocab.json `meta`) speaks the vocabulary the imported weights expect."""
    kind = meta.get("tokenizer")
    if imported.tokenizer == "gpt2" and kind != "gpt2":
        raise UserError(
            f"--init-from {imported.source} expects GPT-2 BPE tokens, but {source} is tokenized {kind}: "
            "prepare it with `nanogpt prepare FILE --tokenizer gpt2`"
        )
    if (
        meta.get("vocab_size") != imported.fields["vocab_size"]
        or (imported.itos is not None and meta.get("itos") != imported.itos)
        or (imported.bpe is not None and (kind != "bpe" or bpe_model_key(meta) != imported.bpe))
    ):
        raise UserError(
            f"the vocabulary of {source} ({meta.get('vocab_size')} {kind} tokens) is not the one of "
            f"--init-from {imported.source} ({imported.fields['vocab_size']} tokens)"
        )


def load_into(model: torch.nn.Module, imported: Imported) -> None:
    """Copy the imported weights into a freshly built GPT (position embeddings cropped to its block size)."""
    state = dict(imported.tensors)
    block = model.config.block_size
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block]
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
