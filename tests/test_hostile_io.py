"""Hostile inputs, round three (issue 25): weights and settings read from files, and exports that cannot be
written. Items 6 (a nanoGPT ckpt.pt whose tensors are views), 14 (a full disk under export, a damaged scaler
state, a damaged tokenizer.json or state dict) and 16 (non-finite or integer weights, a saved config with a
value no flag takes). Each is one line and exit code 1 through the real CLI, with nothing written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY, TINY_FLAGS
from safetensors.torch import load_file, save_file
from test_hostile import FILE_SIZE, assert_one_line, copy_checkpoint, edit_json, run, run_limited

from nanogpt.config import ModelConfig
from nanogpt.model import GPT
from nanogpt.train.setup import build_trainer

TINY_ARGS = dict(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=False)  # Tiny Shakespeare's 65


def _train(data: Path, out: Path, **settings) -> Path:
    """A tiny model trained on `data` into `out` and saved: its stem."""
    opts = {**TINY, "data_dir": str(data), "out_dir": str(out), **settings}
    return Path(build_trainer(opts).run(lambda event: None).stem)


@pytest.fixture(scope="module")
def char_trained(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny character-level model trained 3 steps: its stem (model_step_3)."""
    return _train(shakespeare_dir, tmp_path_factory.mktemp("hostile_io"), steps=3)


def _nanogpt_ckpt(path: Path, change=None, args: dict | None = None) -> Path:
    """A karpathy/nanoGPT ckpt.pt of a tiny GPT (random weights, nanoGPT's names and tied head), its state
    dict changed by `change`."""
    torch.manual_seed(0)
    state = dict(GPT(ModelConfig(**TINY_ARGS)).state_dict())
    if change is not None:
        change(state)
    torch.save({"model": state, "model_args": args or TINY_ARGS, "iter_num": 5}, path)
    return path


def _views_of_one_storage(state: dict) -> None:
    """Every tensor a view of the same storage: contiguous each, but together far more than the file holds."""
    storage = torch.zeros(max(t.numel() for t in state.values()))
    for name, t in state.items():
        state[name] = storage[: t.numel()].view(t.shape)


