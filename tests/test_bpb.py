"""Bits per byte: each validation loss is also given per UTF-8 byte of the text it covers, so runs with different
tokenizers compare. Checked against a computation done here (torch cross-entropy, numpy byte counts) on real
tiny runs through the CLI, and where it shows: the log, the headless line, `nanogpt plot --metric bpb`, the UI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_fixtures import TINY_FLAGS, shakespeare_text

from nanogpt import checkpoint, data
from nanogpt.runtime import machine
from nanogpt.checkpoint.store import MANIFEST, path_of
from nanogpt.cli import main
from nanogpt.tokenizers import from_meta
from nanogpt.train.setup import build_trainer
from test_tui import screen_lines

# Shakespeare with some characters of two and three UTF-8 bytes, so that bytes and characters differ
TEXT = shakespeare_text()[:60_000].replace("e", "é").replace("--", "\u2014")


def byte_lengths(meta: dict) -> np.ndarray:
    """UTF-8 bytes per token id, counted here from each token's text (<|endoftext|> separates, it is no text)."""
    tok = from_meta(meta)
    if meta["tokenizer"] == "char":
        return np.array([len(c.encode("utf-8")) for c in meta["itos"]])
    sizes = np.array([len(tok.bytes_of(i)) for i in range(tok.vocab_size)])
    if "eot_token" in meta:
        sizes[meta["eot_token"]] = 0
    return sizes


def direct_bpb(stem: Path, data_dir: Path) -> tuple[float, float]:
    """(loss, bpb) of checkpoint `stem` on the engine's validation batches, computed here: summed nats over summed
    target bytes (the ratio of totals)."""
    model, _ = checkpoint.load_model(stem)
    model.eval()
    meta = json.loads((data_dir / "vocab.json").read_text(encoding="utf-8"))
    cfg = checkpoint.read(stem).train_cfg
    val = data.load(data_dir).val
    batches = data.SpreadSampler(val, block_size=model.config.block_size, batch_size=cfg.eval_batch_size,
                                 windows=cfg.eval_iters * cfg.eval_batch_size, device=torch.device("cpu"))
    sizes = byte_lengths(meta)
    nats, n_bytes, n_targets = 0.0, 0, 0
    with torch.no_grad():
        for i in range(cfg.eval_iters):
            x, y = batches.batch(i)
            logits, _ = model(x, y)
            nats += F.cross_entropy(logits.double().flatten(0, 1), y.flatten(), reduction="sum").item()
            n_bytes += int(sizes[y.numpy()].sum())
            n_targets += y.numel()
    return nats / n_targets, nats / math.log(2) / n_bytes


def prepared(kind: str, root: Path) -> Path:
    src = root / "text.txt"
    src.write_text(TEXT, encoding="utf-8")
    extra = ["--vocab-size", "300"] if kind == "bpe" else []
    assert main(["prepare", str(src), "--tokenizer", kind, *extra, "--out-dir", str(root / kind)]) == 0
    return root / kind


def train(data_dir: Path, out: Path, *flags: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main(["train", "--headless", *TINY_FLAGS, "--data-dir", str(data_dir), "--out-dir", str(out),
                     "--validation-interval", "3", *flags])
    assert code == 0
    return output.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, str]]:
    """A 6-step headless run on the same text with each tokenizer: (data folder, run folder, stdout)."""
    root = tmp_path_factory.mktemp("bpb")
    with machine.intra_op_threads(1):
        made = {}
        for kind in ("char", "bpe", "gpt2"):
            data_dir = prepared(kind, root)
            made[kind] = (data_dir, root / f"run_{kind}", train(data_dir, root / f"run_{kind}", "--steps", "6"))
    return made


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_bpb_equals_a_computation_by_hand_and_the_headless_line_shows_it(kind: str, runs) -> None:
    data_dir, out, stdout = runs[kind]
    log = checkpoint.read_log(out / "model_step_6")
    evals = [e for e in log if "validation_loss" in e]
    assert [e["step"] for e in evals] == [3, 6] and all("validation_bpb" in e for e in evals)
    loss, bpb = direct_bpb(out / "model_step_6", data_dir)
    assert evals[-1]["validation_loss"] == pytest.approx(loss, rel=1e-5)
    assert evals[-1]["validation_bpb"] == pytest.approx(bpb, rel=1e-5)
    shown = re.findall(r"val loss (\d+\.\d+) \((\d+\.\d+) bpb\)", stdout)
    assert shown == [(f"{e['validation_loss']:.4f}", f"{e['validation_bpb']:.3f}") for e in evals]


