"""The command line's own behaviour: mistyped flags, stray arguments, a bare `nanogpt`, help, data hints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine_fixtures import shakespeare_text

from nanogpt.cli import main
from nanogpt.flags import build_parser

SRC = Path(__file__).resolve().parents[1] / "src"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`nanogpt ARGS` in this process: (exit code, stdout, stderr); argparse's own exits included."""
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["train", "--setps", "100"], "did you mean --steps?"),
        (["train", "--learning_rate", "3e-4"], "did you mean --learning-rate?"),  # nanoGPT's spelling
        (["train", "--step", "100"], "did you mean --steps?"),  # abbreviations are refused
        (["generate", "out/model_step_1", "--temp", "0.5"], "did you mean --temperature?"),
        (["prepare", "--tokeniser", "gpt2"], "did you mean --tokenizer?"),
        (["train", "--lr", "1e-3"], "did you mean --learning-rate?"),  # not --lr-schedule, which it prefixes
        (["train", "--max_iters", "100"], "did you mean --steps?"),  # nanoGPT's names for ours
        (["train", "--n_layer", "2"], "did you mean --layer-count?"),
    ],
)
def test_a_mistyped_flag_is_named_by_its_subcommand_with_a_suggestion(capsys, args: list[str], said: str) -> None:
    code, out, err = run_cli(capsys, *args)
    assert code == 1 and out == ""
    assert err.startswith(f"nanogpt {args[0]}: error: unrecognized arguments: {args[-2]}")
    assert said in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("typed", "said"), [("trian", "; did you mean train?"), ("genrate", "; did you mean generate?")]
)
def test_a_mistyped_command_gets_the_closest_one(capsys, typed: str, said: str) -> None:
    code, out, err = run_cli(capsys, typed, "--steps", "3")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"nanogpt: error: unknown command '{typed}'") and err.strip().endswith(said)
    code, _, err = run_cli(capsys, "zzzz")
    assert code == 1 and "did you mean" not in err and "prepare, train, generate, export, plot" in err


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--beta1", "2"], "--beta1 must be in [0, 1), got 2.0"),
        (["--learning-rate", "nan"], "--learning-rate must be a positive number, got nan"),
        (["--preset", "baby-gpt", "--seed", str(2**64)], "--seed must be in"),
    ],
)
def test_impossible_settings_are_refused_before_data_or_torch(tmp_path: Path, flags: list[str], said: str) -> None:
    # no data named: the bundled corpus would be prepared into the cache first; nothing may happen before the check
    script = (
        "import sys; from nanogpt.cli import main; code = main(sys.argv[1:]); "
        "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(code)"
    )
    env = {**os.environ, "NANOGPT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script, "train", "--headless", *flags],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert done.returncode == 1 and done.stdout.strip() == "no torch"
    assert done.stderr.startswith("nanogpt train: error: ") and len(done.stderr.strip().splitlines()) == 1
    assert said in done.stderr and not (tmp_path / "cache").exists() and sorted(tmp_path.iterdir()) == []


def test_a_flag_nothing_resembles_gets_no_suggestion(capsys) -> None:
    code, _, err = run_cli(capsys, "train", "--zzzzzz")
    assert code == 1 and "did you mean" not in err and "--zzzzzz" in err


def test_every_parser_refuses_abbreviations() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert not parser.allow_abbrev
    assert all(not p.allow_abbrev for p in subparsers.values())


def test_a_text_file_given_to_train_says_to_prepare_it(capsys, tmp_path: Path) -> None:
    (tmp_path / "tinyshakespeare.txt").write_text(shakespeare_text()[:5000], encoding="utf-8")
    text = str(tmp_path / "tinyshakespeare.txt")
    code, _, err = run_cli(capsys, "train", text)
    assert code == 1 and f"run `nanogpt prepare {text}` first" in err
    code, _, err = run_cli(capsys, "train", "--headless", "--data-dir", text)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"is a file, not a prepared data folder: run `nanogpt prepare {text}`" in err


def test_a_prepared_folder_given_to_train_says_data_dir(capsys, shakespeare_dir: Path) -> None:
    code, _, err = run_cli(capsys, "train", str(shakespeare_dir))
    assert code == 1 and f"nanogpt train --data-dir {shakespeare_dir}" in err


def test_an_unprepared_folder_names_the_prepare_command(capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--headless", "--data-dir", str(tmp_path))
    assert code == 1 and f"run `nanogpt prepare YOUR_TEXT.txt --out-dir {tmp_path}` first" in err
    (tmp_path / "story.txt").write_text("once upon a time")
    code, _, err = run_cli(capsys, "train", "--headless", "--data-dir", str(tmp_path))
    assert f"run `nanogpt prepare {tmp_path / 'story.txt'} --out-dir {tmp_path}` first" in err


def test_an_unprepared_mixology_folder_is_prepared_as_a_whole(capsys, tmp_path: Path, monkeypatch) -> None:
    # the advice must not write into the source folder (`prepare YOUR_TEXT.txt --out-dir my_mix`)
    monkeypatch.chdir(tmp_path)
    for name, text in (("25_alice", shakespeare_text()[:4000].upper()), ("75_shakespeare", shakespeare_text()[:9000])):
        (tmp_path / "my_mix" / name).mkdir(parents=True)
        (tmp_path / "my_mix" / name / "text.txt").write_text(text, encoding="utf-8")
    code, _, err = run_cli(capsys, "train", "--headless", "--data-dir", "my_mix")
    assert code == 1 and len(err.strip().splitlines()) == 1
    said = "run `nanogpt prepare my_mix/` first, then train with --data-dir data/my_mix"
    assert said in err and "--out-dir" not in err
    # and what it says works: prepare as told, then the train command it names finds the data
    assert run_cli(capsys, "prepare", "--tokenizer", "char", "my_mix/")[0] == 0
    assert (tmp_path / "data" / "my_mix" / "vocab.json").is_file()
    assert sorted(p.name for p in (tmp_path / "my_mix").iterdir()) == ["25_alice", "75_shakespeare"]


def test_bare_nanogpt_lists_the_commands_and_exits_0(capsys) -> None:
    code, out, err = run_cli(capsys)
    assert code == 0 and err == ""
    for command in ("prepare", "train", "generate"):
        assert f"    {command} " in out


def test_help_names_values_alike_in_every_subcommand(capsys) -> None:
    helps = {}
    for command in ("prepare", "train", "generate"):
        code, helps[command], _ = run_cli(capsys, command, "--help")
        assert code == 0
    assert "--tokenizer {char,gpt2,bpe}" in helps["prepare"] and "--val-fraction X" in helps["prepare"]
    assert "--out-dir PATH" in helps["prepare"] and "--out-dir PATH" in helps["train"]
    assert "--tokens-to-generate N" in helps["generate"] and "--tokens-to-generate N" in helps["train"]
    assert "--temperature X" in helps["generate"] and "--learning-rate X" in helps["train"]
    assert "--seed N" in helps["generate"] and "--seed N" in helps["train"]


def test_train_help_says_which_defaults_the_preset_sets(capsys) -> None:
    _, out, _ = run_cli(capsys, "train", "--help")
    flat = " ".join(out.split())
    assert "(default: from the preset: 2000 for cpu-small, 2500 for baby-gpt)" in flat  # --steps
    assert "(default: from the preset: 24 for cpu-small, 64 for baby-gpt)" in flat  # --batch-size
    assert "(default: muon, from the preset)" in flat  # --optimizer: both default presets
    assert "(default: wsd, from the preset)" in flat  # --lr-schedule
    assert "(default: from the preset: 0.03 for cpu-small, 0.02 for baby-gpt)" in flat  # --muon-learning-rate
    assert "(default: from the preset: 0.85 for cpu-small, 0.95 for baby-gpt)" in flat  # --muon-momentum
    assert "--log-interval N steps between headless progress lines (default: 10)" in flat  # no preset sets it


def test_under_torchrun_a_missing_data_folder_is_the_last_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    missing = tmp_path / "nonexistent"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
         "-m", "nanogpt", "train", "--headless", "--data-dir", str(missing)],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1
    lines = [line.strip() for line in result.stderr.strip().splitlines()]
    # torchrun's report ends with the process's error; ours is that error, not a link to torchrun's docs
    assert lines[-2] == f"traceback : nanogpt train: error: data folder not found: {missing} " \
        "(make one from a text file with `nanogpt prepare FILE`)"


def test_a_run_folder_stands_for_its_latest_checkpoint(capsys, shakespeare_dir: Path, tmp_path: Path) -> None:
    from engine_fixtures import TINY_FLAGS

    out = tmp_path / "run"
    train = ["train", "--data-dir", str(shakespeare_dir), *TINY_FLAGS, "--headless", "--out-dir", str(out)]
    assert main([*train, "--steps", "4", "--save-interval", "2"]) == 0
    assert main(["generate", str(out), "--tokens-to-generate", "5", "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert f"using its latest checkpoint, {out / 'model_step_4'}" in err  # step 4, not step 2
    # a resume and an export take the folder too, and resume from its latest step
    assert main(["train", "--resume-training", str(out), "--steps", "6", "--headless"]) == 0
    assert (out / "model_step_6.safetensors").is_file()
    assert main(["export", str(out), str(tmp_path / "hf")]) == 0
    assert f"exported {out / 'model_step_6'}" in capsys.readouterr().out


def test_a_folder_without_checkpoints_is_listed(capsys, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    assert main(["generate", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint in folder" in err[0] and "it holds: notes.txt, sub/" in err[0]
    empty = tmp_path / "sub"
    assert main(["train", "--resume-training", str(empty)]) == 1
    assert "it is empty" in capsys.readouterr().err
