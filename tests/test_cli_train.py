"""`nanogpt train` through the real CLI: a headless run, resume, SIGTERM, one-line errors for bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS, prepare_char, shakespeare_text

from nanogpt.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", "--headless", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_headless_run_prints_progress_and_saves(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, err = train(
        capsys,
        *TINY_FLAGS,
        "--data-dir",
        str(shakespeare_dir),
        "--out-dir",
        str(tmp_path),
        "--steps",
        "4",
        "--log-interval",
        "2",
        "--validation-interval",
        "2",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("training: ") and "(2 layers, 2 heads, 32 embedding, block 32)" in lines[0]
    assert "recipe: AdamW lr 0.001; cosine schedule, warm-up 100" in lines  # no preset: nanoGPT's defaults
    # 4 steps of a 100-step warm-up: the run says its learning rate never gets to the peak
    assert "note: the warm-up (100 steps) is as long as the run or longer" in out
    step_lines = [line for line in lines if line.startswith("step") and "| loss" in line]
    assert [line.split("|")[0].split()[1] for line in step_lines] == ["2/4", "4/4"]
    assert all("ms/step" in line and "tok/s" in line and "lr " in line for line in step_lines)
    assert sum("val loss" in line for line in lines) == 2
    assert lines[-1] == f"checkpoint: {tmp_path / 'model_step_4'}"
    assert (tmp_path / "model_step_4.safetensors").is_file()


def test_resume_from_the_cli_continues_the_log(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    common = [*TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path)]
    assert train(capsys, *common, "--steps", "3")[0] == 0
    code, out, err = train(capsys, "--resume-training", str(tmp_path / "model_step_3"), "--steps", "5")
    assert code == 0, err
    assert out.splitlines()[0].startswith("resuming at step 3")
    log = json.loads((tmp_path / "model_step_5.training_log.json").read_text())
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5]


def test_a_checkpoint_not_found_says_what_the_folder_holds_and_where_runs_went(
    shakespeare_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # the trap docs/training.md warns of: the first run takes out/, the next one (no --out-dir) lands in out-2/
    monkeypatch.chdir(tmp_path)
    common = [*TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--save-interval", "2"]
    assert train(capsys, *common, "--steps", "4")[0] == 0
    code, _, err = train(capsys, *common, "--steps", "5")
    assert code == 0 and "this run writes into out-2" in err
    said = (
        "checkpoint not found: out/model_step_5 (expected out/model_step_5.safetensors and "
        "model_step_5.config.json); out holds checkpoints at steps 2 and 4 (latest: out/model_step_4); "
        "recent runs beside it: out-2 (latest out-2/model_step_5)"
    )
    for command in (
        ["train", "--headless", "--resume-training", "out/model_step_5", "--steps", "8"],
        ["generate", "out/model_step_5"],
        ["export", "out/model_step_5", "hf"],
    ):
        assert main(command) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.strip() == f"nanogpt {command[0]}: error: {said}"
    assert main(["generate", "elsewhere/model_step_5"]) == 1
    assert capsys.readouterr().err.strip().endswith("; there is no folder elsewhere")
    assert not (tmp_path / "hf").exists()


@pytest.fixture(scope="module")
def small_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset of 3,000 characters: 300 validation tokens."""
    return prepare_char(shakespeare_text()[:3000], tmp_path_factory.mktemp("small"))


