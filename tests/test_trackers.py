"""trackers.py: --tensorboard and --wandb on real headless runs of the real CLI, read back from their files."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
from pathlib import Path

import pytest
from engine_fixtures import TINY_FLAGS

from nanogpt import checkpoint
from nanogpt.cli import main

SCALARS = {"train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss", "val/alice",
           "val/shakespeare"}


def train(data: Path, out: Path, *flags: str) -> None:
    """Six headless steps of the CLI (evaluated and saved every 3), or a resume to step 6 with `flags`."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "--headless", *TINY_FLAGS, "--data-dir", str(data), "--out-dir", str(out),
                     "--steps", "6", "--validation-interval", "3", "--save-interval", "3",
                     "--eval-sample-tokens", "12", *flags])
    assert code == 0


def test_tensorboard_holds_the_scalars_and_samples_and_a_resume_continues_it(mixology_dir: Path, tmp_path: Path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    logs = tmp_path / "tb"
    train(mixology_dir, tmp_path / "out", "--tensorboard", str(logs))
    # a resume from step 3 re-logs steps 4-6: the reader must see each step once, not the first attempt's too
    # (into a folder of its own: out/ holds the first attempt's step 6, which a run never replaces)
    train(mixology_dir, tmp_path / "resumed", "--tensorboard", str(logs), "--resume-training",
          str(tmp_path / "out" / "model_step_3"))
    acc = event_accumulator.EventAccumulator(str(logs), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    assert SCALARS <= set(acc.Tags()["scalars"])
    log = checkpoint.read_log(tmp_path / "resumed" / "model_step_6")
    losses = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert losses == [(e["step"], pytest.approx(e["loss"], rel=1e-6)) for e in log]
    alice = [(e.step, e.value) for e in acc.Scalars("val/alice")]
    evals = [e for e in log if "source_validation_losses" in e]
    assert alice == [(e["step"], pytest.approx(e["source_validation_losses"]["alice"], rel=1e-6)) for e in evals]
    bpb = [(e.step, e.value) for e in acc.Scalars("val/bpb")]
    assert bpb == [(e["step"], pytest.approx(e["validation_bpb"], rel=1e-6)) for e in evals]
    alice_bpb = [(e.step, e.value) for e in acc.Scalars("val/alice_bpb")]
    assert alice_bpb == [(e["step"], pytest.approx(e["source_validation_bpb"]["alice"], rel=1e-6)) for e in evals]
    # (EventAccumulator purges scalars only: the first attempt's text at step 6 is still read back)
    samples = {s.step: s.tensor_proto.string_val[0].decode("utf-8") for s in acc.Tensors("sample/text_summary")}
    assert sorted(samples) == [3, 6]
    assert all(e["sample"] in samples[e["step"]] for e in evals)


def wandb_records(path: Path):
    """The records of a .wandb file (W&B's LevelDB-style log: 32 KiB blocks of checksummed, typed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE.../LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_history(path: Path) -> list[dict]:
    rows = []
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_offline_holds_the_scalars_and_a_resume_continues_the_same_run(
    mixology_dir: Path, tmp_path: Path, monkeypatch
):
    pytest.importorskip("wandb")
    for name, value in (("WANDB_MODE", "offline"), ("WANDB_DIR", str(tmp_path)), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    train(mixology_dir, out, "--wandb", "nanogpt-test")
    out2 = tmp_path / "resumed"  # a folder of its own: out/ holds the first attempt's step 6
    train(mixology_dir, out2, "--wandb", "nanogpt-test", "--resume-training", str(out / "model_step_3"))
    run_id = json.loads((out / "trackers.json").read_text(encoding="utf-8"))["wandb_id"]
    assert json.loads((out2 / "trackers.json").read_text(encoding="utf-8"))["wandb_id"] == run_id
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # one run, continued (W&B adds "-1" to a folder name already taken in the same second)
    assert len(folders) == 2 and all(f"-{run_id}" in f.name for f in folders)
    first, resumed = (wandb_history(next(f.glob("run-*.wandb"))) for f in folders)
    steps = [r["_step"] for r in first + resumed if "train/loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6]  # the first attempt ran to 6; the resume continued from 3
    rows = {r["_step"]: r for r in resumed}
    log = checkpoint.read_log(out2 / "model_step_6")
    assert SCALARS <= set(rows[6])
    assert rows[6]["val/shakespeare"] == pytest.approx(log[-1]["source_validation_losses"]["shakespeare"])
    assert rows[6]["val/bpb"] == pytest.approx(log[-1]["validation_bpb"])
    assert rows[6]["sample"] == log[-1]["sample"]
    assert [rows[s]["train/loss"] for s in (4, 5, 6)] == pytest.approx([e["loss"] for e in log[3:]])


@pytest.mark.parametrize(("flag", "module", "extra"), [
    ("--tensorboard", "torch.utils.tensorboard", "tensorboard"),
    ("--wandb", "wandb", "wandb"),
])
def test_a_missing_extra_is_one_line_naming_the_install(
    mixology_dir: Path, tmp_path: Path, capsys, monkeypatch, flag: str, module: str, extra: str
):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra gives: ImportError
    code = main(["train", "--headless", *TINY_FLAGS, "--data-dir", str(mixology_dir), "--out-dir", str(tmp_path),
                 "--steps", "1", flag, "x"])
    assert code == 1
    assert capsys.readouterr().err.endswith(
        f"nanogpt train: error: {flag} needs the {extra} extra: pip install 'nanogpt[{extra}]'\n"
    )
    assert not list(tmp_path.iterdir())  # nothing trained
