"""torchrun/DDP on CPU with gloo: real `torchrun -m nanogpt train` jobs of 2 processes against 1-process runs.

The data stream and the dropout masks are functions of the global micro-batch index, so 2 processes x
--grad-accum A x batch B must train exactly like 1 process x --grad-accum 2A x batch B (same losses and
weights within 1e-5), and checkpoints move freely between world sizes. Each torchrun job costs a few seconds of start-up
(3 Python processes importing torch), so the jobs are shared between tests through module-scoped fixtures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY, TINY_FLAGS
from safetensors.torch import load_file

from nanogpt import checkpoint
from nanogpt.config import ModelConfig, TrainConfig
from nanogpt.errors import UserError
from nanogpt.runtime import fit, machine
from nanogpt.train.loop import Trainer
from nanogpt.train.setup import build_trainer

SRC = Path(__file__).resolve().parents[1] / "src"
STEPS = 6
# tiny model, 6 steps, a checkpoint at step 3 to resume from; the learning rate is high enough that
# the weights move visibly, so that a wrong gradient average would show
COMMON = [
    "--steps",
    str(STEPS),
    "--save-interval",
    "3",
    "--validation-interval",
    "3",
    "--learning-rate",
    "3e-3",
    "--log-interval",
    "1",
    "--warmup-steps",
    str(TINY["warmup_steps"]),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"  # torchrun would set it too; says so loudly unless it is set
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun_cmd(nproc: int, args: list[str]) -> list[str]:
    # --standalone: a private rendezvous on a free local port, so that parallel test runs never collide
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "nanogpt",
        "train",
        "--headless",
        *TINY_FLAGS,
        *args,
    ]


def torchrun(nproc: int, args: list[str], **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _torchrun_cmd(nproc, args), env={**_env(), **env}, capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def single(data_dir: Path, out: Path, resume: Path | None = None, **kw) -> Trainer:
    """A 1-process run of the same engine, in this process, on one intra-op thread as each torchrun rank
    (OMP_NUM_THREADS=1): with more, the CPU shards would sum the gradient in another order, and those
    1e-7 differences grow through AdamW past the 1e-5 the runs are compared at for some seeds (6.8e-6 was
    seen after 6 steps)."""
    opts = {
        **TINY,
        "data_dir": str(data_dir),
        "out_dir": str(out),
        "steps": STEPS,
        "save_interval": 3,
        "validation_interval": 3,
        "learning_rate": 3e-3,
        **kw,
    }
    with machine.intra_op_threads(1):
        trainer = build_trainer(opts, resume=str(resume) if resume else None)
        finished = trainer.run(lambda event: None)
    assert finished.reason == "completed", finished.message
    return trainer


def log_of(stem: Path) -> list[dict]:
    return checkpoint.read_log(stem)


def assert_same_run(a: Path, b: Path) -> None:
    """Two checkpoints hold the same training log (losses, validation losses) and the same weights."""
    log_a, log_b = log_of(a), log_of(b)
    assert [e["step"] for e in log_a] == [e["step"] for e in log_b] == list(range(1, STEPS + 1))
    torch.testing.assert_close([e["loss"] for e in log_b], [e["loss"] for e in log_a], rtol=0, atol=1e-5)
    val_a = {e["step"]: e["validation_loss"] for e in log_a if "validation_loss" in e}
    val_b = {e["step"]: e["validation_loss"] for e in log_b if "validation_loss" in e}
    assert sorted(val_a) == sorted(val_b) == [3, STEPS]  # averaged over the ranks' share of the batches
    assert list(val_b.values()) == pytest.approx(list(val_a.values()), abs=1e-5)
    # bits per byte: nats and bytes summed over the ranks, so the same as one process over all the batches
    bpb_a = [e["validation_bpb"] for e in log_a if "validation_bpb" in e]
    bpb_b = [e["validation_bpb"] for e in log_b if "validation_bpb" in e]
    assert len(bpb_a) == 2 and bpb_b == pytest.approx(bpb_a, abs=1e-5)
    wa = load_file(checkpoint.weights_path(a))
    wb = load_file(checkpoint.weights_path(b))
    assert sorted(wa) == sorted(wb)  # same names: no DDP `module.` prefix
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def runs(shakespeare_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The reference runs by torchrun and on 1 process with the same effective batch: without dropout
    (`plain`: 2 processes x batch 8 against 1 process x 2 accumulation, with --seed 0, a random seed) and
    with dropout 0.1 (`dropout`: 2 processes x 2 accumulation against 1 process x 4 accumulation). The
    `dropout` job reads its losses back 4 steps at a time (NANOGPT_SYNC_EVERY, what CUDA does by default),
    so the ranks' batched all-reduces of deferred losses are checked against the 1-process run too."""
    root = tmp_path_factory.mktemp("ddp")
    out: dict = {"root": root, "data": shakespeare_dir}
    for name, dropout, seed, accum in (("plain", "0", "0", 1), ("dropout", "0.1", "1337", 2)):
        result = torchrun(
            2,
            [
                "--data-dir",
                str(shakespeare_dir),
                "--out-dir",
                str(root / f"{name}2"),
                "--dropout",
                dropout,
                "--seed",
                seed,
                "--grad-accum",
                str(accum),
                *COMMON,
            ],
            NANOGPT_SYNC_EVERY="4" if name == "dropout" else "1",
        )
        out[f"{name}2_stdout"] = result.stdout
        if seed == "0":  # rank 0 picks a random seed and every rank must use it: the 1-process run repeats it
            picked = re.findall(r"using random seed (\d+)", result.stderr)
            assert len(picked) == 1, result.stderr
            seed = picked[0]
        single(shakespeare_dir, root / f"{name}1", grad_accum=2 * accum, dropout=float(dropout), seed=int(seed))
    return out