def broken_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("input.txt"))
    return dst


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--data-dir", "{missing}"], "data folder not found"),
        (["--data-dir", "{truncated}"], "truncated"),
        (["--data-dir", "{wrong_vocab}"], "vocabulary does not match"),
        (["--data-dir", "{data}", "--vocab-metadata", "{corrupt_vocab}"], "is corrupt or truncated"),
        (["--data-dir", "{data}", "--head-count", "3"], "--head-count (3) must divide --embedding-size (32)"),
        (["--data-dir", "{data}", "--steps", "0"], "--steps must be a positive integer"),
        (["--data-dir", "{data}", "--batch-size", "-2"], "--batch-size must be a positive integer"),
        (["--data-dir", "{data}", "--layer-count", "0"], "--layer-count must be a positive integer"),
        (["--data-dir", "{small}", "--block-size", "512"], "larger than the validation data (300 tokens)"),
        (["--data-dir", "{data}", "--preset", "huge"], "preset"),
        (["--data-dir", "{data}", "--muon-learning-rate", "0"], "--muon-learning-rate must be a positive number"),
        (["--data-dir", "{data}", "--muon-momentum", "1"], "--muon-momentum must be in [0, 1)"),
        (["--data-dir", "{data}", "--muon-momentum", "nan"], "--muon-momentum must be in [0, 1)"),
        (["--data-dir", "{data}", "--lr-schedule", "wsd", "--decay-fraction", "1.5"], "--decay-fraction must be in"),
        (["--data-dir", "{data}", "--optimizer", "sgd"], "--optimizer"),
        (["--data-dir", "{data}", "--device", "tpu"], "device"),
        (["--resume-training", "{missing}/model_step_3"], "checkpoint not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    flags: list[str], message: str, shakespeare_dir: Path, small_text_dir: Path, tmp_path: Path, capsys
) -> None:
    truncated = broken_copy(shakespeare_dir, tmp_path / "truncated")
    with open(truncated / "val.bin", "ab") as f:
        f.write(b"\0")
    wrong_vocab = broken_copy(shakespeare_dir, tmp_path / "wrong_vocab")
    itos = json.loads((wrong_vocab / "vocab.json").read_text())["itos"][:20]
    (wrong_vocab / "vocab.json").write_text(
        json.dumps(
            {"tokenizer": "char", "vocab_size": 20, "itos": itos, "stoi": {c: i for i, c in enumerate(itos)}}
        )
    )
    corrupt_vocab = tmp_path / "corrupt.json"
    corrupt_vocab.write_text('{"tokenizer": "ch')
    names = {
        "missing": tmp_path / "missing",
        "truncated": truncated,
        "wrong_vocab": wrong_vocab,
        "data": shakespeare_dir,
        "corrupt_vocab": corrupt_vocab,
        "small": small_text_dir,
    }
    args = [f.format(**names) for f in flags]
    try:
        code = main(["train", "--headless", *TINY_FLAGS, "--out-dir", str(tmp_path / "out"), *args])
    except SystemExit as e:  # argparse's own checks (choices) exit from inside parse_args
        code = e.code
    _, err = capsys.readouterr()
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_resume_with_a_conflicting_shape_is_one_line(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    assert (
        train(
            capsys,
            *TINY_FLAGS,
            "--data-dir",
            str(shakespeare_dir),
            "--out-dir",
            str(tmp_path),
            "--steps",
            "2",
        )[0]
        == 0
    )
    code, _, err = train(
        capsys,
        "--resume-training",
        str(tmp_path / "model_step_2.safetensors"),
        "--embedding-size",
        "64",
        "--steps",
        "4",
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--embedding-size 64 conflicts with checkpoint" in err
    # the saved optimizer state is AdamW's: Muon cannot take it over
    code, _, err = train(capsys, "--resume-training", str(tmp_path / "model_step_2"), "--optimizer", "muon")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "--optimizer muon conflicts with checkpoint" in err and "trained with adamw" in err


def test_sigterm_finishes_the_step_saves_and_exits_0(shakespeare_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nanogpt",
            "train",
            "--headless",
            *TINY_FLAGS,
            "--data-dir",
            str(shakespeare_dir),
            "--out-dir",
            str(tmp_path),
            "--steps",
            "100000",
            "--log-interval",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("step") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: finishing this step" in err
    stem = out.strip().splitlines()[-1].removeprefix("checkpoint: ")
    assert err.strip().splitlines()[-1] == f"Resume with: nanogpt train --resume-training {stem}"
    step = int(stem.rsplit("_", 1)[1])
    assert 1 <= step < 100000
    log = json.loads(Path(stem + ".training_log.json").read_text())
    assert log[-1]["step"] == step
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(stem).name + s
        for s in (
            ".safetensors", ".config.json", ".training_log.json", ".resume.safetensors", ".resume.json",
            ".manifest.json",
        )
    )


def test_ctrl_c_twice_leaves_no_empty_run_folder(shakespeare_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"  # the run creates it
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "nanogpt", "train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir),
            "--out-dir", str(out), "--steps", "100000", "--log-interval", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until training is under way
            if line.startswith("step") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)  # two signals sent at once would be delivered as one
        proc.send_signal(signal.SIGINT)  # the second: stop at once, mid-step or mid-save
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # stopped at once: nothing saved, so no folder; or, when the first Ctrl-C's save was done before the second
    # came (a busy machine), that whole set and exit 0
    assert proc.returncode in (0, 130), err
    held = sorted(p.name for p in out.iterdir()) if out.exists() else None
    assert held is None if proc.returncode == 130 else len(held) == 6, (proc.returncode, held, err)


def test_the_start_says_where_the_parameters_are_and_how_often_the_text_is_read(
    small_text_dir: Path, tmp_path: Path, capsys
) -> None:
    # 3,000 characters (2,700 training tokens) for a ~27k-parameter model, read many times over
    code, out, err = train(
        capsys, *TINY_FLAGS, "--data-dir", str(small_text_dir), "--out-dir", str(tmp_path), "--steps", "30",
        "--block-size", "16",
    )
    assert code == 0, err
    lines = out.splitlines()
    n_params = float(lines[0].split(": ", 1)[1].split("k parameters")[0]) * 1e3
    model = lines[1]
    assert model.startswith("model: ") and "in embeddings" in model and "in 2 blocks" in model
    emb, blocks = (float(x.split("k in")[0].split()[-1]) * 1e3 for x in model.split(", "))
    assert emb + blocks == pytest.approx(n_params, rel=0.01)
    # 30 steps x 8 sequences x 16 tokens over 2,700 training tokens
    assert lines[2] == f"data: 2.7k training tokens, read {30 * 8 * 16 / 2700:.1f} times in 30 steps"
    assert lines[3].startswith("note: the data is small for this model: 2.7k training tokens")
    assert f"Generate text with: nanogpt generate {tmp_path / 'model_step_30'}" in err


def test_one_step_is_singular(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    code, out, _ = train(capsys, *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path),
                         "--steps", "1", "--warmup-steps", "1")
    assert code == 0 and ", 1 step of " in out.splitlines()[0] and "in 1 step\n" in out
    assert "note: the warm-up (1 step) is as long as the run" in out
    code, out, _ = train(capsys, *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "b"),
                         "--steps", "2", "--warmup-steps", "1")
    assert code == 0 and "note: the warm-up" not in out  # step 2 is at the peak


@pytest.mark.parametrize(
    ("schedule", "resume_at", "said"),
    [
        # stopped before the decay: wsd goes on at the same rate, its decay moves to the new end
        ("wsd", 2, "was 1.00e-03 at step 2 and is 1.00e-03 at step 3; it decays linearly from step 9 to 16"),
        # stopped at the end of a cosine: the longer cosine starts high again, and the note says so
        ("cosine", 8, "re-stretched to end at step 16 (a jump: --lr-schedule wsd"),
        # stopped after its decay had begun: wsd climbs back too, and says why
        ("wsd", 8, "was 1.00e-04 at step 8 and is 8.88e-04 at step 9; it decays linearly from step 9 to 16 (the "
                   "checkpoint's decay had begun"),
    ],
)
def test_resume_with_more_steps_says_what_the_schedule_does(
    shakespeare_dir: Path, tmp_path: Path, capsys, schedule: str, resume_at: int, said: str
) -> None:
    common = [*TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path)]
    flags = ["--steps", "8", "--save-interval", "2", "--warmup-steps", "1", "--lr-schedule", schedule]
    assert train(capsys, *common, *flags)[0] == 0
    resumed = tmp_path / "resumed"  # a folder of its own: tmp_path holds the first run's later steps
    start = str(tmp_path / f"model_step_{resume_at}")
    # --schedule-steps: a finished run extended keeps its schedule unless asked to stretch it (issue 34)
    code, out, err = train(capsys, "--resume-training", start, "--steps", "16", "--schedule-steps", "16",
                           "--out-dir", str(resumed))
    assert code == 0, err
    assert "note: resuming with a new schedule (--steps 8 -> 16)" in err and said in err
    # the same settings again (a checkpoint of the resumed run, into another new folder): nothing to say
    again = ["--resume-training", str(resumed / "model_step_14"), "--out-dir", str(tmp_path / "b")]
    code, out, err = train(capsys, *again)
    assert code == 0 and "new schedule" not in err


