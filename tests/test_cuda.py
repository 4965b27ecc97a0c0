"""The CUDA path, skipped without a CUDA device (run them on a GPU box: `python -m pytest -q tests/test_cuda.py`).

bf16 autocast (float16 + GradScaler where asked), torch.compile, losses read back once per log interval,
exact resume, KV-cache generation, the CUDA-graph decode step and --num-samples, and torchrun over NCCL. The
data is the corpus bundled inside the package, so nothing from ../shared has to travel to the GPU machine.
NANOGPT_TEST_DEVICE=cpu runs the same tests on CPU (how their logic was checked on a machine without a GPU).

The CUDA-only branches in src/ and the tests that run them:
- runtime._cuda (TF32 matmuls), resolve_dtype (bfloat16, else float16), should_compile (on by default),
  Hardware.sync_every (losses read once per log interval): test_auto_precision_...;
- runtime.compile_model's `mode` (--compile-mode; CPU/MPS always use default) and Stepper.step's
  cudagraph_mark_step_begin under CUDA graphs: test_compile_mode_..., test_reduce_overhead_resume_...;
- the step without a host sync (pinned batches copied with non_blocking, data.BatchSampler; fused AdamW;
  the clip factor on the device): test_the_step_never_waits_for_the_host (float16's GradScaler does sync);
- GradScaler for float16: test_float16_with_grad_scaler;
- optim's Newton-Schulz in bfloat16 on CUDA, fused AdamW: every training test here;
- inference.CapturedStep's CUDA graph, generate's captured decode: test_graph_decode_...;
- distributed.local_device / NCCL, DDP device_ids (train/step.step_module): test_torchrun_single_process;
- runtime.fit.memory_of (the GPU's own memory, for check_fits): every training test here (build_trainer);
- runtime.sharding on one card (FSDP2 on a CUDA mesh, blocks compiled before sharding): test_shard_on_one_card_...
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY, TINY_FLAGS

from nanogpt import checkpoint
from nanogpt.train.setup import build_trainer
from nanogpt.events import RunFinished, StepDone
from nanogpt.generate import generate_rows, generate_tokens
from nanogpt.inference import CapturedStep, Decoder
from nanogpt.model import GPT

DEVICE = os.environ.get("NANOGPT_TEST_DEVICE", "cuda")
if DEVICE == "cuda" and not torch.cuda.is_available():  # one skip for the file, not one a test
    pytest.skip("no CUDA device (the whole file is the CUDA path)", allow_module_level=True)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nanogpt.prepare import prepare

    out = tmp_path_factory.mktemp("cuda") / "data"
    prepare(None, tokenizer="char", out_dir=str(out))  # the bundled Tiny Shakespeare
    return out


def opts(data_dir: Path, out: Path, **kw) -> dict:
    return {**TINY, "device": DEVICE, "dtype": "auto", "data_dir": str(data_dir), "out_dir": str(out), **kw}


def collect(trainer) -> list:
    events: list = []
    trainer.run(events.append)
    return events


def step_losses(events: list) -> list[float]:
    return [e.loss for e in events if isinstance(e, StepDone)]


def test_auto_precision_trains_and_reads_losses_once_per_log_interval(data_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(opts(data_dir, tmp_path, steps=40, log_interval=5, validation_interval=20,
                                 learning_rate=3e-3))
    if DEVICE == "cuda":
        assert trainer.hardware.dtype == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        assert trainer.hardware.sync_every == 5
    events = collect(trainer)
    assert isinstance(events[-1], RunFinished) and events[-1].reason == "completed", events[-1]
    losses = step_losses(events)
    assert [e.step for e in events if isinstance(e, StepDone)] == list(range(1, 41))
    assert sum(losses[:5]) / 5 - sum(losses[-5:]) / 5 > 0.3, losses  # it learns
    assert checkpoint.weights_path(tmp_path / "model_step_40").is_file()


def test_compiled_model_trains_like_eager(data_dir: Path, tmp_path: Path) -> None:
    eager = collect(build_trainer(opts(data_dir, tmp_path / "eager", steps=8, compile=False)))
    compiled_trainer = build_trainer(opts(data_dir, tmp_path / "compiled", steps=8, compile=True))
    assert compiled_trainer.stepper.step_module is not compiled_trainer.stepper.model
    compiled = collect(compiled_trainer)
    assert compiled[-1].reason == "completed", compiled[-1]
    # same weights, batches and math; kernels differ (fused by inductor, bf16 rounding): close, not equal
    torch.testing.assert_close(step_losses(compiled), step_losses(eager), rtol=0, atol=3e-2)


def test_float16_with_grad_scaler(data_dir: Path, tmp_path: Path) -> None:
    trainer = build_trainer(opts(data_dir, tmp_path, steps=10, dtype="float16"))
    assert trainer.stepper.scaler is not None
    events = collect(trainer)
    assert events[-1].reason == "completed", events[-1]
    assert all(torch.isfinite(torch.tensor(step_losses(events))))


def test_resume_continues_the_run(data_dir: Path, tmp_path: Path) -> None:
    settings = opts(data_dir, tmp_path / "a", steps=6, save_interval=3, dtype="float32")
    whole = step_losses(collect(build_trainer(settings)))
    resumed_trainer = build_trainer({"out_dir": str(tmp_path / "b")}, resume=str(tmp_path / "a" / "model_step_3"))
    assert resumed_trainer.state.step == 3
    resumed = step_losses(collect(resumed_trainer))
    # float32; CUDA's embedding backward adds with atomics, so the last bits may differ between runs
    torch.testing.assert_close(resumed, whole[3:], rtol=0, atol=1e-4)


def test_cached_generation_equals_uncached_on_the_device() -> None:
    torch.manual_seed(0)
    from nanogpt.config import ModelConfig

    model = GPT(ModelConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)).to(DEVICE)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(5.0)  # clear winners: greedy has no near-ties
    model.eval()
    prompt = [1, 2, 3]
    got = list(generate_tokens(model, prompt, 40, temperature=0.0, slide=1))
    ids, expected = list(prompt), []
    with torch.no_grad():
        for _ in range(40):
            logits, _ = model(torch.tensor([ids[-16:]], device=DEVICE))  # nanoGPT's crop (slide 1)
            expected.append(int(logits[0, -1].argmax()))
            ids.append(expected[-1])
    assert got == expected


def device_model(block_size: int = 16):
    from nanogpt.config import ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=37, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).to(DEVICE)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(5.0)  # clear winners: no near-ties between the two paths' logits
    return model.eval()


def device_seed(seed: int) -> torch.Generator:
    return torch.Generator(device=DEVICE).manual_seed(seed)


def test_graph_decode_step_is_a_cuda_graph_and_equals_the_forward() -> None:
    """The recorded graph, replayed at each position, gives GPT.forward's logits (writes land in the cache)."""
    model = device_model()
    idx = torch.randint(0, 37, (2, 16), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.inference_mode():
        full, _ = model(idx, targets=idx)
        decoder = Decoder(model, batch_size=2)
        step = CapturedStep(decoder)
        assert (step.graph is not None) == (DEVICE == "cuda")
        got = [decoder.prefill(idx[:, :3])] + [step(idx[:, t]).clone() for t in range(3, 16)]
    for t, logits in enumerate(got, start=2):
        torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 8])
