"""train/: exact resume, settings resolution, the run loop and its commands, on real tiny training runs."""

from __future__ import annotations

import json
import queue
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import TINY, TINY_FLAGS, gutenberg_book, shakespeare_text

from nanogpt import checkpoint, data, presets
from nanogpt.train.readback import LossReadback
from nanogpt.train.setup import build_trainer
from nanogpt.errors import UserError
from nanogpt.tokenizers import default_bpe_vocab_size, from_meta
from nanogpt.events import (
    EvalDone,
    Pause,
    Paused,
    Resume,
    Resumed,
    RunFinished,
    RunStarted,
    Sample,
    Sampled,
    Saved,
    StepDone,
    Stop,
)


def settings(data_dir: Path, out: Path, **kw) -> dict:
    return {**TINY, "data_dir": str(data_dir), "out_dir": str(out), **kw}


def run_collect(trainer, commands=None, start_paused=False, on_event=None) -> list:
    events: list = []

    def emit(event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    trainer.run(emit, commands, start_paused)
    return events


def losses(events: list) -> list[float]:
    return [e.loss for e in events if isinstance(e, StepDone)]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume_with_dropout_and_accumulation(shakespeare_dir: Path, tmp_path: Path, optimizer: str) -> None:
    opts = settings(
        shakespeare_dir,
        tmp_path / "a",
        steps=12,
        dropout=0.2,
        grad_accum=2,
        save_interval=6,
        validation_interval=4,
        optimizer=optimizer,
        lr_schedule="wsd" if optimizer == "muon" else "cosine",  # muon: the presets' recipe
        **({"muon_momentum": 0.85} if optimizer == "muon" else {}),
    )
    full = run_collect(build_trainer(opts))
    if optimizer == "muon":  # Muon's momentum buffers travel in the resume state, one per block matrix
        from nanogpt import checkpoint

        _, tensors = checkpoint.read_resume(tmp_path / "a" / "model_step_6")
        assert sum(k.endswith(".momentum_buffer") for k in tensors) == 2 * 4  # 2 layers x 4 matrices
    resumed_trainer = build_trainer(
        {**opts, "out_dir": str(tmp_path / "b")}, resume=str(tmp_path / "a" / "model_step_6")
    )
    assert resumed_trainer.state.step == 6
    resumed = run_collect(resumed_trainer)
    assert isinstance(resumed[0], RunStarted) and resumed[0].start_step == 6
    assert [h["step"] for h in resumed[0].history] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(losses(resumed), losses(full)[6:], rtol=0, atol=1e-5)

    def vals(evs: list) -> list[tuple[int, float]]:
        return [(e.step, e.val_loss) for e in evs if isinstance(e, EvalDone)]

    # steps 8 and 12; pytest.approx takes no nested tuples (pytest >= 9), so steps and losses apart
    got, want = vals(resumed), vals(full)[1:]
    assert [s for s, _ in got] == [s for s, _ in want] == [8, 12]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)
    # the resumed log continues the saved one: it holds the whole history
    from nanogpt import checkpoint

    log_a = checkpoint.read_log(tmp_path / "a" / "model_step_12")
    log_b = checkpoint.read_log(tmp_path / "b" / "model_step_12")
    assert [e["step"] for e in log_b] == list(range(1, 13))
    assert [e["loss"] for e in log_b] == pytest.approx([e["loss"] for e in log_a], abs=1e-5)
    wa, _ = checkpoint.load_model(tmp_path / "a" / "model_step_12")
    wb, _ = checkpoint.load_model(tmp_path / "b" / "model_step_12")
    for (name, pa), pb in zip(wa.state_dict().items(), wb.state_dict().values(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-6, msg=name)


def test_loss_falls_on_a_short_real_run(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(
        settings(
            shakespeare_dir,
            tmp_path,
            steps=60,
            learning_rate=1e-2,
            min_learning_rate=1e-3,
            validation_interval=30,
        )
    )
    events = run_collect(trainer)
    vals = [e.val_loss for e in events if isinstance(e, EvalDone)]
    assert losses(events)[0] > 4.0  # ~ln(65): the untrained model guesses uniformly
    # 60 tiny steps learn the character frequencies: far below the uniform 4.17, still falling
    assert vals[-1] < 3.3 and vals[-1] < vals[0] < losses(events)[0]
    assert events[-1] == RunFinished(step=60, reason="completed", stem=str(tmp_path / "model_step_60"))


def test_a_muon_checkpoint_from_before_muon_momentum_resumes_at_torchs_momentum(
    shakespeare_dir: Path, tmp_path: Path
) -> None:
    # checkpoints saved before --muon-momentum existed trained at torch's 0.95: a resume must keep it
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=2, optimizer="muon", muon_momentum=0.85))
    trainer.train_step()
    stem = Path(trainer.save().stem)
    path = stem.with_name(stem.name + ".config.json")
    meta = json.loads(path.read_text())
    assert meta["train"].pop("muon_momentum") == 0.85
    path.write_text(json.dumps(meta))
    stem.with_name(stem.name + ".manifest.json").unlink()  # checkpoints of that time had no manifest
    resumed = build_trainer({"out_dir": str(tmp_path / "b")}, resume=str(stem))
    assert resumed.train_cfg.muon_momentum == 0.95
    assert resumed.stepper.optimizer.param_groups[-1]["momentum"] == 0.95