def test_two_processes_train_like_one_with_twice_the_accumulation(runs: dict) -> None:
    root = runs["root"]
    assert_same_run(root / "plain1" / f"model_step_{STEPS}", root / "plain2" / f"model_step_{STEPS}")
    stdout = runs["plain2_stdout"]
    # rank 0 alone prints: one start line, one line per step, and the effective batch
    assert stdout.count("training:") == 1
    assert "effective batch 8 x 2 processes = 16 sequences" in stdout
    assert sum(line.startswith("step ") and "| loss" in line for line in stdout.splitlines()) == STEPS
    assert f"checkpoint: {root / 'plain2' / f'model_step_{STEPS}'}" in stdout


def test_dropout_and_accumulation_follow_the_batch_not_the_rank(runs: dict) -> None:
    # rank r at micro-step m draws global micro-batch m * 2 + r, and its dropout mask is keyed by that index:
    # the masks differ per rank, yet the run does not depend on how it is split over processes
    root = runs["root"]
    assert_same_run(root / "dropout1" / f"model_step_{STEPS}", root / "dropout2" / f"model_step_{STEPS}")
    plain, dropped = log_of(root / "plain1" / f"model_step_{STEPS}"), log_of(root / "dropout1" / f"model_step_{STEPS}")
    assert plain[0]["loss"] != dropped[0]["loss"]  # dropout was really on


def test_two_process_checkpoint_resumes_on_one_process(runs: dict, capsys) -> None:
    root = runs["root"]
    # no --grad-accum: one process takes 4 micro-batches per step to keep the checkpoint's 2 x 2 x 8
    opts = {k: v for k, v in TINY.items() if k not in ("batch_size", "grad_accum")}
    trainer = build_trainer(
        {**opts, "data_dir": str(runs["data"]), "out_dir": str(root / "resumed1")},
        resume=str(root / "dropout2" / "model_step_3"),
    )
    assert trainer.train_cfg.grad_accum == 4 and trainer.state.step == 3
    # a note for the front end to print (the CLI does, rank 0 only: see the torchrun resume test)
    assert "using --grad-accum 4 on 1 to keep its effective batch of 32 sequences" in "\n".join(trainer.notes)
    assert capsys.readouterr().err == ""  # the engine itself prints nothing
    assert trainer.run(lambda event: None).reason == "completed"
    assert_same_run(root / "dropout2" / f"model_step_{STEPS}", root / "resumed1" / f"model_step_{STEPS}")
    # an explicit --grad-accum wins (and the effective batch changes)
    again = build_trainer(  # into a folder of its own: dropout2/ holds the later steps of that run
        {"grad_accum": 1, "data_dir": str(runs["data"]), "out_dir": str(root / "again")},
        resume=str(root / "dropout2" / "model_step_3"),
    )
    assert again.train_cfg.grad_accum == 1


def test_one_process_checkpoint_resumes_on_two_processes(runs: dict) -> None:
    root = runs["root"]
    result = torchrun(
        2,
        [
            "--data-dir",
            str(runs["data"]),
            "--out-dir",
            str(root / "resumed2"),
            "--resume-training",
            str(root / "dropout1" / "model_step_3"),
        ],
    )
    assert "resuming at step 3" in result.stdout
    # no --grad-accum: 2 processes x 2 keep the batch of 1 process x 4 (said once, by rank 0)
    assert result.stderr.count("using --grad-accum 2 on 2 to keep its effective batch of 32 sequences") == 1
    assert_same_run(root / "dropout1" / f"model_step_{STEPS}", root / "resumed2" / f"model_step_{STEPS}")


