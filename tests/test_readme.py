"""The README's examples pasted in order, as a new user does: each run finds its folder, each stem exists.

The commands are read out of README.md (so the test follows the README), run through the real CLI in a fresh
folder. To take seconds, not the README's minutes, the tiny model's flags are appended (typed flags win over
the presets) and every step count is divided by 100, in `--steps` and in the checkpoint names alike (a run
without `--steps` does 10): the folders, the order and which checkpoint each command names are the README's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from engine_fixtures import TINY_FLAGS

from nanogpt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
# the sections whose `nanogpt` commands a user pastes in order (other sections need their own text or extras)
SECTIONS = ("## Set up and run", "### `nanogpt prepare`", "### `nanogpt train`", "### `nanogpt generate`",
            "### `nanogpt export`")


def readme_commands() -> list[list[str]]:
    """The `nanogpt ...` lines of the ```bash blocks of SECTIONS, in order; comments and `> FILE` dropped.
    Not those that read the user's own text (my_text.txt and what it prepares, a mixology folder my_mix/), nor
    the tracker's (an extra, and a second program)."""
    commands, section, in_block = [], None, False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not in_block:
            section = line if line.startswith(SECTIONS) else None
        elif line.startswith("```"):
            in_block = line.startswith("```bash") and section is not None
        elif in_block and line.startswith("nanogpt "):
            argv = shlex.split(re.sub(r"\s+#.*$", "", line))
            argv = argv[: argv.index(">")] if ">" in argv else argv
            if not any(word in line for word in ("my_text", "my_mix", "alice.txt", "data/mine", "--tensorboard")):
                commands.append(argv[1:])
    return commands


def test_the_readme_commands_are_found() -> None:
    commands = readme_commands()
    assert [c[0] for c in commands] == ["train", "prepare", *["train"] * 6, *["generate"] * 4, "export"]


def shortened(argv: list[str]) -> list[str]:
    """`argv` with its step counts divided by 100 (--steps, --validation-interval, model_step_N)."""
    argv = [re.sub(r"model_step_(\d+)", lambda m: f"model_step_{int(m[1]) // 100}", a) for a in argv]
    for flag in ("--steps", "--validation-interval"):
        if flag in argv:
            i = argv.index(flag) + 1
            argv[i] = str(int(argv[i]) // 100)
    if argv[0] == "train":
        argv += ["--headless", *TINY_FLAGS, "--eval-iters", "2", *([] if "--steps" in argv else ["--steps", "10"])]
    return argv


def test_the_readme_pasted_in_order_works(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(tmp_path / "cache"))
    for argv in map(shortened, readme_commands()):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {err}"
        if argv[0] == "generate":
            assert len(out) > 100, shlex.join(argv)  # the text (a 10-step model may write only spaces)
    for stem in ("out/model_step_10", "out-2/model_step_10", "runs/full/model_step_10", "runs/short/model_step_8"):
        assert (tmp_path / f"{stem}.manifest.json").is_file(), stem
    assert (tmp_path / "hf" / "my-model" / "model.safetensors").is_file()
