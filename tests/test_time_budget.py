"""`train --time`: a plan from measured step times, said before training; flags win; small texts are not
overtrained; a timed run resumes exactly and extends with a new decay. Through the real CLI on tiny budgets: the
assertions are on the plan's rules and the saved settings, never on how long anything took."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from engine_fixtures import TINY, TINY_FLAGS, prepare_char, shakespeare_text

from nanogpt.cli import main
from nanogpt.config import ModelConfig, TrainConfig
from nanogpt.schedule import decay_start, parse_duration
from nanogpt.train import plan, rules
from nanogpt.train.gate import resolve_run

# the tiny model with its width left to the plan (its depth and heads typed: the plan keeps them)
OPEN_WIDTH = [f for i, f in enumerate(TINY_FLAGS) if "--embedding-size" not in (f, TINY_FLAGS[i - 1])]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))  # the probe's cache, one per test


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(["train", "--headless", *args])
    out, err = capsys.readouterr()
    return code, out, err


def plan_line(out: str, budget: str) -> str:
    """The plan `--time budget` said in `out`."""
    return next(line for line in out.splitlines() if line.startswith(f"--time {budget} on this machine: "))


def config_of(stem: Path) -> dict:
    return json.loads(Path(f"{stem}.config.json").read_text())["train"]


def last_checkpoint(out: Path) -> Path:
    """The stem of the last checkpoint a run saved in `out`."""
    finals = sorted(out.glob("model_step_*.manifest.json"), key=lambda p: int(p.name.split("_")[2].split(".")[0]))
    return Path(str(finals[-1]).removesuffix(".manifest.json"))


def assert_resume_replays(capsys: pytest.CaptureFixture, final: Path, start: int, again: Path) -> None:
    """Resuming the run's checkpoint at step `start` (into `again`, without --time: the saved plan's steps) replays
    the losses the run logged after it, step for step (a run that met the budget's guard under load stopped short
    of its steps: the steps it did are compared)."""
    log = json.loads(Path(f"{final}.training_log.json").read_text())
    code, _, err = run(capsys, "--resume-training", str(final.parent / f"model_step_{start}"), "--out-dir", str(again))
    assert code == 0, err
    resumed = max(again.glob("model_step_*.training_log.json"), key=lambda p: len(p.read_text()))
    replayed = {e["step"]: e["loss"] for e in json.loads(resumed.read_text()) if e["step"] > start}
    timed = {e["step"]: e["loss"] for e in log if e["step"] > start and "loss" in e}
    assert timed and {k: replayed.get(k) for k in timed} == timed


def test_durations_are_read_as_typed() -> None:
    assert [parse_duration(t) for t in ("90s", "10m", "1h30m", "2h", "45", "1m30s")] == [
        90, 600, 5400, 7200, 45, 90]
    for bad in ("", "ten minutes", "10x", "0s", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--time", "banana"], "--time must be a duration such as 90s, 10m or 1h30m, got 'banana'"),
        (["--time", "30s", "--steps", "50"], "--time plans the steps: give --time or --steps, not both"),
        (["--plan"], "--plan prints the plan of --time: give --time too"),
        # a typed shape far too slow for the time (~260 GFLOP a step: 0.3 s on 16 cores, seconds on 2) is refused
        # after its first probe step, before anything is written
        (["--time", "1s", "--layer-count", "6", "--embedding-size", "384", "--head-count", "6", "--block-size", "128",
          "--batch-size", "32"], "--time 1s: not even the smallest model does 10 steps in that time here; give more"),
    ],
)
def test_a_time_that_cannot_be_planned_is_one_line(
    shakespeare_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], said: str
) -> None:
    code, _, err = run(capsys, *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "o"),
                       *args)
    assert code == 1 and said in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_plan_says_the_plan_and_trains_nothing(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    args = [*OPEN_WIDTH, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "o"), "--time", "20s"]
    code, out, _ = run(capsys, *args, "--plan")
    assert code == 0 and not (tmp_path / "o").exists()
    line = plan_line(out, "20s")
    shape = re.search(r": (\d+) layers x (\d+) .*, (\d+) heads\), block (\d+), batch (\d+), .*, ([\d,]+) steps", line)
    assert shape is not None, line
    layers, width, heads, block, batch, steps = (int(g.replace(",", "")) for g in shape.groups())
    # the typed flags win (depth, heads, context, batch); the width is one of the plan's rungs
    assert (layers, heads, block, batch) == (2, 2, 32, 8) and width in {w for _, w in rules.RUNGS}
    assert steps >= 1
    # the same machine, text and budget: the same plan from the probe's cached times. A time measured on a busy
    # machine is measured again (and the test runs beside others): here each is marked as measured idle
    cache = tmp_path / "cache" / "speed_probe.json"
    cache.write_text(json.dumps({k: {**v, "load": 0.0} for k, v in json.loads(cache.read_text()).items()}))
    assert run(capsys, *args, "--plan")[1] == out


def test_a_small_text_is_not_trained_into_overfitting(tmp_path: Path, capsys) -> None:
    """A 6 KB text with an hour: the passes bound would end the run in seconds, so the plan trains with dropout and
    up to four times --max-passes passes, and says so; with --dropout 0 typed it stops at --max-passes (8) passes;
    --max-passes 0 fills the time instead."""
    data = prepare_char(shakespeare_text()[:6000], tmp_path / "small")
    train_tokens = (data / "train.bin").stat().st_size // 2

    def planned(*extra: str) -> tuple[str, int]:
        code, out, _ = run(capsys, *TINY_FLAGS, "--data-dir", str(data), "--time", "1h", "--plan", *extra)
        line = plan_line(out, "1h")
        assert code == 0, line
        return line, int(re.search(r"([\d,]+) steps at", line)[1].replace(",", ""))

    line, steps = planned()
    passes = rules.DROPOUT_PASSES * 8
    assert f"dropout {rules.REPEAT_DROPOUT:g} for more passes over a text it repeats (at most {passes:g})" in line
    assert "ends early" in line and steps * 8 * 32 <= passes * train_tokens + 8 * 32
    line, bounded = planned("--dropout", "0")
    assert f"capped at {8:g} passes over the text" in line and "dropout" not in line, line
    assert bounded * 8 * 32 <= 8 * train_tokens + 8 * 32 and bounded < steps
    line, filled = planned("--max-passes", "0")
    assert "capped" not in line and "dropout" not in line and filled > steps


def test_dropout_is_for_a_run_its_passes_bound_would_end_early_unless_typed() -> None:
    shape, train = ModelConfig(n_layer=4, n_embd=192, n_head=3), TrainConfig(max_passes=8.0)
    cfg, regular = rules.with_dropout(shape, train, 60, 180, set())  # a minute of training in three: time is left
    assert (cfg.dropout, regular.max_passes) == (rules.REPEAT_DROPOUT, 8 * rules.DROPOUT_PASSES)
    assert rules.with_dropout(shape, train, 100, 180, set()) is None  # the run takes most of its time already
    for typed in ({"dropout"}, {"max_passes"}):
        assert rules.with_dropout(shape, train, 60, 180, typed) is None
    assert rules.with_dropout(dataclasses.replace(shape, dropout=0.2), train, 60, 180, set()) is None  # baby-gpt
    assert rules.with_dropout(shape, TrainConfig(max_passes=0), 60, 180, set()) is None  # no bound: fills its time


def test_a_timed_run_with_dropout_trains_on_one_shard_and_resumes_exactly(tmp_path: Path, capsys) -> None:
    """The plan's dropout (a 6 KB text, time to spare) runs on one shard of every core, the way a resume of it is
    resolved, and its stable checkpoint resumes loss for loss: dropout's masks are seeded per step."""
    data = prepare_char(shakespeare_text()[:6000], tmp_path / "small")
    out = tmp_path / "timed"
    flags = [f if f != "float32" else "auto" for f in TINY_FLAGS]  # the precision is the plan's to measure
    code, _, err = run(capsys, *flags, "--data-dir", str(data), "--out-dir", str(out), "--time", "20s",
                       "--log-interval", "1")
    assert code == 0, err
    final = last_checkpoint(out)
    saved = json.loads(Path(f"{final}.config.json").read_text())
    assert saved["model"]["dropout"] == rules.REPEAT_DROPOUT and saved["train"]["max_passes"] == 32
    assert_resume_replays(capsys, final, decay_start(saved["train"]["steps"], saved["train"]["decay_fraction"]),
                          tmp_path / "r")
    # the hardware the gate gives it: one shard on the cores that two would have had (a preset without dropout)
    given = {**{k: v for k, v in TINY.items() if k not in ("log_interval", "validation_interval")}, "dtype": "auto",
             "time": "20s", "data_dir": str(data)}
    planned = resolve_run({**given, "out_dir": str(tmp_path / "a")})
    plain = resolve_run({**given, "dropout": 0.0, "out_dir": str(tmp_path / "b")})
    assert planned.model_cfg.dropout == rules.REPEAT_DROPOUT and plain.model_cfg.dropout == 0
    assert planned.hardware.shards == 1
    assert planned.hardware.threads == plain.hardware.shards * (plain.hardware.threads or 1)


