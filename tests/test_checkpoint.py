"""checkpoint.py: the five files, save -> load round trip, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY

from nanogpt import checkpoint
from nanogpt.engine import build_trainer
from nanogpt.errors import UserError


@pytest.fixture(scope="module")
def trained(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained 6 steps and saved: (trainer, stem)."""
    out = tmp_path_factory.mktemp("ckpt")
    trainer = build_trainer({**TINY, "steps": 6, "data_dir": str(shakespeare_dir), "out_dir": str(out)})
    finished = trainer.run(lambda event: None)
    assert finished.reason == "completed"
    return trainer, Path(finished.stem)


def test_checkpoint_has_its_five_files_and_nothing_half_written(trained) -> None:
    _, stem = trained
    assert stem.name == "model_step_6"
    names = sorted(p.name for p in stem.parent.iterdir())
    assert names == sorted(stem.name + s for s in checkpoint.SUFFIXES)  # no temporary files left behind
    meta = json.loads(stem.with_name(stem.name + ".config.json").read_text())
    assert meta["step"] == 6 and meta["model"]["n_embd"] == 32
    assert len(meta["tokenizer"]["itos"]) == meta["model"]["vocab_size"] == 65  # self-contained vocabulary
    log = json.loads(stem.with_name(stem.name + ".training_log.json").read_text())
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert all(e["loss"] > 0 and e["duration_ms"] > 0 for e in log)
    assert "validation_loss" in log[-1]  # evaluated at the last step


def test_round_trip_gives_identical_logits(trained) -> None:
    trainer, stem = trained
    for path in (stem, str(stem) + ".safetensors"):  # a stem or the weights file both work
        model, meta = checkpoint.load_model(path, "cpu")
        assert meta["tokenizer"]["tokenizer"] == "char"
        idx = torch.randint(0, 65, (2, 32), generator=torch.Generator().manual_seed(0))
        trainer.model.eval()
        with torch.no_grad():
            expected, _ = trainer.model(idx, idx)
            got, _ = model(idx, idx)
        trainer.model.train()
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # the tied head stays tied after loading
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_tied_weights_are_stored_once(trained) -> None:
    from safetensors import safe_open

    _, stem = trained
    with safe_open(str(stem) + ".safetensors", "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys


def test_missing_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        checkpoint.load_model(tmp_path / "model_step_1")


def test_truncated_weights_are_a_user_error(trained, tmp_path: Path) -> None:
    _, stem = trained
    for suffix in checkpoint.SUFFIXES:
        (tmp_path / (stem.name + suffix)).write_bytes(Path(str(stem) + suffix).read_bytes())
    broken = tmp_path / stem.name
    weights = Path(str(broken) + ".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint.load_model(broken)


def test_corrupt_config_is_a_user_error(trained, tmp_path: Path) -> None:
    _, stem = trained
    for suffix in checkpoint.SUFFIXES:
        (tmp_path / (stem.name + suffix)).write_bytes(Path(str(stem) + suffix).read_bytes())
    config = tmp_path / (stem.name + ".config.json")
    config.write_text(config.read_text()[:50])
    with pytest.raises(UserError, match="corrupt or truncated"):
        checkpoint.load_model(tmp_path / stem.name)


def test_weights_not_matching_the_config_are_a_user_error(trained, tmp_path: Path) -> None:
    _, stem = trained
    for suffix in checkpoint.SUFFIXES:
        (tmp_path / (stem.name + suffix)).write_bytes(Path(str(stem) + suffix).read_bytes())
    config = tmp_path / (stem.name + ".config.json")
    meta = json.loads(config.read_text())
    meta["model"]["n_embd"] = 64
    config.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="says n_embd 64, but its weights .* have 32"):
        checkpoint.load_model(tmp_path / stem.name)


def test_truncated_resume_state_is_a_user_error(trained, shakespeare_dir: Path, tmp_path: Path) -> None:
    _, stem = trained
    for suffix in checkpoint.SUFFIXES:
        (tmp_path / (stem.name + suffix)).write_bytes(Path(str(stem) + suffix).read_bytes())
    state = tmp_path / (stem.name + ".resume.safetensors")
    state.write_bytes(state.read_bytes()[:-100])
    with pytest.raises(UserError, match="optimizer state .* is corrupt or truncated"):
        build_trainer({"data_dir": str(shakespeare_dir)}, resume=str(tmp_path / stem.name))


def test_optimizer_state_round_trips(trained) -> None:
    trainer, _ = trained
    saved = checkpoint.optimizer_tensors(trainer.optimizer)
    assert any(k.endswith("exp_avg_sq") for k in saved)
    fresh = torch.optim.AdamW(trainer.model.optimizer_groups(0.1), lr=1e-3)
    checkpoint.load_optimizer(fresh, saved)
    for key, value in checkpoint.optimizer_tensors(fresh).items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
