"""The README's examples and those of the docs pages pasted in order, as a new user does: each command exits 0,
each run finds its folder, `generate` prints text, and what each command names or makes exists.

The commands are the `nanogpt ...` lines of each page's ```bash blocks (so the test follows the pages), run
through the real CLI, each page in a fresh folder of its own (a page's examples build only on each other). To
take seconds, not the pages' minutes, the tiny model's flags are appended to `train` (typed flags win over the
presets) and every step count is divided by 100, in `--steps`, `--validation-interval`, `--save-interval`
and the checkpoint names alike (a run without `--steps` does 10): the folders, the order and which checkpoint
each command names are the pages'.

Left out, each for its reason (`skipped` says which):
- the user's own text: a command naming my_text.txt, a mixology folder my_mix/, alice.txt or data/mine (what
  the pages prepare from my_text.txt), my_notes.txt or a config file of theirs (my_experiment.toml), and the
  commands after it in the same block, which build on what it would have made; the test has no such text to give;
- the trackers (--tensorboard, --wandb): optional extras, read by a second program (tensorboard, wandb sync);
- every line that does not start with `nanogpt `: another program (pip, which would change the environment
  under test; llama-cli, ollama, tensorboard), a launcher (torchrun and srun start processes, which `main`
  called in this process cannot be) or a shell loop (its commands are the user's, over their own text).
`nanogpt plot` runs: matplotlib comes with the `dev` extra of the README's set-up command.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS

from nanogpt.cli import main

ROOT = Path(__file__).resolve().parents[1]
# the pages whose commands run, and the commands each must yield (so a command the parser drops is noticed)
PAGES = {
    "README.md": ["train", "prepare", "train", "generate", "export", "plot"],
    "docs/data.md": ["prepare", "prepare"],
    "docs/training.md": ["prepare", *["train"] * 9],
    "docs/generate-and-export.md": ["prepare", "train", *["generate"] * 4, *["export"] * 3],
    "docs/speed.md": ["train", "train"],
    "docs/second-day.md": ["train", "train", "runs", "runs", "train"],
}
# pages linked before they land (written on a branch of their own): none now
LANDING: set[str] = set()
OWN_TEXT = ("my_text", "my_mix", "alice.txt", "data/mine", "my_books", "crawl.jsonl", "fineweb/", "dump.jsonl",
            "my_experiment.toml", "my_notes.txt")
TRACKERS = ("--tensorboard", "--wandb")
STEP_FLAGS = ("--steps", "--validation-interval", "--save-interval")


def skipped(line: str) -> str | None:
    """Why the command `line` is left out (see the module's docstring), or None when it runs."""
    if not line.startswith("nanogpt "):
        return "another program, a launcher or a shell loop"
    if any(word in line for word in OWN_TEXT):
        return "the user's own text"
    if any(flag in line for flag in TRACKERS):
        return "a tracker: an extra, and a second program"
    return None


def page_commands(page: str) -> list[list[str]]:
    """The `nanogpt ...` commands of `page`'s ```bash blocks that run, in order; comments and `> FILE` dropped."""
    commands, in_block, tainted = [], False, False
    for line in (ROOT / page).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_block, tainted = line.startswith("```bash") and not in_block, False
        elif in_block and line.strip():
            reason = skipped(line)
            tainted = tainted or reason == "the user's own text"
            if reason is None and not tainted:
                argv = shlex.split(re.sub(r"\s+#.*$", "", line))
                commands.append(argv[1 : argv.index(">")] if ">" in argv else argv[1:])
    return commands


@pytest.mark.parametrize("page", PAGES)
def test_the_commands_are_found(page: str) -> None:
    assert [c[0] for c in page_commands(page)] == PAGES[page]


def test_every_page_with_commands_is_run() -> None:
    """A page whose commands no test pastes drifts: each docs page with a `nanogpt` command that runs is in PAGES."""
    for page in (f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")):
        assert page in PAGES or not page_commands(page), f"{page} has commands: add it to PAGES (or to the skips)"


def test_the_docs_pages_are_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name}" in readme, page.name


def anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, spaces to hyphens, other punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_links_between_the_pages_lead_somewhere() -> None:
    for page in ["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]:
        text = (ROOT / page).read_text(encoding="utf-8")
        for target, _, fragment in re.findall(r"\]\(([^)#\s]*)(#([^)\s]+))?\)", text):
            if target.startswith("http"):
                continue
            linked = (ROOT / page).parent / target if target else ROOT / page
            if not linked.exists() and linked.relative_to(ROOT).as_posix() in LANDING:
                continue
            assert linked.exists(), f"{page}: {target}"
            if fragment:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE)
                assert fragment in map(anchor, headings), f"{page}: {target}#{fragment}"


def short(n: str) -> str:
    """A step count divided by 100, at least 1."""
    return str(max(1, int(n) // 100))


def shortened(argv: list[str]) -> list[str]:
    """`argv` with its step counts divided by 100; `train` gets the tiny model, headless."""
    argv = [re.sub(r"model_step_(\d+)", lambda m: f"model_step_{short(m[1])}", a) for a in argv]
    for flag in STEP_FLAGS:
        if flag in argv:
            i = argv.index(flag) + 1
            argv[i] = short(argv[i])
    if "--time" in argv:  # a budget of seconds, not minutes; the plan sets the steps
        argv[argv.index("--time") + 1] = "8s"
    if argv[0] == "train":
        steps = [] if "--steps" in argv or "--time" in argv else ["--steps", "10"]
        argv += ["--headless", *TINY_FLAGS, "--eval-iters", "2", *steps]
    return argv


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def check_made(argv: list[str], out: str, folder: Path) -> None:
    """What `argv` said it made is there: a run's last checkpoint (in its --out-dir, at its --steps), an export,
    a chart; `generate` printed its text."""
    command = shlex.join(argv)
    if argv[0] == "train" and "--plan" in argv:  # a plan said, nothing trained
        named = value(argv, "--out-dir")
        assert "on this machine: " in out and not (named and (folder / named).exists()), command
    elif argv[0] == "train":
        stem = re.findall(r"^checkpoint: (.+)$", out, re.MULTILINE)[-1]
        assert (folder / f"{stem}.manifest.json").is_file(), command
        assert "--time" in argv or stem.endswith(f"/model_step_{value(argv, '--steps')}"), command
        resumed = value(argv, "--resume-training")
        where = value(argv, "--out-dir") or (str(Path(resumed).parent) if resumed else None)
        assert where is None or Path(stem).parent == Path(where), command
    elif argv[0] == "generate":
        assert len(out) > 100, command  # the text (a 10-step model may write only spaces)
    elif argv[0] == "export":
        made = folder / argv[2]
        assert made.is_file() if "gguf" in argv else (made / "model.safetensors").is_file(), command
    elif argv[0] == "plot":
        assert (folder / value(argv, "-o")).is_file(), command


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """nanogpt's own cache (the bundled corpus prepared once), shared by the pages as a user's is."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("page", PAGES)
def test_the_page_pasted_in_order_works(page: str, cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NANOGPT_CACHE_DIR", str(cache))
    for argv in map(shortened, page_commands(page)):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)}: {err}"
        check_made(argv, out, tmp_path)
    if page == "README.md":  # the set-up run took out/, the tour's runs/short/
        for made in ("out/model_step_10.manifest.json", "runs/short/model_step_4.manifest.json",
                     "hf/my-model/model.safetensors", "runs.png"):
            assert (tmp_path / made).is_file(), made
