"""Hostile and damaged input (issue 16, items 3 and 7-10): each case is refused with one line and exit code 1,
before anything large is allocated, through the real CLI on real small files.

One table per kind of input: flags, checkpoint files edited by hand, vocabularies, prepare's sources.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS
from safetensors.torch import load_file, save_file

from nanogpt.cli import main
from nanogpt.config import ModelConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT
from nanogpt.prepare.encode import Encoder, Part

SRC = Path(__file__).resolve().parents[1] / "src"


def run(capsys, *args: str) -> tuple[int, str]:
    """`nanogpt ARGS` in this process: (exit code, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own checks exit from inside parse_args
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, message: str, after_progress: bool = False) -> None:
    """Exit code 1 and one error line holding `message`; with `after_progress`, prepare's progress lines
    (stderr in a log) may come before it."""
    assert code == 1, err
    lines = err.strip().splitlines()
    assert (after_progress or len(lines) == 1) and "Traceback" not in err, err
    assert lines[-1].startswith("nanogpt ") and ": error: " in lines[-1] and message in lines[-1], err


# ----------------------------------------------------------------------------- flags (items 9, 10)
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--learning-rate", "nan"], "--learning-rate must be a positive number"),
        (["--learning-rate", "inf"], "--learning-rate must be a positive number"),
        (["--beta1", "2"], "--beta1 must be in [0, 1)"),
        (["--beta1", "nan"], "--beta1 must be in [0, 1)"),
        (["--beta2", "-0.5"], "--beta2 must be in [0, 1)"),
        (["--seed", "99999999999999999999"], "--seed must be in [0, 9223372036854775807]"),
        (["--grad-clip", "nan"], "--grad-clip must be >= 0"),
        (["--grad-clip", "-1"], "--grad-clip must be >= 0"),
        (["--weight-decay", "-0.1"], "--weight-decay must be a number >= 0"),
        (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
        (["--min-learning-rate", "nan"], "--min-learning-rate must be in [0, --learning-rate]"),
    ],
)
def test_impossible_training_flags_are_one_line(
    flags: list[str], message: str, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    code, err = run(
        capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(shakespeare_dir),
        "--out-dir", str(out), *flags,
    )
    assert_one_line(code, err, message)
    assert not out.exists()


def test_generate_refuses_a_seed_torch_cannot_take(trained: Path, capsys) -> None:
    code, err = run(capsys, "generate", str(trained), "--seed", "99999999999999999999")
    assert_one_line(code, err, "--seed must be in [0, 9223372036854775807]")


# ----------------------------------------------------------------------------- sizes that cannot be (item 7)
# Run in a child process whose address space is capped at 3 GiB: a check that came after the allocation
# fails there with a traceback instead of filling this machine's memory.
LIMITED = """
import contextlib, io, json, resource, signal, sys
{limit}
from nanogpt.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append((main(argv), err.getvalue()))
print(json.dumps(results))
"""


ADDRESS_SPACE = "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))"
# files limited to 20,000 bytes, as on a full disk: SIGXFSZ ignored, so that a write past it fails with EFBIG
FILE_SIZE = "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))"


def run_limited(*commands: list[str], limit: str = ADDRESS_SPACE) -> list[tuple[int, str]]:
    """Each command's (exit code, stderr), run by main() in one child process under `limit` (by default a
    3 GiB address space)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", LIMITED.format(limit=limit), json.dumps(list(commands))],
        capture_output=True, text=True, env=env, check=False, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(r) for r in json.loads(done.stdout)]


# The five files of a checkpoint, as a hostile user edits them (named here, not taken from checkpoint/: a
# whole-set manifest, where there is one, stays behind, so that these tests reach the checks of each file)
CHECKPOINT_FILES = (".safetensors", ".config.json", ".training_log.json", ".resume.safetensors", ".resume.json")


def copy_checkpoint(stem: Path, folder: Path) -> Path:
    """A copy of checkpoint `stem`'s five files in `folder`: its stem there."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in CHECKPOINT_FILES:
        shutil.copy(stem.with_name(stem.name + suffix), folder / (stem.name + suffix))
    return folder / stem.name


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_config_sizes_are_checked_against_the_weights_header_before_building(trained: Path, tmp_path: Path) -> None:
    edits = {
        "n_layer": {"n_layer": 1_000_000},
        "n_embd": {"n_embd": 10**10, "n_head": 1},
        "vocab_size": {"vocab_size": 10**6},
        "block_size": {"block_size": 10**10},
    }
    commands, expected = [], []
    for name, values in edits.items():
        stem = copy_checkpoint(trained, tmp_path / name)
        edit_json(stem.with_name(stem.name + ".config.json"), lambda m, v=values: m["model"].update(v))
        for command in (["generate", str(stem)], ["train", "--headless", "--resume-training", str(stem)]):
            commands.append(command)
            expected.append(f"checkpoint config says {name} {values[name]}, but its weights")
    for (code, err), message in zip(run_limited(*commands), expected, strict=True):
        assert_one_line(code, err, message)


def test_a_run_that_cannot_fit_is_refused_before_building(shakespeare_dir: Path, tmp_path: Path) -> None:
    cannot_fit = [
        ["--layer-count", "1000000"],
        ["--embedding-size", "65536", "--head-count", "1"],
        ["--batch-size", "1000000000"],
        ["--validation-batch", "1000000000"],
    ]
    common = ["train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(shakespeare_dir)]
    results = run_limited(*([*common, "--out-dir", str(tmp_path / "out"), *flags] for flags in cannot_fit))
    for code, err in results:
        assert_one_line(code, err, "this run will not fit")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_by_arithmetic_is_the_models(bias: bool) -> None:
    cfg = ModelConfig(vocab_size=65, block_size=16, n_layer=3, n_head=2, n_embd=24, bias=bias)
    assert cfg.parameter_count() == sum(p.numel() for p in GPT(cfg).parameters())


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("model", {"n_layer": 2.0}, "n_layer must be of type int, got 2.0"),
        ("model", {"n_head": True}, "n_head must be of type int"),
        ("train", {"learning_rate": "fast"}, "learning_rate must be of type float, got 'fast'"),
        ("train", {"compile": "yes"}, "compile must be of type bool | None"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_line(
    section: str, values: dict, message: str, trained: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(trained, tmp_path)
    edit_json(stem.with_name(stem.name + ".config.json"), lambda m: m[section].update(values))
    for command in (["generate", str(stem)], ["train", "--headless", "--resume-training", str(stem)]):
        code, err = run(capsys, *command)
        assert_one_line(code, err, "checkpoint config has invalid settings: " + message)


# ----------------------------------------------------------------------------- resume state (item 8)
def _replace_step(name: str, value):
    return lambda state: state.update({name: value})


def _drop_optimizer_tensors(stem: Path, keep) -> None:
    path = stem.with_name(stem.name + ".resume.safetensors")
    tensors = load_file(path)
    save_file({k: v for k, v in tensors.items() if keep(k)}, path)


@pytest.mark.parametrize(
    ("suffix", "change", "message"),
    [
        (".resume.json", _replace_step("step", -100), "is invalid (no step"),
        (".resume.json", _replace_step("step", 2), "its step 2 is not the config's 3"),
        (".resume.json", _replace_step("step", 10**30), "is invalid (no step"),
        (".config.json", _replace_step("step", -100), "has no step"),
        (".resume.json", _replace_step("batch_counter", "abc"), "batch_counter 'abc' is not a whole number"),
        (".resume.json", _replace_step("batch_counter", [1]), "batch_counter [1] is not a whole number"),
        (".resume.json", _replace_step("batch_counter", -5), "batch_counter -5 is not a whole number"),
        (".resume.json", _replace_step("batch_counter", 10**30), "batch_counter 1000000000000000000000000000000"),
        (".resume.json", _replace_step("batch_counter", 2), "batch_counter 2 is not a whole number between"),
        (".resume.json", _replace_step("world_size", 0), "world_size 0 is not a whole number >= 1"),
        (".resume.json", _replace_step("seed", 7), "its seed 7 is not the config's 1337"),
        (".training_log.json", lambda log: log.append({"step": "x"}), "entry 3 is not a step"),
        (".training_log.json", lambda log: log[0].update(loss="low"), "entry 0 has a loss that is not a number"),
        (".training_log.json", lambda log: log.append(5), "entry 3 is not a step"),
    ],
)
def test_resume_state_is_checked(suffix: str, change, message: str, trained: Path, tmp_path: Path, capsys) -> None:
    stem = copy_checkpoint(trained, tmp_path / "ckpt")
    edit_json(stem.with_name(stem.name + suffix), change)
    code, err = run(capsys, "train", "--headless", "--steps", "4", "--resume-training", str(stem))
    assert_one_line(code, err, message)
    assert not stem.with_name("model_step_4.safetensors").exists()


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (lambda name: False, "holds no moments although the model has trained"),
        (lambda name: not name.startswith("optim.0."), "optimizer state is incomplete (" ),
        (lambda name: not name.endswith(".exp_avg_sq"), "optimizer state is incomplete ("),
    ],
    ids=["empty", "one-parameter-missing", "one-moment-missing"],
)
def test_missing_optimizer_moments_are_refused_not_reset(
    keep, message: str, trained: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(trained, tmp_path / "ckpt")
    _drop_optimizer_tensors(stem, keep)
    code, err = run(capsys, "train", "--headless", "--steps", "4", "--resume-training", str(stem))
    assert_one_line(code, err, message)


def _sparse(path: Path, size: int) -> None:
    """Make `path` a file of `size` bytes without writing them (a hole: no disk used)."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    ("suffix", "size", "message"),
    [
        (".config.json", 1 << 30, "checkpoint config {path} is 1,024 MiB, more than such a file can hold (64 MiB)"),
        (".training_log.json", 300 << 20, "training log {path} is 300 MiB, more than such a file can hold (256 MiB)"),
        (".resume.json", 2 << 20, "resume state {path} is 2 MiB, more than such a file can hold (1 MiB)"),
    ],
)
def test_oversized_checkpoint_json_is_refused_unread(
    suffix: str, size: int, message: str, trained: Path, tmp_path: Path, capsys
) -> None:
    stem = copy_checkpoint(trained, tmp_path / "ckpt")
    path = stem.with_name(stem.name + suffix)
    _sparse(path, size)
    code, err = run(capsys, "train", "--headless", "--resume-training", str(stem))
    assert_one_line(code, err, message.format(path=path))


# ----------------------------------------------------------------------------- vocabularies (items 8, 9)
def data_copy(shakespeare_dir: Path, folder: Path) -> Path:
    shutil.copytree(shakespeare_dir, folder)
    return folder


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["itos"].__setitem__(0, 5), "itos[0] is 5, not a single character"),
        (lambda m: m["itos"].__setitem__(0, ["a"]), "itos[0] is ['a'], not a single character"),
        (lambda m: m["itos"].__setitem__(0, "ab"), "itos[0] is 'ab', not a single character"),
        (lambda m: m["itos"].__setitem__(-1, "\ud800"), "itos[64] is '\\ud800', a lone surrogate"),
        (lambda m: m["itos"].reverse(), "itos is not sorted by code point without repeats"),
    ],
    ids=["int", "list", "two-characters", "lone-surrogate", "unsorted"],
)
def test_a_broken_char_vocabulary_is_refused_at_the_start(
    change, message: str, shakespeare_dir: Path, tmp_path: Path, capsys
) -> None:
    data = data_copy(shakespeare_dir, tmp_path / "data")
    edit_json(data / "vocab.json", change)
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(data),
                    "--out-dir", str(tmp_path / "out"))
    assert_one_line(code, err, message)
    assert not (tmp_path / "out").exists()


def test_an_oversized_vocabulary_is_refused_unread(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    data = data_copy(shakespeare_dir, tmp_path / "data")
    _sparse(data / "vocab.json", 1 << 30)
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(data))
    assert_one_line(code, err, "is 1,024 MiB, more than such a file can hold (64 MiB)")


def test_junk_in_vocab_json_is_not_copied_into_checkpoints(shakespeare_dir: Path, tmp_path: Path, capsys) -> None:
    data = data_copy(shakespeare_dir, tmp_path / "data")
    edit_json(data / "vocab.json", lambda m: m.update(junk="x" * 1000, stoi={"junk": 1}))
    out = tmp_path / "out"
    code, err = run(capsys, "train", "--headless", *TINY_FLAGS, "--steps", "1", "--data-dir", str(data),
                    "--out-dir", str(out))
    assert code == 0, err
    saved = json.loads((out / "model_step_1.config.json").read_text())["tokenizer"]
    assert "junk" not in saved
    assert saved["stoi"] == {c: i for i, c in enumerate(saved["itos"])}  # rebuilt from itos, not copied


# ----------------------------------------------------------------------------- prepare's sources (items 3, 9, 10)
def _half_of(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _prepare(capsys, source: Path, out: Path) -> tuple[int, str]:
    return run(capsys, "prepare", "--tokenizer", "char", str(source), "--out-dir", str(out))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.with_name("cut.txt.gz").write_bytes(_half_of(gzip.compress(b"hello world\n" * 5000))),
         "is not a whole gzip file"),
        (lambda p: p.with_name("plain.txt.gz").write_text("hello world\n" * 100), "is named .gz but is not gzip"),
        (lambda p: Path(os.fsdecode(os.fsencode(p.parent) + b"/caf\xe9.txt")).write_text("hello world\n" * 100),
         "is not UTF-8: rename it first"),
    ],
    ids=["truncated-gz", "plain-text-named-gz", "latin1-file-name"],
)
def test_unreadable_sources_are_one_line(make, message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "src").mkdir()
    make(tmp_path / "src" / "placeholder")
    (source,) = (tmp_path / "src").iterdir()
    code, err = _prepare(capsys, source, tmp_path / "out")
    assert_one_line(code, err, message, after_progress=True)
    assert not (tmp_path / "out").exists()


def test_a_mixology_source_with_a_file_name_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    sub = tmp_path / "mix" / "100_text"
    sub.mkdir(parents=True)
    Path(os.fsdecode(bytes(sub) + b"/caf\xe9.txt")).write_text("hello world\n" * 100)
    code, err = _prepare(capsys, tmp_path / "mix", tmp_path / "out")
    assert_one_line(code, err, "caf\\xe9.txt' is not UTF-8: rename it first", after_progress=True)


def test_an_unreadable_mixology_sub_folder_is_refused_not_skipped(tmp_path: Path) -> None:
    for name in ("50_a", "50_b/inner"):
        (tmp_path / "mix" / name).mkdir(parents=True)
        (tmp_path / "mix" / name / "text.txt").write_text("hello world\n" * 200)
    locked = tmp_path / "mix" / "50_b" / "inner"
    locked.chmod(0)
    command = [sys.executable, "-m", "nanogpt", "prepare", str(tmp_path / "mix"), "--out-dir", str(tmp_path / "out")]
    if os.geteuid() == 0:  # root reads any folder: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: a folder cannot be made unreadable")
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=300)
    finally:
        locked.chmod(0o755)
    assert_one_line(done.returncode, done.stderr, f"cannot read the folder {locked}: Permission denied", True)


@pytest.mark.parametrize(
    "second_pass",
    ["hello world?\n", "hello wörld\n", "hello world\U0001f600\n"],
    ids=["ascii", "inside-the-table", "beyond-the-table"],
)
def test_a_character_the_first_pass_did_not_see_is_refused_not_encoded_as_0(second_pass: str, tmp_path: Path) -> None:
    encoder = Encoder("char", sorted(set("hello world\n") | {"é"}), "uint16")
    with open(tmp_path / "part", "wb") as fh:
        part = Part(tmp_path / "part", fh)
        encoder.write(part, "hello world\n")
        with pytest.raises(UserError, match="a source file changed while prepare was reading it"):
            encoder.write(part, second_pass)
        encoder.close()
    assert part.tokens == len("hello world\n")


# ----------------------------------------------------------------------------- generate (item 10)
def test_a_temperature_that_underflows_is_greedy_from_the_cli(trained: Path, capsys) -> None:
    texts = []
    for temperature, seed in (("1e-45", "1"), ("0", "2")):
        assert main(["generate", str(trained), "--temperature", temperature, "--seed", seed,
                     "--tokens-to-generate", "40"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1]


def test_weights_of_another_step_are_refused_on_resume(trained: Path, tmp_path: Path, capsys) -> None:
    stem = copy_checkpoint(trained, tmp_path / "ckpt")
    path = stem.with_name(stem.name + ".safetensors")
    save_file(load_file(path), path, metadata={"format": "pt", "step": "2"})
    code, err = run(capsys, "train", "--headless", "--steps", "4", "--resume-training", str(stem))
    assert_one_line(code, err, "are of step 2, its config says 3: files of two checkpoints")