def test_a_run_capped_by_passes_ends_there_though_time_is_left(tmp_path: Path, capsys) -> None:
    """The loop's re-estimate moves the end to fill the time, but never past --max-passes passes: 2 passes over a
    6 KB text take well under the minute given."""
    data = prepare_char(shakespeare_text()[:6000], tmp_path / "small")
    out = tmp_path / "o"
    code, _, err = run(capsys, *TINY_FLAGS, "--data-dir", str(data), "--out-dir", str(out), "--time", "1m",
                       "--max-passes", "2", "--log-interval", "1")
    assert code == 0, err
    train_tokens = (data / "train.bin").stat().st_size // 2
    last = max(int(p.name.split("_")[2].split(".")[0]) for p in out.glob("model_step_*.manifest.json"))
    assert 1 <= last <= 2 * train_tokens // (8 * 32)


def test_a_timed_run_saves_its_plan_and_resumes_exactly(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    """The plan and its measured step time are in config.json; the stable checkpoint before WSD's decay is kept,
    and resuming it replays the run's remaining steps loss for loss (the end moves only before the decay)."""
    out = tmp_path / "timed"
    code, _, err = run(capsys, *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(out),
                       "--time", "8s", "--log-interval", "1")
    assert code == 0, err
    final = last_checkpoint(out)
    saved = config_of(final)
    assert saved["time"] == "8s" and saved["plan_step_ms"] > 0 and saved["lr_schedule"] == "wsd"
    start = decay_start(saved["steps"], saved["decay_fraction"])
    assert Path(f"{out / f'model_step_{start}'}.manifest.json").is_file()  # kept for an extension
    assert_resume_replays(capsys, final, start, tmp_path / "again")


def test_extending_a_timed_run_decays_again_from_its_stable_checkpoint(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "timed"
    assert run(capsys, *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(out), "--time", "6s")[0] == 0
    first = max((json.loads(p.read_text()) for p in out.glob("model_step_*.config.json")), key=lambda c: c["step"])
    start = decay_start(first["train"]["steps"], first["train"]["decay_fraction"])
    code, _, err = run(capsys, "--resume-training", str(out), "--time", "4s", "--out-dir", str(tmp_path / "more"))
    assert code == 0, err
    assert f"model_step_{start} (before its decay)" in err and "then the decay again" in err, err
    # the extension goes on from the stable checkpoint (not the decayed end), with a schedule of its own
    ended = max((json.loads(p.read_text()) for p in (tmp_path / "more").glob("model_step_*.config.json")),
                key=lambda c: c["step"])
    log = json.loads(Path(tmp_path / "more" / f"model_step_{ended['step']}.training_log.json").read_text())
    assert [e["step"] for e in log if e["step"] > start][0] == start + 1
    assert ended["train"]["time"] == "4s" and ended["train"]["steps"] > start


def test_a_slow_step_gets_fewer_evaluation_batches_not_fewer_steps() -> None:
    from nanogpt.config import TrainConfig

    cfg = TrainConfig(batch_size=64, eval_iters=plan.EVAL_ITERS)
    # nanoGPT's baby GPT on a 2-core CPU: ~7 s a step. Ten batches an evaluation took the whole three minutes
    slow = plan.with_eval_iters(180, 7.2, cfg, typed=set())
    assert plan.steps_in(180, 7.2, cfg) == 1
    assert slow.eval_iters == 1 and plan.steps_in(180, 7.2, slow) >= 20
    eval_s = (plan.EVALUATIONS + 1) * slow.eval_iters * 7.2 / 3
    assert eval_s <= plan.EVAL_SHARE * 180
    # an ordinary step keeps its ten batches; a typed --eval-iters is the user's to keep
    assert plan.with_eval_iters(60, 0.07, cfg, typed=set()).eval_iters == plan.EVAL_ITERS
    assert plan.with_eval_iters(180, 7.2, cfg, typed={"eval_iters"}).eval_iters == plan.EVAL_ITERS


def test_a_model_large_for_its_text_gets_half_the_passes_unless_the_text_is_tiny_or_they_are_typed() -> None:
    from nanogpt.config import ModelConfig, TrainConfig

    train = TrainConfig(batch_size=24, max_passes=8.0)
    small, large = (ModelConfig(n_layer=n, n_embd=w, n_head=2, block_size=64, vocab_size=512)
                    for n, w in ((4, 128), (4, 192)))  # 0.79 M and 1.78 M block parameters
    text = 411_000  # tokens: Tiny Shakespeare's training part as the default BPE cuts it
    assert rules.passes_for(small, train, text, 1, set()) == 8  # under LARGE_FOR_TEXT block parameters a token
    assert rules.passes_for(large, train, text, 1, set()) == 4
    assert rules.passes_for(large, train, text, 1, {"max_passes"}) == 8  # typed: as typed
    assert rules.passes_for(large, train, 58_000, 1, set()) == 8  # 4 passes of Alice: 150 steps, too few
    # the rule then picks the larger shape at 4 passes where it gets its tokens, and says why it ends early
    best, steps, passes, why = plan.choose(600, [small, large], [0.057, 0.099], train, text, 1)
    assert (best, passes) == (1, 4) and steps == int(4 * text / (24 * 64)) and "half of --max-passes" in why


def test_a_short_run_trains_on_half_the_context_twice_as_many_a_step_unless_either_is_typed() -> None:
    from nanogpt.config import ModelConfig, TrainConfig, tokens_per_step

    cfg = ModelConfig(n_layer=4, n_embd=128, n_head=2, block_size=64, vocab_size=1024)
    train = TrainConfig(batch_size=24)
    short_cfg, short_train = rules.short_context(cfg, train, rules.SHORT_RUN_TOKENS - 1, set())
    assert (short_cfg.block_size, short_train.batch_size) == (32, 48)
    assert tokens_per_step(short_cfg, short_train, 1) == tokens_per_step(cfg, train, 1)  # the same tokens a step
    assert rules.short_context(cfg, train, rules.SHORT_RUN_TOKENS, set()) is None  # a longer run keeps its context
    assert rules.short_context(cfg, train, 1000, {"block_size"}) is None  # typed: the user's
    assert rules.short_context(cfg, train, 1000, {"batch_size"}) is None
    shortest = ModelConfig(n_layer=4, n_embd=128, n_head=2, block_size=rules.SHORTEST_CONTEXT, vocab_size=1024)
    assert rules.short_context(shortest, train, 1000, set()) is None


def test_the_ladder_is_probed_only_up_to_the_first_shape_too_large_for_its_tokens(tmp_path: Path, capsys) -> None:
    """A larger shape is slower and wants more tokens, so the plan stops timing shapes at the first that does not
    get its tokens: on a 90 K-token text (at most 8 passes) the rungs of 512 and 768 are never probed, however fast
    the machine (each probe of a large shape is seconds of the user's start-up)."""
    data = prepare_char(shakespeare_text()[:100_000], tmp_path / "small")
    code, out, _ = run(capsys, "--device", "cpu", "--dtype", "float32", "--data-dir", str(data), "--time", "10m",
                       "--plan")
    assert code == 0 and plan_line(out, "10m"), out
    probed = json.loads((tmp_path / "cache" / "speed_probe.json").read_text())
    widths = {int(k.rsplit("|", 1)[-1].strip("()").split(",")[2]) for k in probed}
    assert widths and max(widths) <= 384 and not widths & {512, 768}, widths


def test_a_short_timed_run_says_it_halves_the_context(tmp_path: Path, capsys) -> None:
    """Through the CLI: the plan of a short run (8 passes over a 90 K-token text are under SHORT_RUN_TOKENS,
    however fast the machine) of a model whose context is not typed trains on half the preset's (cpu-small: 64)
    with twice its batch (24), and says so; typing the context keeps both as they are."""
    data = prepare_char(shakespeare_text()[:100_000], tmp_path / "small")
    shape = ["--layer-count", "2", "--head-count", "2", "--embedding-size", "32", "--device", "cpu",
             "--dtype", "float32", "--data-dir", str(data), "--time", "10m", "--plan"]
    code, out, _ = run(capsys, *shape)
    line = plan_line(out, "10m")
    assert code == 0 and "block 32, batch 48," in line and "contexts of 32 tokens for a short run" in line, line
    code, out, _ = run(capsys, *shape, "--block-size", "64")
    line = plan_line(out, "10m")
    assert code == 0 and "block 64, batch 24," in line and "short run" not in line, line


def test_a_run_on_new_text_is_planned_shallow_on_the_ladders_widths() -> None:
    from nanogpt.config import ModelConfig, TrainConfig

    assert [w for _, w in rules.NEW_TEXT_RUNGS] == [w for _, w in rules.RUNGS]  # the same widths
    assert {n for n, _ in rules.NEW_TEXT_RUNGS} == {rules.NEW_TEXT_LAYERS}
    assert rules.on_new_text(1_000_000, 2_650_000)  # code at 1 minute: under half its text
    assert rules.on_new_text(2_800_000, 2_650_000)  # code at 3 minutes: about once
    assert not rules.on_new_text(1_200_000, 420_000)  # Tiny Shakespeare at 1 minute: 2.8 passes, depth pays
    assert not rules.on_new_text(rules.NEW_TEXT_TOKENS, 10**9)  # longer than measured: the ladder's depth
    # code at 1 minute: 2 x 256 gets 0.8 tokens a block parameter, enough for the ladder's rule but not for the
    # new-text one, which keeps 2 x 192 (1.7)
    train = TrainConfig(batch_size=24, eval_iters=plan.EVAL_ITERS)
    shapes = [ModelConfig(n_layer=2, n_embd=w, n_head=rules.heads_for(w), block_size=64, vocab_size=1024)
              for w in (192, 256)]
    assert plan.choose(60, shapes, [0.060, 0.069], train, 2_650_000, 1)[0] == 1
    assert plan.choose(60, shapes, [0.060, 0.069], train, 2_650_000, 1, set(), rules.NEW_TEXT_TOKENS_PER_PARAM)[0] == 0


def test_a_timed_run_on_new_text_says_it_trains_shallow_on_a_larger_batch(tmp_path: Path, capsys) -> None:
    """Through the CLI: half a pass over a 720 K-token text (--max-passes 0.5) is a run on new text however fast the
    machine. At width 64 the ladder's deepest rung (12 layers, 0.6 M block parameters) gets its 0.3 M tokens; the
    plan trains the width at NEW_TEXT_LAYERS layers instead, with NEW_TEXT_BATCH times the batch, at the preset's
    context (short runs on new text keep it), and says so; a typed --layer-count or --batch-size is kept."""
    data = prepare_char(shakespeare_text()[:800_000], tmp_path / "text")
    args = ["--embedding-size", "64", "--head-count", "2", "--device", "cpu", "--dtype", "float32",
            "--data-dir", str(data), "--time", "10m", "--max-passes", "0.5", "--plan"]
    code, out, _ = run(capsys, *args)
    line = plan_line(out, "10m")
    assert code == 0 and f"{rules.NEW_TEXT_LAYERS} layers x 64 " in line, line
    assert f"{rules.NEW_TEXT_LAYERS} layers and {rules.NEW_TEXT_BATCH}x the batch for a run on new text" in line, line
    # twice the preset's batch (cpu-small: 24), at its context: short runs on new text keep it
    assert f"block 64, batch {24 * rules.NEW_TEXT_BATCH}," in line and "contexts of" not in line, line
    code, out, _ = run(capsys, *args, "--layer-count", "4")  # a typed depth is kept; the batch still grows
    line = plan_line(out, "10m")
    assert code == 0 and "4 layers x 64 " in line and f"; {rules.NEW_TEXT_BATCH}x the batch for a run on new" in line
    assert f"block 64, batch {24 * rules.NEW_TEXT_BATCH}," in line, line
    code, out, _ = run(capsys, *args, "--batch-size", "16")  # a typed batch is kept; the depth is still shallow
    line = plan_line(out, "10m")
    assert code == 0 and "batch 16," in line and f"; {rules.NEW_TEXT_LAYERS} layers for a run on new" in line, line
    code, out, _ = run(capsys, *args, "--batch-size", "16", "--layer-count", "4")  # both typed: nothing to change
    line = plan_line(out, "10m")
    assert code == 0 and "4 layers x 64 " in line and "batch 16," in line and "new text" not in line, line


def test_a_timed_run_from_weights_keeps_their_shape_and_context(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    """--init-from with --time: the plan sizes the steps around the weights' shape and context; it used to pick a
    rung and a context of its own, whose model the weights do not fit."""
    model = ["--layer-count", "2", "--head-count", "2", "--embedding-size", "48", "--block-size", "64"]
    common = ["--device", "cpu", "--dtype", "float32", "--data-dir", str(shakespeare_dir)]
    code, _, err = run(capsys, *model, *common, "--steps", "2", "--out-dir", str(tmp_path / "first"))
    assert code == 0, err
    code, out, err = run(capsys, *common, "--init-from", str(tmp_path / "first" / "model_step_2"), "--time", "10m",
                         "--max-passes", "0.1", "--plan")
    line = next((line for line in out.splitlines() if "on this machine: " in line), err)
    assert code == 0 and "2 layers x 48 " in line and "block 64," in line and "short run" not in line, line


def test_the_plan_steps_in_the_precision_measured_for_its_own_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """`--dtype auto` on a CPU with native bfloat16 is measured for the preset's step before the plan; a plan that
    trains another step (here the short run's halved context) has that step measured too, and is planned in the
    precision faster for it. Any CPU: torch is told it has native bfloat16, and the verdicts are set in the cache."""
    import ast

    import torch

    from nanogpt.runtime import dtype_probe

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    data = prepare_char(shakespeare_text()[:100_000], tmp_path / "small")
    args = ["--layer-count", "2", "--head-count", "2", "--embedding-size", "32", "--device", "cpu",
            "--data-dir", str(data), "--time", "10m", "--plan"]
    assert run(capsys, *args)[0] == 0
    verdicts = tmp_path / "cache" / dtype_probe.CACHE_FILE
    entries = json.loads(verdicts.read_text())
    steps = {k: v for k, v in entries.items() if "block_size=" in k}
    assert {"block_size=64" in k for k in steps} == {True, False}  # the preset's step and the plan's, measured
    # the preset's step is faster in float32, the plan's in bfloat16: the plan is made again in bfloat16
    entries.update({k: {**v, "dtype": "float32" if "block_size=64" in k else "bfloat16"} for k, v in steps.items()})
    verdicts.write_text(json.dumps(entries))
    (tmp_path / "cache" / "speed_probe.json").unlink()
    code, out, err = run(capsys, *args)
    assert code == 0 and "contexts of 32 tokens for a short run" in out, out + err
    timed = json.loads((tmp_path / "cache" / "speed_probe.json").read_text())
    shapes = {(k.split("|")[3], ast.literal_eval(k.rsplit("|", 1)[1])[3]) for k in timed}
    assert ("torch.bfloat16", 32) in shapes and ("torch.float32", 64) in shapes, shapes