def test_default_preset_is_cpu_small_on_cpu(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer({"device": "cpu", "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path)})
    _, train_cfg = presets.resolve({}, "cpu-small")
    assert (trainer.model_cfg.n_layer, trainer.model_cfg.n_embd, trainer.model_cfg.block_size) == (4, 128, 64)
    assert trainer.train_cfg.steps == train_cfg.steps == 2000
    assert trainer.model_cfg.vocab_size == 65  # taken from the data
    # the recipe searched on these shapes: Muon on the block matrices, AdamW on the rest, WSD
    t = trainer.train_cfg
    assert (t.optimizer, t.muon_learning_rate, t.muon_momentum, t.learning_rate, t.lr_schedule, t.warmup_steps) == (
        "muon", 0.03, 0.85, 3e-3, "wsd", 20
    )
    assert t.batch_size == 24  # a larger batch than nanoGPT's 12: fewer, cheaper-per-token steps
    assert [g["lr_scale"] for g in trainer.stepper.optimizer.param_groups] == [1.0, 1.0, 0.03 / 3e-3]
    assert trainer.stepper.optimizer.param_groups[-1]["momentum"] == 0.85  # the flag reaches Muon


def test_optimizer_adamw_on_cpu_small_is_nanogpts_recipe_exactly(shakespeare_dir: Path, tmp_path: Path) -> None:
    common = {"device": "cpu", "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path), "optimizer": "adamw"}
    t = build_trainer(common).train_cfg  # the default preset, cpu-small
    # nanoGPT's README CPU run: lr 1e-3 to 1e-4 over 2000 steps, warm-up 100 (train_shakespeare_char's schedule)
    assert (t.optimizer, t.learning_rate, t.min_learning_rate, t.lr_schedule, t.warmup_steps, t.steps) == (
        "adamw", 1e-3, 1e-4, "cosine", 100, 2000
    )
    assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip, t.batch_size) == (0.9, 0.99, 0.1, 1.0, 12)
    trainer = build_trainer({**common, "learning_rate": 2e-3}, preset="cpu-small")
    assert trainer.train_cfg.learning_rate == 2e-3 and trainer.train_cfg.lr_schedule == "cosine"  # typed flags win
    assert isinstance(trainer.stepper.optimizer, torch.optim.AdamW)


def test_baby_gpt_the_cuda_default_trains_with_muon_and_wsd(shakespeare_dir: Path, tmp_path: Path) -> None:
    assert presets.default_preset("cuda") == "baby-gpt"
    model_cfg, t = presets.resolve({}, "baby-gpt")
    assert (model_cfg.n_layer, model_cfg.n_embd, model_cfg.block_size, model_cfg.dropout) == (6, 384, 256, 0.2)
    # the run measured on an H200 (issue 21): Muon 0.02, momentum 0.95, WSD over 2500 steps, nanoGPT's batch
    assert (t.optimizer, t.muon_learning_rate, t.muon_momentum, t.lr_schedule, t.decay_fraction, t.steps) == (
        "muon", 0.02, 0.95, "wsd", 0.5, 2500
    )
    assert (t.learning_rate, t.min_learning_rate, t.warmup_steps, t.batch_size) == (1e-3, 1e-4, 100, 64)
    # the recipe reaches the optimizer (a small shape keeps the test fast; size flags leave the recipe alone)
    small = {"device": "cpu", "dtype": "float32", "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path),
             "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
    trainer = build_trainer(small, preset="baby-gpt")
    assert [g["lr_scale"] for g in trainer.stepper.optimizer.param_groups] == [1.0, 1.0, 0.02 / 1e-3]
    assert trainer.stepper.optimizer.param_groups[-1]["momentum"] == 0.95


def test_optimizer_adamw_on_baby_gpt_is_nanogpts_recipe_exactly(shakespeare_dir: Path, tmp_path: Path) -> None:
    # nanoGPT's config/train_shakespeare_char.py: batch 64, lr 1e-3 to 1e-4, warm-up 100, cosine over 5000 iters
    _, t = presets.resolve({"optimizer": "adamw"}, "baby-gpt")
    assert (t.optimizer, t.learning_rate, t.min_learning_rate, t.lr_schedule, t.warmup_steps, t.steps) == (
        "adamw", 1e-3, 1e-4, "cosine", 100, 5000
    )
    assert (t.beta1, t.beta2, t.weight_decay, t.grad_clip, t.batch_size, t.eval_iters) == (0.9, 0.99, 0.1, 1.0, 64, 200)
    _, typed = presets.resolve({"optimizer": "adamw", "steps": 1750, "lr_schedule": "wsd"}, "baby-gpt")
    assert (typed.steps, typed.lr_schedule) == (1750, "wsd")  # typed flags win
    small = {"device": "cpu", "dtype": "float32", "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path),
             "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "optimizer": "adamw"}
    assert isinstance(build_trainer(small, preset="baby-gpt").stepper.optimizer, torch.optim.AdamW)


def test_explicit_flags_win_over_the_preset(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(
        {
            "device": "cpu",
            "data_dir": str(shakespeare_dir),
            "out_dir": str(tmp_path),
            "n_layer": 1,
            "steps": 7,
        },
        preset="618k",
    )
    assert trainer.model_cfg.n_layer == 1 and trainer.train_cfg.steps == 7
    assert trainer.train_cfg.batch_size == presets.PRESETS["618k"]["batch_size"] == 32


def test_resume_keeps_saved_settings_and_takes_explicit_ones(shakespeare_dir: Path, tmp_path: Path) -> None:
    first = build_trainer(settings(shakespeare_dir, tmp_path, steps=3, learning_rate=2e-3))
    stem = first.run(lambda e: None).stem
    # only the data location and the new step count are given: everything else comes from the checkpoint
    again = build_trainer({"steps": 5, "data_dir": str(shakespeare_dir)}, resume=stem)
    assert again.train_cfg.learning_rate == 2e-3 and again.train_cfg.steps == 5
    assert again.model_cfg == first.model_cfg and again.state.step == 3
    with pytest.raises(UserError, match="--embedding-size 64 conflicts with checkpoint"):
        build_trainer({"n_embd": 64}, resume=stem)


def test_seed_zero_picks_and_prints_a_random_seed(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=1, seed=0))
    assert trainer.train_cfg.seed > 0
    assert f"using random seed {trainer.train_cfg.seed}" in "\n".join(trainer.notes)  # the engine prints nothing
    assert capsys.readouterr().err == ""
    from nanogpt.cli import main  # the front end prints the engine's notes

    flags = ["--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "cli"), "--steps", "1", "--seed", "0"]
    assert main(["train", "--headless", *TINY_FLAGS, *flags]) == 0
    err = capsys.readouterr().err
    picked = re.findall(r"^seed 0: using random seed (\d+) \(pass --seed \1 to repeat\)$", err, re.M)
    assert len(picked) == 1 and int(picked[0]) > 0


def test_sampling_and_evaluating_do_not_change_the_run(shakespeare_dir: Path, tmp_path: Path) -> None:
    opts = settings(shakespeare_dir, tmp_path, steps=6, dropout=0.1)
    plain = build_trainer(opts)
    busy = build_trainer(opts)
    a, b = [], []
    for _ in range(6):
        a.append(plain.train_step().loss)
        b.append(busy.train_step().loss)
        first, second = busy.evaluate(), busy.evaluate()
        assert first == second  # the validation batches are fixed
        text = busy.sample(20, prompt="ROMEO:")
        assert text.startswith("ROMEO:") and len(text) == 26
        assert busy.stepper.model.training
    assert a == b


def test_commands_between_steps(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=50))
    commands: queue.Queue = queue.Queue()
    for c in (Pause(), Sample(n_tokens=10), Resume()):
        commands.put(c)

    def on_event(event) -> None:
        if isinstance(event, StepDone) and event.step == 2:
            commands.put(Sample(n_tokens=5))
            commands.put(Stop())

    events = run_collect(trainer, commands, on_event=on_event)
    kinds = [type(e) for e in events]
    assert kinds[:4] == [RunStarted, Paused, Sampled, Resumed]
    assert kinds[4:] == [StepDone, StepDone, Sampled, Saved, RunFinished]
    assert len(events[2].text) == 10
    assert events[-1] == RunFinished(step=2, reason="stopped", stem=str(tmp_path / "model_step_2"))


def test_request_stop_from_another_thread_while_paused(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=50))
    threading.Timer(0.3, trainer.request_stop).start()
    events = run_collect(trainer, queue.Queue(), start_paused=True)
    assert [type(e) for e in events] == [RunStarted, Paused, RunFinished]
    assert events[-1].reason == "stopped" and events[-1].stem is None  # nothing trained, nothing saved


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    shakespeare_dir: Path, tmp_path: Path
) -> None:
    # an absurd learning rate makes the weights overflow after the first update
    trainer = build_trainer(
        settings(
            shakespeare_dir,
            tmp_path,
            steps=20,
            learning_rate=1e30,
            min_learning_rate=0.0,
            warmup_steps=0,
            grad_clip=0.0,
            save_interval=1,
        )
    )
    events = run_collect(trainer)
    finished = events[-1]
    assert finished.reason == "error" and "loss became nan at step 2" in finished.message
    assert finished.stem == str(tmp_path / "model_step_1") and "model_step_1" in finished.message
    assert not (tmp_path / "model_step_2.safetensors").exists()


def test_no_data_options_train_on_the_bundled_corpus(tmp_path: Path, monkeypatch) -> None:
    """The front end (cli.py) names the bundled corpus when the user names no data; the engine needs data."""
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    from nanogpt import checkpoint
    from nanogpt.cli import main

    assert main(["train", "--headless", *TINY_FLAGS, "--steps", "1", "--out-dir", str(tmp_path / "out")]) == 0
    meta = checkpoint.read_meta(tmp_path / "out" / "model_step_1")  # written: the run completed
    data_dir = Path(meta["train"]["data_dir"])
    assert data_dir.parent == tmp_path / "cache"
    # the default tokenizer: the learned BPE, at the size chosen for the bundled text's training part
    size = default_bpe_vocab_size(int(len(shakespeare_text()) * 0.9))
    assert data_dir.name == f"tinyshakespeare-bpe{size}"  # not the folder a char-level default was cached in
    assert (meta["tokenizer"]["tokenizer"], meta["tokenizer"]["vocab_size"]) == ("bpe", size)
    train_tokens = (data_dir / "train.bin").stat().st_size // 2  # uint16 ids
    assert 300_000 < train_tokens < 900_000  # Tiny Shakespeare's 1,003,854 training characters, 2+ per token
    with pytest.raises(UserError, match="give --data-dir"):
        build_trainer({**TINY, "steps": 1, "out_dir": str(tmp_path / "engine")})


def test_unexpected_error_saves_what_was_learned_then_raises(shakespeare_dir: Path, tmp_path: Path) -> None:
    """A bug outside the engine (here: the front end's callback failing at step 3) loses no finished step."""
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=10))

    def front_end_bug(event) -> None:
        if isinstance(event, StepDone) and event.step == 3:
            raise RuntimeError("the front end broke")

    with pytest.raises(RuntimeError, match="front end broke"):
        run_collect(trainer, on_event=front_end_bug)
    assert (tmp_path / "model_step_3.safetensors").is_file()
    assert (tmp_path / "model_step_3.resume.json").is_file()
    resumed = build_trainer({"out_dir": str(tmp_path)}, resume=str(tmp_path / "model_step_3"))
    assert resumed.state.step == 3


def test_deferred_loss_reads_give_the_same_run(shakespeare_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """On CUDA/MPS the engine reads losses back `sync_every` steps at a time (no host-device sync inside a
    step); forced here on CPU, the run's events, log and weights equal the read-every-step run."""
    opts = dict(steps=12, validation_interval=5, save_interval=6)
    every = build_trainer(settings(shakespeare_dir, tmp_path / "every", **opts))
    monkeypatch.setenv("NANOGPT_SYNC_EVERY", "4")
    batched = build_trainer(settings(shakespeare_dir, tmp_path / "batched", **opts))
    assert every.hardware.sync_every == 1  # CPU default
    assert batched.hardware.sync_every == 4
    a, b = run_collect(every), run_collect(batched)

    def shape(events: list) -> list:
        return [(type(e).__name__, getattr(e, "step", None)) for e in events]

    assert shape(a) == shape(b)  # StepDone 1..5, EvalDone 5, StepDone 6, Saved 6, ..., EvalDone 12, Saved 12
    assert [e.step for e in b if isinstance(e, StepDone)] == list(range(1, 13))
    assert losses(a) == losses(b)
    assert [e.val_loss for e in a if isinstance(e, EvalDone)] == [e.val_loss for e in b if isinstance(e, EvalDone)]
    log_a = json.loads((tmp_path / "every" / "model_step_12.training_log.json").read_text())
    log_b = json.loads((tmp_path / "batched" / "model_step_12.training_log.json").read_text())
    def without_times(log: list) -> list:
        return [{k: v for k, v in e.items() if k != "duration_ms"} for e in log]

    assert len(log_b) == 12 and without_times(log_a) == without_times(log_b)
    for p, q in zip(every.stepper.model.parameters(), batched.stepper.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_deferred_loss_reads_still_stop_on_nan(shakespeare_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NANOGPT_SYNC_EVERY", "4")
    trainer = build_trainer(
        settings(shakespeare_dir, tmp_path, steps=20, learning_rate=1e30, min_learning_rate=0.0,
                 warmup_steps=0, grad_clip=0.0)
    )
    events = run_collect(trainer)
    assert [type(e) for e in events] == [RunStarted, StepDone, RunFinished]  # step 1 is reported, then the stop
    assert events[-1].reason == "error" and "loss became nan at step 2" in events[-1].message


def test_train_steps_reads_losses_once_and_matches_train_step(shakespeare_dir: Path, tmp_path: Path) -> None:
    one = build_trainer(settings(shakespeare_dir, tmp_path / "one", steps=6))
    many = build_trainer(settings(shakespeare_dir, tmp_path / "many", steps=6))
    singles = [one.train_step() for _ in range(3)]
    together = many.train_steps(3)
    assert [e.step for e in together] == [1, 2, 3] and many.state.step == 3
    assert [e.loss for e in together] == [e.loss for e in singles]
    assert [e["step"] for e in many.state.log] == [1, 2, 3]


@pytest.mark.slow  # compiling takes ~30-60 s on a 2-core CPU the first time (inductor then caches it)
def test_compiled_cpu_shards_train_like_eager(shakespeare_dir: Path, tmp_path: Path) -> None:
    """--compile on CPU keeps the core-parallel shards (inductor's C++ wrapper: no GIL between kernels)."""
    opts = dict(steps=5, batch_size=8)
    eager = build_trainer(settings(shakespeare_dir, tmp_path / "eager", **opts))
    compiled = build_trainer(settings(shakespeare_dir, tmp_path / "compiled", compile=True, **opts))
    if eager.stepper.core_parallel is None:
        pytest.skip("one CPU core: no shards to compare")
    assert compiled.stepper.core_parallel is not None and compiled.stepper.step_module is not compiled.stepper.model
    a, b = run_collect(eager), run_collect(compiled)
    assert b[-1].reason == "completed", b[-1]
    torch.testing.assert_close(losses(b), losses(a), rtol=0, atol=1e-4)
    for p, q in zip(eager.stepper.model.parameters(), compiled.stepper.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-4)


def test_unexpected_error_with_deferred_loss_reads_keeps_every_finished_step(
    shakespeare_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("NANOGPT_SYNC_EVERY", "4")  # steps 1-4 are read back together
    # ... and only by count: on a loaded machine a step can outlast the half-second that reads back early
    monkeypatch.setattr(LossReadback, "MAX_WAIT_S", 3600.0)
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=10))  # the front end fails showing step 3

    def front_end_bug(event) -> None:
        if isinstance(event, StepDone) and event.step == 3:
            raise RuntimeError("the front end broke")

    with pytest.raises(RuntimeError, match="front end broke"):
        run_collect(trainer, on_event=front_end_bug)
    from nanogpt import checkpoint

    assert [e["step"] for e in checkpoint.read_log(tmp_path / "model_step_4")] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- what the model learns
def direct_validation_loss(model, tokens, trainer) -> float:
    """A source's validation loss computed here, from its own stretch of val.bin, as the engine draws batches."""
    cfg = trainer.train_cfg
    batches = data.SpreadSampler(
        tokens, block_size=trainer.model_cfg.block_size, batch_size=cfg.eval_batch_size,
        windows=cfg.eval_iters * cfg.eval_batch_size, device=torch.device("cpu"),
    )
    with torch.no_grad():
        return sum(model(*batches.batch(i))[1].item() for i in range(trainer.train_cfg.eval_iters)) / (
            trainer.train_cfg.eval_iters
        )


def test_each_mixology_source_gets_a_validation_loss_of_its_own(mixology_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(settings(mixology_dir, tmp_path, steps=20, validation_interval=10, save_interval=10))
    events = run_collect(trainer)
    evals = [e for e in events if isinstance(e, EvalDone)]
    log = checkpoint.read_log(tmp_path / "model_step_20")
    logged = {e["step"]: e["source_validation_losses"] for e in log if "validation_loss" in e}
    assert [e.step for e in evals] == list(logged) == [10, 20]
    assert [e.source_losses for e in evals] == [logged[10], logged[20]]
    meta = json.loads((mixology_dir / "vocab.json").read_text(encoding="utf-8"))
    val = np.memmap(mixology_dir / "val.bin", dtype=np.uint16, mode="r")
    alice_text = gutenberg_book().replace("\r\n", "\n")
    tokenizer = from_meta(meta)
    for step in (10, 20):
        model, _ = checkpoint.load_model(tmp_path / f"model_step_{step}")
        assert sorted(logged[step]) == ["alice", "shakespeare"]
        for source in meta["sources"]:
            tokens = val[source["val_offset"] : source["val_offset"] + source["val_tokens"]]
            if source["name"] == "alice":  # vocab.json says where Alice's validation text lies, and it does
                start = tokenizer.decode(tokens[:300].tolist())
                assert start in alice_text and start not in shakespeare_text()
            direct = direct_validation_loss(model, tokens, trainer)
            assert logged[step][source["name"]] == pytest.approx(direct, rel=1e-5)
    assert logged[20]["alice"] != logged[20]["shakespeare"]
    # a resume keeps the per-source history and measures the same losses as the uninterrupted run
    resumed = build_trainer({"out_dir": str(tmp_path / "resumed")}, resume=str(tmp_path / "model_step_10"))
    run_collect(resumed)
    again = {e["step"]: e["source_validation_losses"] for e in resumed.state.log if "validation_loss" in e}
    assert again[10] == logged[10] and again[20] == pytest.approx(logged[20], rel=1e-6)


def test_a_single_file_dataset_has_no_source_losses(shakespeare_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(settings(shakespeare_dir, tmp_path, steps=2, validation_interval=2))
    events = run_collect(trainer)
    assert [e.source_losses for e in events if isinstance(e, EvalDone)] == [{}]
    assert all("source_validation_losses" not in e for e in trainer.state.log)


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_the_gradient_norm_is_logged_as_clipping_sees_it(
    shakespeare_dir: Path, tmp_path: Path, grad_clip: float
) -> None:
    opts = settings(shakespeare_dir, tmp_path, steps=4, grad_clip=grad_clip)
    trainer = build_trainer(opts)
    reference = build_trainer(opts)  # the same initial weights: the first step's gradients computed here
    x, y = reference.stepper.train_batches.batch(0)
    reference.stepper.model(x, y)[1].backward()
    grads = [p.grad.norm() for p in reference.stepper.model.parameters()]
    expected = torch.linalg.vector_norm(torch.stack(grads)).item()
    first = trainer.train_step()
    assert first.grad_norm == pytest.approx(expected, rel=1e-4)
    assert trainer.state.log[-1]["grad_norm"] == first.grad_norm
    # read back with the losses (as on an accelerator): the same norms as read at once
    deferred = build_trainer(settings(shakespeare_dir, tmp_path / "b", steps=4, grad_clip=grad_clip))
    at_once = [first.grad_norm] + [trainer.train_step().grad_norm for _ in range(3)]
    assert [e.grad_norm for e in deferred.train_steps(4)] == pytest.approx(at_once, rel=1e-6)


def test_the_evaluation_sample_is_the_same_whether_or_not_g_sampled(shakespeare_dir: Path, tmp_path: Path) -> None:
    opts = settings(shakespeare_dir, tmp_path / "plain", steps=6, validation_interval=3, dropout=0.1,
                    eval_sample_tokens=30, save_interval=3)
    plain = run_collect(build_trainer(opts))
    commands: queue.Queue = queue.Queue()

    def sample_with_g(event) -> None:  # what the UI's `g` key sends, at steps 2 and 4
        if isinstance(event, StepDone) and event.step in (2, 4):
            commands.put(Sample(n_tokens=25))

    busy = run_collect(build_trainer({**opts, "out_dir": str(tmp_path / "busy")}), commands, on_event=sample_with_g)
    assert len([e for e in busy if isinstance(e, Sampled)]) == 2
    kept = [(e.step, e.sample) for e in plain if isinstance(e, EvalDone)]
    assert [(e.step, e.sample) for e in busy if isinstance(e, EvalDone)] == kept
    assert all(len(s) == 30 for _, s in kept)  # 30 characters after the newline it starts from
    assert kept[0][1] != kept[1][1]  # the same prompt and seed: what changed is the model
    assert losses(busy) == losses(plain)
    # kept with the run, in the checkpoint's training log; a resume keeps the earlier ones
    log = checkpoint.read_log(tmp_path / "plain" / "model_step_6")
    assert [(e["step"], e["sample"]) for e in log if "sample" in e] == kept
    resumed = build_trainer({"out_dir": str(tmp_path / "resumed")}, resume=str(tmp_path / "plain" / "model_step_3"))
    run_collect(resumed)
    assert [(e["step"], e["sample"]) for e in resumed.state.log if "sample" in e] == kept