# ----------------------------------------------------------------------------- item 6: a ckpt.pt of views
def test_a_nanogpt_ckpt_is_checked_before_anything_is_copied(shakespeare_dir: Path, tmp_path: Path) -> None:
    # the file: 1,769 bytes, 26 GB once its token embeddings are copied
    torch.save({"model": {"transformer.wte.weight": torch.zeros(1).expand(50304, 131072)},
                "model_args": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)},
               tmp_path / "expanded.pt")
    cases = {
        "expanded": "transformer.wte.weight is not a plain tensor (shape (50304, 131072), strides (0, 0))",
        "shared": "its tensors claim",
        "layers": "its config says n_layer 10000000, but its weights have 2",
        "int-key": "its model holds 5: Tensor, where a state dict has a name and a tensor",
        "text": "its model holds 'transformer.ln_f.weight': str, where a state dict",
    }
    _nanogpt_ckpt(tmp_path / "shared.pt", _views_of_one_storage)
    _nanogpt_ckpt(tmp_path / "layers.pt", args={**TINY_ARGS, "n_layer": 10**7})
    _nanogpt_ckpt(tmp_path / "int-key.pt", lambda s: s.update({5: torch.zeros(3)}))
    _nanogpt_ckpt(tmp_path / "text.pt", lambda s: s.update({"transformer.ln_f.weight": "x"}))
    common = ["train", "--headless", "--steps", "1", "--data-dir", str(shakespeare_dir), "--device", "cpu"]
    results = run_limited(*(
        [*common, "--out-dir", str(tmp_path / "out"), "--init-from", str(tmp_path / f"{name}.pt")] for name in cases
    ))
    for (code, err), message in zip(results, cases.values(), strict=True):
        assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_a_whole_nanogpt_ckpt_still_starts_a_run(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    source = _nanogpt_ckpt(tmp_path / "ckpt.pt")
    code, err = run(capsys, "train", "--headless", "--steps", "1", "--data-dir", str(shakespeare_dir),
                    "--device", "cpu", "--no-compile", "--out-dir", str(tmp_path / "out"), "--init-from", str(source))
    assert code == 0, err
    assert (tmp_path / "out" / "model_step_1.safetensors").is_file()


# ----------------------------------------------------------------------------- item 14: a full disk under export


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing(char_trained: Path, tmp_path: Path) -> None:
    """Files are limited to 20,000 bytes in the child (RLIMIT_FSIZE): the weights cannot be written."""
    (hf_code, hf_err), (gguf_code, gguf_err) = run_limited(
        ["export", str(char_trained), str(tmp_path / "hf")],
        ["export", str(char_trained), str(tmp_path / "model.gguf"), "--format", "gguf"],
        limit=FILE_SIZE,
    )
    assert_one_line(hf_code, hf_err, f"cannot write {tmp_path / 'hf'}: File too large")
    assert_one_line(gguf_code, gguf_err, f"cannot write {tmp_path / 'model.gguf'}: ")
    assert os.listdir(tmp_path) == []  # no folder, no file, no temporary


@pytest.fixture(scope="module")
def float16_trained(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 2 steps in float16 (a GradScaler's state in its resume.json): its stem."""
    return _train(shakespeare_dir, tmp_path_factory.mktemp("float16"), dtype="float16", steps=2)


@pytest.mark.parametrize(
    ("scaler", "message"),
    [
        ({"scale": "abc"}, "has scale 'abc', not a positive number"),
        ({"growth_factor": None}, "has growth_factor None, not a positive number"),
        ({"scale": float("inf")}, "has scale inf, not a positive number"),
        ({"_growth_tracker": 2**40}, "has _growth_tracker 1099511627776, not a whole number >= 0"),
        ({"growth_interval": 0}, "has growth_interval 0, not a whole number >= 1"),
    ],
)
def test_a_damaged_scaler_state_is_refused(scaler: dict, message: str, float16_trained: Path, tmp_path: Path,
                                           capsys) -> None:
    stem = copy_checkpoint(float16_trained, tmp_path / "ckpt")
    edit_json(stem.with_name(stem.name + ".resume.json"), lambda state: state["scaler"].update(scaler))
    code, err = run(capsys, "train", "--headless", "--steps", "3", "--resume-training", str(stem))
    assert_one_line(code, err, "cannot be resumed: its scaler state " + message)
    assert not stem.with_name("model_step_3.safetensors").exists()


def test_a_whole_scaler_state_resumes(float16_trained: Path, tmp_path: Path, capsys) -> None:
    stem = copy_checkpoint(float16_trained, tmp_path / "ckpt")
    code, err = run(capsys, "train", "--headless", "--steps", "3", "--resume-training", str(stem))
    assert code == 0, err
    saved = json.loads(stem.with_name("model_step_3.resume.json").read_text())["scaler"]
    assert saved["growth_factor"] == 2.0 and saved["scale"] > 0


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [
        ({"model": [1]}, 'is not a tokenizer.json (it has no "model" object)'),
        ([1], 'is not a tokenizer.json (it has no "model" object)'),
        ({"model": {"type": "BPE", "vocab": {"a": 0, "b": "1"}, "merges": []}}, "its BPE vocab does not map"),
        ({"model": {"type": "BPE", "vocab": [["a", 0]], "merges": []}}, "its BPE vocab does not map"),
    ],
    ids=["model-list", "list", "string-id", "vocab-list"],
)
def test_a_damaged_tokenizer_json_beside_weights_is_one_line(
    tokenizer, message: str, char_trained: Path, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    assert run(capsys, "export", str(char_trained), str(tmp_path / "hf"))[0] == 0
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(tokenizer))
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(shakespeare_dir),
                    "--out-dir", str(tmp_path / "out"), "--init-from", str(tmp_path / "hf"))
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bpe_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained 1 step on a 300-token learned BPE: its stem."""
    from engine_fixtures import shakespeare_text

    from nanogpt.prepare import prepare

    root = tmp_path_factory.mktemp("bpe_ckpt")
    (root / "input.txt").write_text(shakespeare_text()[:40_000], encoding="utf-8")
    prepare(str(root / "input.txt"), tokenizer="bpe", vocab_size=300, out_dir=str(root / "data"), val_fraction=0.1,
            strip_gutenberg=False)
    return _train(root / "data", root / "out", steps=1)


def test_a_checkpoint_vocabulary_with_a_broken_merge_is_one_line(bpe_trained: Path, tmp_path: Path, capsys) -> None:
    """The checkpoint's own vocabulary is checked where it is read, before a resume compares it with the data's
    and before the GGUF export spells it."""
    stem = copy_checkpoint(bpe_trained, tmp_path / "ckpt")
    edit_json(stem.with_name(stem.name + ".config.json"),
              lambda m: m["tokenizer"]["tokenizer_json"]["model"]["merges"].__setitem__(0, 5))
    for command in (["train", "--headless", "--steps", "2", "--resume-training", str(stem)],
                    ["export", str(stem), str(tmp_path / "m.gguf"), "--format", "gguf"]):
        code, err = run(capsys, *command)
        assert_one_line(code, err, "merge 5 is not two tokens of the vocabulary")
    assert not (tmp_path / "m.gguf").exists() and not stem.with_name("model_step_2.safetensors").exists()


# ----------------------------------------------------------------------------- item 16: weights and settings
def _edit_tensors(path: Path, change) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt", "step": "3"})


def _poison(name: str, value: float):
    def change(tensors: dict) -> None:
        t = tensors[name].clone()
        t.view(-1)[7] = value
        tensors[name] = t
    return change


def _cast(suffix: str, dtype: torch.dtype):
    def change(tensors: dict) -> None:
        name = next(n for n in sorted(tensors) if n.endswith(suffix))
        tensors[name] = tensors[name].to(dtype)
    return change


WEIGHTS_EVERY_USE = ("generate", "export", "gguf", "resume")


@pytest.mark.parametrize(
    ("suffix", "change", "message", "uses"),
    [
        (".safetensors", _poison("transformer.h.0.mlp.c_fc.weight", float("nan")),
         "transformer.h.0.mlp.c_fc.weight holds NaN or infinite values", WEIGHTS_EVERY_USE),
        (".safetensors", _poison("transformer.ln_f.weight", float("-inf")),
         "transformer.ln_f.weight holds NaN or infinite values", WEIGHTS_EVERY_USE),
        (".safetensors", _cast("c_fc.weight", torch.uint32), "is uint32, not float32, bfloat16 or float16",
         WEIGHTS_EVERY_USE),
        (".safetensors", _cast("ln_1.weight", torch.bool), "is bool, not float32, bfloat16 or float16", ("generate",)),
        (".safetensors", _cast("wpe.weight", torch.int64), "is int64, not float32, bfloat16 or float16", ("generate",)),
        (".resume.safetensors", _cast("exp_avg_sq", torch.int64),
         "optimizer state optim.0.exp_avg_sq is int64, not float32", ("resume",)),
        (".resume.safetensors", _poison("optim.0.exp_avg", float("nan")),
         "optimizer state optim.0.exp_avg holds NaN or infinite values", ("resume",)),
    ],
    ids=["nan", "inf", "uint32", "bool", "int64", "int64-exp_avg_sq", "nan-exp_avg"],
)
def test_weights_that_are_not_finite_floats_are_refused_wherever_read(
    suffix: str, change, message: str, uses: tuple, char_trained: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(char_trained, tmp_path / "ckpt")
    _edit_tensors(stem.with_name(stem.name + suffix), change)
    commands = {
        "generate": ["generate", str(stem), "--tokens-to-generate", "5"],
        "export": ["export", str(stem), str(tmp_path / "hf")],
        "gguf": ["export", str(stem), str(tmp_path / "m.gguf"), "--format", "gguf"],
        "resume": ["train", "--headless", "--steps", "4", "--resume-training", str(stem)],
    }
    for use in uses:
        code, err = run(capsys, *commands[use])
        assert_one_line(code, err, message)
        assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert not stem.with_name("model_step_4.safetensors").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr_schedule": "weird"}, "--lr-schedule must be one of cosine, constant, wsd, got 'weird'"),
        ({"dtype": "int8"}, "--dtype must be one of auto, float32, bfloat16, float16, got 'int8'"),
        ({"device": "tpu"}, "--device must be one of auto, cpu, cuda, mps, got 'tpu'"),
        ({"steps": 0}, "--steps must be a positive integer, got 0"),
        ({"beta2": 1.5}, "--beta2 must be in [0, 1), got 1.5"),
    ],
)
def test_a_saved_config_goes_through_the_checks_of_flags(
    values: dict, message: str, char_trained: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(char_trained, tmp_path / "ckpt")
    edit_json(stem.with_name(stem.name + ".config.json"), lambda m: m["train"].update(values))
    for command in (["train", "--headless", "--steps", "4", "--resume-training", str(stem)],
                    ["generate", str(stem), "--tokens-to-generate", "5"]):
        code, err = run(capsys, *command)
        assert_one_line(code, err, "checkpoint config has invalid settings: " + message)
    assert not stem.with_name("model_step_4.safetensors").exists()