def test_muon_on_two_processes_trains_like_one_with_twice_the_accumulation(
    shakespeare_dir: Path, tmp_path: Path
) -> None:
    # Newton-Schulz orthogonalises each matrix's whole (averaged) gradient, so the ranks must hold the same
    # gradient before Muon's step, and its momentum buffers must cross world sizes in the checkpoint
    muon = ["--optimizer", "muon", "--lr-schedule", "wsd"]
    result = torchrun(2, ["--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "muon2"), *muon, *COMMON])
    # size flags keep the CPU preset's Muon recipe (issue 34): cpu-small's lr 0.03 and momentum 0.85
    recipe = "recipe: Muon lr 0.03 (momentum 0.85) on the block matrices, AdamW lr 0.003 on the rest; wsd schedule"
    assert recipe in result.stdout
    single(shakespeare_dir, tmp_path / "muon1", grad_accum=2, optimizer="muon", lr_schedule="wsd")
    assert_same_run(tmp_path / "muon1" / f"model_step_{STEPS}", tmp_path / "muon2" / f"model_step_{STEPS}")
    # the 2-process checkpoint at step 3 goes on on one process (2 micro-batches a step) as the 1-process run did
    resumed = single(shakespeare_dir, tmp_path / "resumed1", resume=tmp_path / "muon2" / "model_step_3",
                     optimizer="muon")  # TINY names adamw
    assert resumed.train_cfg.grad_accum == 2 and resumed.train_cfg.optimizer == "muon"
    assert_same_run(tmp_path / "muon1" / f"model_step_{STEPS}", tmp_path / "resumed1" / f"model_step_{STEPS}")


def test_sigterm_saves_once_and_every_rank_exits(shakespeare_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = _torchrun_cmd(
        2,
        [
            "--data-dir",
            str(shakespeare_dir),
            "--out-dir",
            str(out),
            "--steps",
            "100000",
            "--log-interval",
            "1",
            "--validation-interval",
            "0",
        ],
    )
    err_file = tmp_path / "stderr.txt"  # a file, not a pipe: an unread full pipe would block torchrun
    with err_file.open("w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        lines = []
        for line in proc.stdout:  # wait until the ranks are training together
            lines.append(line)
            if line.startswith("step ") and "| loss" in line and int(line.split()[1].split("/")[0]) >= 2:
                break
        proc.send_signal(signal.SIGTERM)  # to torchrun, as a cluster's scheduler does; it forwards it to the ranks
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = "".join(lines) + stdout, err_file.read_text()
    stems = {checkpoint.stem_of(p.name) for p in out.iterdir() if not p.name.startswith(".")}
    assert len(stems) == 1, sorted(p.name for p in out.iterdir())
    (stem,) = stems
    step = int(stem.name.removeprefix("model_step_"))
    assert step >= 2 and f"stopped at step {step}" in stderr and f"checkpoint: {out / stem.name}" in stdout
    assert stdout.count("saved ") == 1 and len(log_of(out / stem.name)) == step
    # every rank finished its step and exited by itself: torchrun had no rank to kill, and no rank failed
    # (torchrun itself reports the signal it got with a SignalException traceback and exit code 1)
    assert "SIGKILL" not in stderr  # torchrun kills (and says so) a rank still alive 30 s after the signal
    assert stderr.count("Traceback") <= 1 and ("Traceback" not in stderr or "SignalException" in stderr)


# ----------------------------------------------------------------------------- --shard (FSDP2) and two nodes
# Measured on CPU/gloo (the tests below, 2 cores of an Intel Xeon): the sharded runs' training losses, weights
# and optimizer state equal the 1-process run's to 0.0; the validation loss differs by up to 3.2e-7, because
# each rank sums its share of the batches in float32 before the ranks' sums are added (DDP alike). Compared at
# assert_same_run's 1e-5, the tolerance the DDP tests use: FSDP2's reduce-scatter and the sharded gradient norm
# are free to sum in another order than one process on another build, and stay 1e-7-close when they do.
def _sharded_run(runs: dict, name: str, *args: str) -> subprocess.CompletedProcess:
    return torchrun(2, ["--data-dir", str(runs["data"]), "--out-dir", str(runs["root"] / name), *args])


@pytest.fixture(scope="module")
def sharded(runs: dict) -> dict:
    """`dropout` again, sharded: 2 processes x 2 accumulation with --shard (against 1 process x 4)."""
    result = _sharded_run(runs, "shard2", "--shard", "--dropout", "0.1", "--seed", "1337", "--grad-accum", "2", *COMMON)
    return {"stdout": result.stdout, "stderr": result.stderr}


def test_sharded_processes_train_like_one_with_the_accumulation(runs: dict, sharded: dict) -> None:
    root = runs["root"]
    assert_same_run(root / "dropout1" / f"model_step_{STEPS}", root / "shard2" / f"model_step_{STEPS}")
    # the plan says what each process holds (once); the checkpoint is the set one process saves, names and all
    assert sharded["stderr"].count("sharded (FSDP2) over 2 processes: each holds 1/2 of the weights") == 1
    one = load_file(str(root / "dropout1" / f"model_step_{STEPS}.resume.safetensors"))
    two = load_file(str(root / "shard2" / f"model_step_{STEPS}.resume.safetensors"))
    assert sorted(one) == sorted(two)
    for name in one:  # AdamW's moments, gathered whole from the shards
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)


def test_sharded_checkpoints_resume_on_any_world_size(runs: dict, sharded: dict) -> None:
    # {1 process, 2 DDP, 2 sharded}: each resumed run ends where the uninterrupted 1-process run ended
    root, reference = runs["root"], runs["root"] / "dropout1" / f"model_step_{STEPS}"
    resumed = single(runs["data"], root / "shard_to_1", resume=root / "shard2" / "model_step_3")  # sharded -> 1
    assert resumed.train_cfg.grad_accum == 4
    assert_same_run(reference, root / "shard_to_1" / f"model_step_{STEPS}")
    _sharded_run(runs, "one_to_shard", "--shard", "--resume-training", str(root / "dropout1" / "model_step_3"))
    assert_same_run(reference, root / "one_to_shard" / f"model_step_{STEPS}")  # 1 -> sharded
    # sharded -> 2 DDP, DDP -> sharded: below, on two nodes


def test_muon_sharded_trains_like_muon_unsharded(shakespeare_dir: Path, tmp_path: Path) -> None:
    # each rank gathers Muon's update matrices whole and orthogonalises them as one process does; an odd
    # --eval-iters leaves the second rank a round of its own without a batch to count (it joins the gathers)
    muon = ["--optimizer", "muon", "--lr-schedule", "wsd", "--eval-iters", "3"]
    torchrun(2, ["--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "muon2"), "--shard", *muon, *COMMON])
    single(shakespeare_dir, tmp_path / "muon1", grad_accum=2, optimizer="muon", lr_schedule="wsd", eval_iters=3)
    assert_same_run(tmp_path / "muon1" / f"model_step_{STEPS}", tmp_path / "muon2" / f"model_step_{STEPS}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def two_nodes(args: list[str], tmp_path: Path, name: str) -> None:
    """Two torchrun "nodes" of one process each on this machine, meeting at a c10d rendezvous on a free port:
    what `docs/scaling.md` runs on two machines."""
    port, procs = _free_port(), []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
               "--rdzv-id", name, "-m", "nanogpt", "train", "--headless", *TINY_FLAGS, *args]
        log = (tmp_path / f"{name}{node}.txt").open("w")  # files, not pipes: an unread full pipe would block
        procs.append((subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=300) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert codes == [0, 0], "".join((tmp_path / f"{name}{n}.txt").read_text()[-3000:] for n in (0, 1))


@pytest.mark.parametrize("shard", [False, True], ids=["ddp", "sharded"])
def test_two_nodes_at_a_rendezvous_train_like_one_process(runs: dict, sharded: dict, tmp_path: Path,
                                                          shard: bool) -> None:
    # the nodes resume the other kind's checkpoint: a sharded one as DDP (--no-shard), a DDP one sharded, and
    # end where the uninterrupted 1-process run ended
    root = runs["root"]
    start = root / ("dropout2" if shard else "shard2") / "model_step_3"
    out = tmp_path / "nodes"
    two_nodes(["--data-dir", str(runs["data"]), "--out-dir", str(out), "--resume-training", str(start),
               "--shard" if shard else "--no-shard"], tmp_path, "sharded" if shard else "ddp")
    assert_same_run(root / "dropout1" / f"model_step_{STEPS}", out / f"model_step_{STEPS}")


def test_a_run_that_fits_only_sharded_is_refused_without_shard(shakespeare_dir: Path) -> None:
    # a shape whose 16 bytes a parameter come to 1.5 times this machine's memory: half of that fits
    have, width = fit.memory_of(torch.device("cpu")), 1024
    layers = -(-3 * have // (2 * 16 * 12 * width * width))
    model_cfg = ModelConfig(vocab_size=65, block_size=32, n_layer=layers, n_head=8, n_embd=width)
    train_cfg = TrainConfig(batch_size=8)
    fit.check_fits(model_cfg, train_cfg, torch.device("cpu"), world_size=2, shard=True)  # allowed sharded
    with pytest.raises(UserError, match="with --shard each of the 2 processes needs"):
        fit.check_fits(model_cfg, train_cfg, torch.device("cpu"), world_size=2)
    # the real CLI under torchrun: said once, exit 1, before anything is built
    size = ["--layer-count", str(layers), "--embedding-size", str(width), "--head-count", "8"]
    result = subprocess.run(
        _torchrun_cmd(2, ["--data-dir", str(shakespeare_dir), "--out-dir", "unused", *size]), env=_env(),
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode != 0
    # (torchrun's own report of the failure repeats it, after `traceback :`)
    lines = [line for line in result.stderr.splitlines() if line.startswith("nanogpt train: error: this run")]
    assert len(lines) == 1 and "with --shard each of the 2 processes needs" in lines[0], result.stderr[-3000:]


@pytest.mark.slow
def test_a_lost_node_ends_the_run_and_its_last_checkpoint_resumes(shakespeare_dir: Path, tmp_path: Path) -> None:
    # two nodes train sharded, saving every 5 steps; then one node's process dies (as with its machine): the other
    # stops within seconds with one line, and the last checkpoint goes on where the nodes left it, on one process
    port, out, agents = _free_port(), tmp_path / "out", []
    args = ["--data-dir", str(shakespeare_dir), "--out-dir", str(out), "--steps", "100000", "--save-interval", "5",
            "--validation-interval", "0", "--log-interval", "5", "--shard"]
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}",
               "--rdzv-id", "lost", "-m", "nanogpt", "train", "--headless", *TINY_FLAGS, *args]
        log = (tmp_path / f"node{node}.txt").open("w")
        agents.append((subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("model_step_*.manifest.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        # the c10d rendezvous numbers the nodes as they join: the one whose process is not rank 0 (which prints)
        # is lost; its training process is killed, as if its machine went down, and its torchrun ends with it
        main = next(n for n in (0, 1) if "saved " in (tmp_path / f"node{n}.txt").read_text())
        lost = agents[1 - main][0]
        (worker,) = subprocess.run(["ps", "-o", "pid=", "--ppid", str(lost.pid)], capture_output=True, text=True,
                                   check=True).stdout.split()
        os.kill(int(worker), signal.SIGKILL)
        code = agents[main][0].wait(timeout=120)
    finally:
        for agent, log in agents:
            if agent.poll() is None:
                agent.kill()
            agent.wait()
            log.close()
    said = (tmp_path / f"node{main}.txt").read_text()
    # said once (torchrun's own failure report, when its agent outlives the other node, repeats it after `traceback :`)
    lines = [line for line in said.splitlines() if line.startswith("nanogpt train: error: a process of this run")]
    assert code != 0 and len(lines) == 1, said[-3000:]
    # no traceback through nanogpt (torchrun's own agent may print one when the lost node held the rendezvous)
    assert f'File "{SRC}' not in said, said[-3000:]
    last = max((checkpoint.stem_of(p.name) for p in out.glob("model_step_*.manifest.json")),
               key=lambda stem: int(stem.name.removeprefix("model_step_")))
    step = int(last.name.removeprefix("model_step_"))
    resumed = single(shakespeare_dir, tmp_path / "resumed", resume=out / last.name, steps=step + 2)
    assert resumed.state.step == step + 2 and resumed.train_cfg.grad_accum == 2


def test_shard_alone_or_in_float16(shakespeare_dir: Path, tmp_path: Path) -> None:
    # one process without torchrun has nothing to shard with: it says so and trains as always
    trainer = build_trainer({**TINY, "data_dir": str(shakespeare_dir), "out_dir": str(tmp_path / "a"), "shard": True})
    assert not trainer.hardware.shard and "one process alone trains unsharded" in "\n".join(trainer.notes)
    # float16's GradScaler does not shard: one line under torchrun, before any step
    result = subprocess.run(
        _torchrun_cmd(1, ["--data-dir", str(shakespeare_dir), "--out-dir", str(tmp_path / "b"), "--shard",
                          "--dtype", "float16"]), env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("nanogpt train: error:")]
    assert result.returncode != 0 and len(lines) == 1 and "--shard trains in bfloat16 or float32" in lines[0], lines
