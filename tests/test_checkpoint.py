"""checkpoint/: the five files, save -> load round trip, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY

from nanogpt import checkpoint, optim
from nanogpt.store import runs
from nanogpt.train.setup import build_trainer
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
    # no temporary files left behind; best.json names the run's best set (this one: its only evaluation)
    assert names == sorted([*(stem.name + s for s in checkpoint.SUFFIXES), "best.json"])
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
        trainer.stepper.model.eval()
        with torch.no_grad():
            expected, _ = trainer.stepper.model(idx, idx)
            got, _ = model(idx, idx)
        trainer.stepper.model.train()
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
    checkpoint.seal(tmp_path / stem.name)  # a set edited on purpose and sealed again: its contents are checked
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
    saved = checkpoint.optimizer_tensors(trainer.stepper.optimizer)
    assert any(k.endswith("exp_avg_sq") for k in saved)
    fresh = torch.optim.AdamW(optim.decay_groups(list(trainer.stepper.model.parameters()), 0.1), lr=1e-3)
    checkpoint.load_optimizer(fresh, saved)
    for key, value in checkpoint.optimizer_tensors(fresh).items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def copy_set(stem: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for suffix in checkpoint.SUFFIXES:
        (folder / (stem.name + suffix)).write_bytes(Path(str(stem) + suffix).read_bytes())
    return folder / stem.name


def test_manifest_is_written_last_and_names_every_file(trained) -> None:
    import hashlib

    _, stem = trained
    manifest = json.loads(Path(str(stem) + checkpoint.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(stem.name + s for s in checkpoint.FILES)
    for name, entry in manifest["files"].items():
        data = (stem.parent / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    mtimes = {s: Path(str(stem) + s).stat().st_mtime_ns for s in checkpoint.SUFFIXES}
    assert mtimes[checkpoint.MANIFEST] == max(mtimes.values())


def test_flipped_bytes_in_the_weights_are_refused_naming_the_file(trained, tmp_path: Path) -> None:
    """A damage that keeps the file's size and its safetensors header (a bit flipped in a tensor)."""
    _, stem = trained
    copy = copy_set(stem, tmp_path)
    weights = Path(str(copy) + ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    for read in (checkpoint.load_model, checkpoint.read):
        with pytest.raises(UserError, match=f"checkpoint weights {weights} is corrupt .*sha256"):
            read(copy)


def test_a_set_mixed_with_another_runs_file_is_refused(trained, shakespeare_dir: Path, tmp_path: Path) -> None:
    """Another run's optimizer state copied into the set: every file is whole, the set is not."""
    _, stem = trained
    other = build_trainer(
        {**TINY, "steps": 6, "seed": 2, "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path / "other")}
    )
    other_stem = Path(other.run(lambda event: None).stem)
    copy = copy_set(stem, tmp_path / "mixed")
    resume = Path(str(copy) + ".resume.safetensors")
    resume.write_bytes(Path(str(other_stem) + ".resume.safetensors").read_bytes())
    checkpoint.load_model(copy)  # generation reads the config and weights only, and they are this set's
    with pytest.raises(UserError, match=f"optimizer state {resume} is corrupt or truncated"):
        checkpoint.read(copy)


def test_a_set_without_a_manifest_is_read_as_before_manifests(trained, tmp_path: Path) -> None:
    _, stem = trained
    copy = copy_set(stem, tmp_path)
    Path(str(copy) + checkpoint.MANIFEST).unlink()
    assert checkpoint.read(copy).step == 6
    checkpoint.load_model(copy)


def test_save_never_replaces_a_checkpoint(trained) -> None:
    trainer, stem = trained
    before = {s: Path(str(stem) + s).read_bytes() for s in checkpoint.SUFFIXES}
    with pytest.raises(UserError, match="exists already"):
        checkpoint.save(
            stem,
            step=6,
            model=trainer.stepper.model,
            model_cfg=trainer.model_cfg,
            train_cfg=trainer.train_cfg,
            tokenizer_meta=trainer.tokens.meta,
            log=[],
            optimizer_tensors={},
            resume_state={},
        )
    assert {s: Path(str(stem) + s).read_bytes() for s in checkpoint.SUFFIXES} == before


def test_an_interrupted_save_leaves_the_set_whole_or_absent(trained, tmp_path: Path) -> None:
    """A Ctrl-C (KeyboardInterrupt) at any moment of a save: the files written so far are removed."""
    import random
    import signal

    trainer, _ = trained

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    rng = random.Random(0)
    outcomes = set()
    try:
        for i in range(30):
            stem = tmp_path / f"model_step_{i + 1}"
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.0001, 0.01))
            try:
                try:
                    checkpoint.save(
                        stem,
                        step=i + 1,
                        model=trainer.stepper.model,
                        model_cfg=trainer.model_cfg,
                        train_cfg=trainer.train_cfg,
                        tokenizer_meta=trainer.tokens.meta,
                        log=trainer.state.log,
                        optimizer_tensors=checkpoint.optimizer_tensors(trainer.stepper.optimizer),
                        resume_state={"batch_counter": i + 1, "seed": trainer.train_cfg.seed},
                    )
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except KeyboardInterrupt:
                pass  # during the save, or just after it
            files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(stem.name + "."))
            if files:
                assert files == sorted(stem.name + s for s in checkpoint.SUFFIXES)
                assert checkpoint.read(stem).step == i + 1
                outcomes.add("saved")
            else:
                outcomes.add("interrupted")
            # an interrupt between two bytecodes of atomic.py can leave a hidden temporary file: the next run
            # in the folder removes it (runs.py)
            runs.remove_leftovers(tmp_path)
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert "interrupted" in outcomes  # at least one save was cut short
