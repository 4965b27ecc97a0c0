"""A user's second day (issue 34): config files, prompts from files, listing runs, presets named, lineage,
reusing a run's tokenizer and weights; each through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS

from nanogpt.cli import main

TINY_TOML = """
layer-count = 2
head_count = 2
n_embd = 32
block-size = 32
batch_size = 8
eval-iters = 4
device = "cpu"
compile = false
dtype = "float32"
warmup-steps = 2
steps = 3
headless = true
"""


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def saved(stem: Path) -> dict:
    return json.loads(stem.with_name(stem.name + ".config.json").read_text())


def test_a_toml_config_sets_the_run_and_typed_flags_win(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    toml = tmp_path / "exp.toml"
    toml.write_text(TINY_TOML + f'data_dir = "{shakespeare_dir}"\nout_dir = "{tmp_path / "a"}"\n')
    code, _, err = run(capsys, "train", "--config", str(toml), "--steps", "4")
    assert code == 0, err
    first = saved(tmp_path / "a" / "model_step_4")  # --steps 4 typed wins over the file's 3
    assert (first["model"]["n_layer"], first["model"]["n_embd"], first["train"]["eval_iters"]) == (2, 32, 4)
    # the run's saved config fed back trains the same run again (into a folder of its own)
    code, _, err = run(capsys, "train", "--headless", "--config", str(tmp_path / "a" / "model_step_4.config.json"),
                       "--out-dir", str(tmp_path / "b"))
    assert code == 0, err
    again = saved(tmp_path / "b" / "model_step_4")
    assert again["model"] == first["model"]
    assert {**again["train"], "out_dir": None} == {**first["train"], "out_dir": None}


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("eval_iter = 4\n", "unknown setting 'eval_iter'; did you mean eval-iters?"),
        ("steps = \"many\"\n", "steps (--steps) must be a whole number, got 'many'"),
        ("optimizer = \"sgd\"\n", "optimizer (--optimizer) must be one of adamw, muon"),
        ("steps = [\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path: Path, capsys, text: str, said: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    code, out, err = run(capsys, "train", "--config", str(toml))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and said in err and "Traceback" not in err


def test_a_missing_config_file_is_one_line(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "nope.toml"))
    assert code == 1 and err == f"nanogpt train: error: config file not found: {tmp_path / 'nope.toml'}\n"


def test_generate_reads_the_prompt_from_a_file(trained: Path, tmp_path: Path, capsys) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("To be,\nor not", encoding="utf-8")
    code, out, err = run(capsys, "generate", str(trained), "--prompt-file", str(prompt), "--tokens-to-generate", "5")
    assert code == 0, err
    assert out.startswith("To be,\nor not") and len(out) >= len("To be,\nor not") + 5
    code, _, err = run(capsys, "generate", str(trained), "--prompt-file", str(tmp_path / "none.txt"))
    assert code == 1 and err == f"nanogpt generate: error: prompt file not found: {tmp_path / 'none.txt'}\n"
    code, _, err = run(capsys, "generate", str(trained), "--prompt-file", str(prompt), "--prompt", "x")
    assert code == 1 and "give --prompt or --prompt-file, not both" in err


def test_runs_lists_each_run_newest_first(shakespeare_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--validation-interval", "2"]
    assert run(capsys, *common, "--steps", "4", "--out-dir", "runs/first")[0] == 0
    assert run(capsys, *common, "--steps", "2", "--out-dir", "runs/second", "--layer-count", "1")[0] == 0
    code, out, err = run(capsys, "runs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["folder", "preset/shape", "tokenizer", "steps", "best", "val", "at", "trained", "saved"]
    assert [line.split()[0] for line in lines[1:]] == ["runs/second", "runs/first"]  # newest first
    assert "1L 2H 32E b32" in lines[1] and "char 65" in lines[1] and " bpb " in lines[1]
    code, out, _ = run(capsys, "runs", "runs", "--json")
    listed = json.loads(out)
    first = next(r for r in listed if r["folder"].endswith("first"))
    assert (first["step"], first["shape"]["n_layer"], first["tokenizer"], first["vocab_size"]) == (4, 2, "char", 65)
    assert first["best_step"] in (2, 4) and first["best_validation_bpb"] > 0 and first["seconds_trained"] > 0
    assert first["latest"].endswith("model_step_4")


def test_runs_of_an_empty_or_missing_folder(tmp_path: Path, capsys) -> None:
    assert run(capsys, "runs", str(tmp_path)) == (0, "", f"no runs in {tmp_path} (a run is a folder of model_step_N "
                                                         "checkpoints)\n")
    assert run(capsys, "runs", str(tmp_path), "--json")[:2] == (0, "[]\n")
    code, _, err = run(capsys, "runs", str(tmp_path / "gone"))
    assert code == 1 and err == f"nanogpt runs: error: no folder {tmp_path / 'gone'}\n"


def test_a_size_flag_keeps_the_presets_recipe_and_the_run_names_both(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    flags = [f for f in TINY_FLAGS if f not in ("--optimizer", "adamw")]  # the preset's optimizer, then
    code, out, err = run(capsys, "train", "--headless", *flags, "--data-dir", str(shakespeare_dir), "--out-dir",
                         str(tmp_path), "--steps", "2")
    assert code == 0, err
    said = next(line for line in out.splitlines() if line.startswith("preset "))
    assert said.startswith("preset cpu-small; changed: ") and "--layer-count 2" in said
    assert "recipe: Muon lr 0.03" in out and "wsd schedule" in out  # cpu-small's, at the shape typed
    meta = saved(tmp_path / "model_step_2")
    assert meta["preset"] == "cpu-small" and meta["changed"]["n_layer"] == 2 and "optimizer" not in meta["changed"]
    assert meta["train"]["optimizer"] == "muon" and meta["train"]["lr_schedule"] == "wsd"


def test_extending_a_finished_run_keeps_its_last_rate_and_its_lineage(
    shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    first = ["train", "--headless", *TINY_FLAGS, "--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "r"),
             "--steps", "6", "--warmup-steps", "1", "--lr-schedule", "wsd", "--log-interval", "1"]
    assert run(capsys, *first)[0] == 0
    code, out, err = run(capsys, "train", "--headless", "--resume-training", str(tmp_path / "r"), "--steps", "9")
    assert code == 0, err
    assert "note: extending finished run" in err and "stays at its last value, 1.00e-04" in err
    rates = [line.rsplit("lr ", 1)[1].split()[0] for line in out.splitlines() if "| lr " in line]
    assert rates == ["1.00e-04"] * 3  # steps 7-9 at step 6's rate: no warm-up, no climb back to the peak
    history = saved(tmp_path / "r" / "model_step_9")["lineage"]
    assert [(e["start"], e["at_step"]) for e in history] == [("new", 0), ("resume", 6)]
    assert history[0]["preset"] == "cpu-small" and history[1]["changed"] == {"steps": 9}
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "hf")]) == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "nanogpt train --preset cpu-small" in card and "--lr-schedule wsd" in card
    assert f"nanogpt train --resume-training {tmp_path / 'r' / 'model_step_6'} --steps 9" in card


def test_fine_tune_a_run_on_other_text_with_its_tokenizer(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    base = tmp_path / "base"
    common = ["train", "--headless", *TINY_FLAGS, "--steps", "2"]
    assert run(capsys, *common, "--data-dir", str(shakespeare_dir), "--out-dir", str(base))[0] == 0
    other = tmp_path / "other.txt"
    other.write_text("Ünïcode the base run never saw; then plain words, again and again.\n" * 400, encoding="utf-8")
    code, _, err = run(capsys, "prepare", str(other), "--tokenizer-from", str(base), "--out-dir", str(tmp_path / "d"))
    assert code == 0, err
    assert f"tokenizer: {base}'s (char, 65 tokens)" in err and "left out 2 character(s)" in err and "'Ü'" in err
    vocab = json.loads((tmp_path / "d" / "vocab.json").read_text())
    assert vocab["itos"] == saved(base / "model_step_2")["tokenizer"]["itos"]
    # the run folder's weights start a new run of its own on the other text
    code, out, err = run(capsys, *common, "--init-from", str(base), "--data-dir", str(tmp_path / "d"),
                         "--out-dir", str(tmp_path / "tuned"))
    assert code == 0, err
    assert "\npreset finetune; changed: " in out
    history = saved(tmp_path / "tuned" / "model_step_2")["lineage"]
    assert history[0]["start"] == "init-from" and history[0]["from"] == str(base / "model_step_2")
    # a BPE of another run is reused the same way; a checkpoint stem names it as well as its folder
    code, _, err = run(capsys, "prepare", str(other), "--out-dir", str(tmp_path / "bpe"), "--vocab-size", "300")
    assert code == 0, err
    code, _, err = run(capsys, "prepare", str(other), "--tokenizer-from", str(tmp_path / "bpe" / "vocab.json"),
                       "--out-dir", str(tmp_path / "bpe2"))
    size = json.loads((tmp_path / "bpe" / "vocab.json").read_text())["vocab_size"]
    assert code == 0 and f"(bpe, {size} tokens)" in err
    assert (tmp_path / "bpe" / "train.bin").read_bytes() == (tmp_path / "bpe2" / "train.bin").read_bytes()
    code, _, err = run(capsys, "prepare", str(other), "--tokenizer-from", str(tmp_path / "nothing"))
    assert code == 1 and "no such run, checkpoint, prepared folder or vocab.json" in err