def test_graph_decode_generates_the_tokens_of_the_eager_path(rows: int) -> None:
    """Greedy and sampled, past block_size (the window slides and the graph goes on after each prefill)."""
    model = device_model()
    for kw in ({"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 0.9, "top_k": 8, "top_p": 0.9}):
        eager = list(generate_rows(model, [1, 2, 3], 50, num_samples=rows, generator=device_seed(5),
                                   captured=False, **kw))
        graph = list(generate_rows(model, [1, 2, 3], 50, num_samples=rows, generator=device_seed(5), **kw))
        assert graph == eager, kw


def test_num_samples_on_the_device_same_seed_same_rows() -> None:
    model = device_model()
    first = list(generate_rows(model, [4], 40, num_samples=16, generator=device_seed(3)))
    again = list(generate_rows(model, [4], 40, num_samples=16, generator=device_seed(3)))
    assert first == again
    rows = {tuple(step[r] for step in first) for r in range(16)}
    assert len(rows) == 16  # sixteen different continuations
    one = list(generate_tokens(model, [4], 40, generator=device_seed(3)))
    assert one == [step[0] for step in generate_rows(model, [4], 40, generator=device_seed(3))]


def test_torchrun_single_process(data_dir: Path, tmp_path: Path) -> None:
    """torchrun with one process: the NCCL process group on CUDA (gloo on CPU), DDP wrapping, rank 0 saving."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    flags = list(TINY_FLAGS)
    flags[flags.index("--device") + 1] = DEVICE
    flags[flags.index("--dtype") + 1] = "auto"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "nanogpt",
         "train", "--headless", *flags, "--steps", "10", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert checkpoint.weights_path(tmp_path / "model_step_10").is_file()


def test_shard_on_one_card_trains_like_unsharded(data_dir: Path, tmp_path: Path) -> None:
    """--shard under torchrun with one process: FSDP2 on one card (its blocks compiled) trains like the plain
    compiled run; float32 so that the two compare closely."""
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    flags = [f for f in TINY_FLAGS if f != "--no-compile"]  # CUDA's default: compiled
    flags[flags.index("--device") + 1] = DEVICE
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "nanogpt",
         "train", "--headless", *flags, "--steps", "10", "--shard", "--warmup-steps", str(TINY["warmup_steps"]),
         "--data-dir", str(data_dir),
         "--out-dir", str(tmp_path / "sharded")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "sharded (FSDP2) over 1 processes" in done.stderr
    collect(build_trainer(opts(data_dir, tmp_path / "plain", steps=10, dtype="float32", compile=None)))
    sharded = [e["loss"] for e in checkpoint.read_log(tmp_path / "sharded" / "model_step_10")]
    plain = [e["loss"] for e in checkpoint.read_log(tmp_path / "plain" / "model_step_10")]
    assert sharded == pytest.approx(plain, abs=1e-4)  # TF32 matmuls and compiled kernels on both sides


@pytest.mark.parametrize("mode", ["reduce-overhead"])
def test_compile_mode_trains_like_the_default_mode(data_dir: Path, tmp_path: Path, mode: str) -> None:
    """--compile-mode reduce-overhead (CUDA graphs) gives the default mode's losses, over accumulated
    micro-batches too (two backward passes into the same gradients between two optimizer steps)."""
    compile_on = DEVICE == "cuda"  # on CPU (NANOGPT_TEST_DEVICE=cpu) the mode is ignored: no compile needed
    settings = {"steps": 8, "grad_accum": 2, "compile": compile_on, "validation_interval": 4}
    default = collect(build_trainer(opts(data_dir, tmp_path / "default", **settings)))
    trainer = build_trainer(opts(data_dir, tmp_path / mode, compile_mode=mode, **settings))
    assert trainer.hardware.compile_mode == (mode if DEVICE == "cuda" else "default")
    graphed = collect(trainer)
    assert graphed[-1].reason == "completed", graphed[-1]
    torch.testing.assert_close(step_losses(graphed), step_losses(default), rtol=0, atol=3e-2)
    assert (tmp_path / mode / "best.json").is_file()  # evaluation under graphs too


def test_reduce_overhead_resume_continues_the_run(data_dir: Path, tmp_path: Path) -> None:
    settings = opts(data_dir, tmp_path / "a", steps=6, save_interval=3, dtype="float32",
                    compile=DEVICE == "cuda", compile_mode="reduce-overhead")
    whole = step_losses(collect(build_trainer(settings)))
    resumed_trainer = build_trainer({"out_dir": str(tmp_path / "b")}, resume=str(tmp_path / "a" / "model_step_3"))
    assert resumed_trainer.train_cfg.compile_mode == "reduce-overhead"  # saved with the run
    resumed = step_losses(collect(resumed_trainer))
    torch.testing.assert_close(resumed, whole[3:], rtol=0, atol=1e-3)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA's sync debug mode")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_the_step_never_waits_for_the_host(data_dir: Path, tmp_path: Path, mode: str) -> None:
    """After warm-up (compiling, recording), steps whose losses stay on the device make no host-device sync:
    torch raises at any synchronizing call in sync debug mode "error"."""
    trainer = build_trainer(opts(data_dir, tmp_path, steps=20, compile=True, compile_mode=mode))
    trainer.train_steps(4)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer._step(check=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [e.step for e in trainer._read_back_or_raise()] == [5, 6, 7]