def test_an_embedding_heavy_model_is_told_a_bpe_size_that_fixes_it(tmp_path: Path, capsys) -> None:
    # GPT-2's 50,257 tokens on a 2-block, 32-wide model: nearly all embedding; the hint names a learned BPE size
    (tmp_path / "t.txt").write_text(shakespeare_text()[:30_000], encoding="utf-8")
    assert main(["prepare", str(tmp_path / "t.txt"), "--tokenizer", "gpt2", "--out-dir", str(tmp_path / "gpt2")]) == 0
    code, out, err = train(capsys, *TINY_FLAGS, "--data-dir", str(tmp_path / "gpt2"), "--out-dir", str(tmp_path / "a"),
                           "--steps", "1")
    assert code == 0, err
    said = re.findall(r"`nanogpt prepare --tokenizer bpe --vocab-size (\d+)`", out)
    assert len(said) == 1, out
    # following it gives a model whose embeddings no longer dominate: no such hint
    flags = ["--tokenizer", "bpe", "--vocab-size", said[0], "--out-dir", str(tmp_path / "bpe")]
    assert main(["prepare", str(tmp_path / "t.txt"), *flags]) == 0
    code, out, err = train(capsys, *TINY_FLAGS, "--data-dir", str(tmp_path / "bpe"), "--out-dir", str(tmp_path / "b"),
                           "--steps", "1")
    assert code == 0 and "vocabulary" not in out and "embeddings (a" not in out, out