def test_every_tokenizer_counts_the_same_validation_bytes(runs) -> None:
    """The split is made in characters before tokenizing: each tokenizer's val.bin is the same text, so bits per
    byte of the three runs are on one scale."""
    val_text = TEXT[int(len(TEXT) * 0.9):]
    for kind, (data_dir, _, _) in runs.items():
        meta = json.loads((data_dir / "vocab.json").read_text(encoding="utf-8"))
        tokens = np.asarray(data.load(data_dir).val)
        assert int(byte_lengths(meta)[tokens].sum()) == len(val_text.encode("utf-8")), kind


def old_run(stem: Path) -> None:
    """Make checkpoint `stem` look like one written before bits per byte: no bpb in its log, no manifest."""
    log_path = path_of(stem, ".training_log.json")
    log = json.loads(log_path.read_text(encoding="utf-8"))
    for entry in log:
        entry.pop("validation_bpb", None)
    log_path.write_text(json.dumps(log), encoding="utf-8")
    path_of(stem, MANIFEST).unlink()


def test_plot_bpb_puts_two_tokenizers_on_one_axis_and_leaves_out_an_old_run(runs, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from nanogpt.plot import read_run, series

    char_run, bpe_run = runs["char"][1], runs["bpe"][1]
    points, _ = series(read_run(bpe_run), "bpb")
    assert points == [(e["step"], e["validation_bpb"]) for e in checkpoint.read_log(bpe_run / "model_step_6")
                      if "validation_bpb" in e]
    image = tmp_path / "bpb.svg"
    assert main(["plot", str(char_run), str(bpe_run), "-o", str(image), "--metric", "bpb"]) == 0
    assert "bits per byte" in image.read_text(encoding="utf-8")
    # an old run (its log has no bpb) still plots its loss, and is left out of a bpb chart with a note
    old = tmp_path / "old"
    old.mkdir()
    for f in (bpe_run).glob("model_step_6*"):
        (old / f.name).write_bytes(f.read_bytes())
    old_run(old / "model_step_6")
    capsys.readouterr()
    assert main(["plot", str(old), str(char_run), "-o", str(tmp_path / "mixed.png"), "--metric", "bpb"]) == 0
    assert "has no validation bpb in its log (an older run): left out" in capsys.readouterr().err
    assert main(["plot", str(old), "-o", str(tmp_path / "loss.png")]) == 0
    assert main(["plot", str(old), "-o", str(tmp_path / "none.png"), "--metric", "bpb"]) == 1
    assert "none has a validation bpb" in capsys.readouterr().err


def test_an_old_checkpoint_without_bpb_resumes_and_then_logs_it(runs, tmp_path: Path) -> None:
    data_dir, run, _ = runs["char"]
    for f in run.glob("model_step_6*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    old_run(tmp_path / "model_step_6")
    with machine.intra_op_threads(1):
        stdout = train(data_dir, tmp_path, "--steps", "9", "--resume-training", str(tmp_path / "model_step_6"))
    assert "bpb)" in stdout
    log = checkpoint.read_log(tmp_path / "model_step_9")
    assert [e["step"] for e in log if "validation_bpb" in e] == [9]  # the old steps keep what they had


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_the_ui_shows_bpb_in_its_status_and_b_switches_the_chart(runs, tmp_path: Path, size) -> None:
    from nanogpt.tui.app import TrainingApp

    data_dir = runs["bpe"][0]
    with machine.intra_op_threads(1):
        trainer = build_trainer({"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 4,
                                 "eval_iters": 2, "device": "cpu", "compile": False, "dtype": "float32",
                                 "data_dir": str(data_dir), "out_dir": str(tmp_path), "steps": 4,
                                 "validation_interval": 2})
        app = TrainingApp(trainer)

        async def drive(size: tuple[int, int]) -> None:
            async with app.run_test(size=size) as pilot:
                while app.finished is None:
                    await pilot.pause(0.05)
                logged = [e["validation_bpb"] for e in trainer.state.log if "validation_bpb" in e]
                assert f"{logged[-1]:.3f} bpb" in app.status_text()
                assert app.chart.val_bpb == pytest.approx(logged)
                draws = app.chart.draws
                await pilot.press("b")
                while app.chart.draws == draws:
                    await pilot.pause(0.05)
                assert app.chart.metric == "bpb" and "bits per byte" in "".join(screen_lines(app))
                if size[0] == 80:  # the footer names every key whole, the new one too
                    assert "b bpb" in screen_lines(app)[-1] and "q quit" in screen_lines(app)[-1]
                await pilot.press("b")
                assert app.chart.metric == "loss"
                await pilot.press("q")

        asyncio.run(drive(size))
