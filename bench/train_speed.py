"""Training speed, ours against nanoGPT, taking turns on the same machine, data and shapes.

Ours is measured through the engine (`Trainer.train_step()`: the step users run). nanoGPT is the
unmodified reference at ../shared/reference/nanoGPT: its model.py is imported from there and driven the
way its train.py does (memmap batches, clip_grad_norm_, zero_grad(set_to_none), loss.item() every step
as with the recipe's --log_interval=1; with --sync block, on CUDA/MPS by default, both read it once per
block instead and blocks are timed whole). Each side runs in a process of its own (what one sets for its
whole process, e.g. threads or allocator settings, stays there, as when each is run alone); the two
alternate in blocks of steps so that the noise of a shared machine falls on both alike; compare the
ratio, not the bare times.

    PYTHONPATH=src python bench/train_speed.py                      # cpu-small on CPU, 300 steps
    PYTHONPATH=src python bench/train_speed.py --device cuda --preset baby-gpt --steps 200 --skip 50
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NANOGPT_SHARED", ROOT.parent / "shared"))  # ../shared, or where it was copied
REFERENCE = SHARED / "reference" / "nanoGPT"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw",
                   help="ours (nanoGPT's side is always its AdamW); adamw: like for like")
    p.add_argument("--dtype", default="auto", help="auto/float32/bfloat16/float16, for both sides")
    p.add_argument("--steps", type=int, default=300, help="steps per side")
    p.add_argument("--skip", type=int, default=50, help="first steps per side left out of the statistics")
    p.add_argument("--block", type=int, default=10, help="steps per side before switching to the other")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="ours: torch.compile (auto: machine.should_compile)")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"), default="default",
                   help="ours: torch.compile's mode on CUDA (--compile-mode of nanogpt train)")
    p.add_argument("--nanogpt-compile", choices=("auto", "on", "off"), default="auto",
                   help="nanoGPT's compile (auto: on for CUDA as its default, off on CPU as its recipe)")
    p.add_argument("--nanogpt-adamw", choices=("fused", "as-is"), default="fused",
                   help="fused: nanoGPT gets fused AdamW (stricter); as-is: its configure_optimizers")
    p.add_argument("--sync", choices=("auto", "step", "block"), default="auto",
                   help="step: time every step, each side reading its loss every step (nanoGPT's "
                        "--log_interval=1); block: time blocks of --block steps, each side reading its loss "
                        "once per block (our engine's rhythm on an accelerator, nanoGPT's "
                        "--log_interval=BLOCK); statistics are then over per-block means "
                        "(default auto: block on CUDA/MPS, step on CPU)")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size (both sides)")
    p.add_argument("--grad-accum", type=int, help="override the preset's accumulation (both sides); e.g. 1 "
                   "for gpt2-124m, whose 40 micro-steps per step only make the run longer")
    p.add_argument("--peak-tflops", type=float,
                   help="the card's dense bf16 peak for the MFU column (default: known for H100/H200/A100)")
    p.add_argument("--data-dir", help="prepared data (train.bin/vocab.json); default: Tiny Shakespeare, char")
    p.add_argument("--no-reference", action="store_true", help="measure ours only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--worker", choices=("ours", "nanogpt"), help=argparse.SUPPRESS)  # child: one side
    p.add_argument("--shape", default="{}", help=argparse.SUPPRESS)  # child: the work, as ours resolved it
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # child: peak memory only
    return p.parse_args(argv)


def prepared_data(args: argparse.Namespace, tmp: Path) -> Path:
    """A folder with train.bin/val.bin/vocab.json: --data-dir, else Tiny Shakespeare tokenized by chars."""
    if args.data_dir:
        return Path(args.data_dir)
    from nanogpt import prepare

    source = SHARED / "data" / "tinyshakespeare.txt"
    out = tmp / "data"
    with contextlib.redirect_stdout(sys.stderr):
        prepare.prepare(str(source) if source.is_file() else None, tokenizer="char", out_dir=str(out))
    return out


# ----------------------------------------------------------------------------------------------- ours
class Ours:
    name = "ours"

    def __init__(self, args: argparse.Namespace, data_dir: Path, out_dir: Path):
        from nanogpt.runtime import machine
        from nanogpt.train.setup import build_trainer

        overrides = {"data_dir": str(data_dir), "device": args.device, "dtype": args.dtype,
                     "out_dir": str(out_dir), "optimizer": args.optimizer}
        if args.compile != "auto":
            overrides["compile"] = args.compile == "on"
        overrides["compile_mode"] = args.compile_mode
        for name in ("batch_size", "grad_accum"):
            if getattr(args, name):
                overrides[name] = getattr(args, name)
        from nanogpt import config

        self.trainer = build_trainer(overrides, preset=args.preset)
        # the process-wide settings the CLI applies around a run (threads, allocator), for this worker's life
        self._process = contextlib.ExitStack()
        self._process.enter_context(machine.training_process(self.trainer.hardware))
        self.device = self.trainer.hardware.device
        self.threads = torch.get_num_threads()  # what the engine chose for its step
        t = self.trainer
        # what nanoGPT's side needs to build the same work (sent to its own process)
        self.shape = {"model": config.to_dict(t.model_cfg), "train": config.to_dict(t.train_cfg),
                      "device": str(t.hardware.device), "dtype": str(t.hardware.dtype).removeprefix("torch."),
                      "n_params": t.stepper.model.num_params()}
        self.compiled = self.trainer.hardware.compile
        self.tokens_per_step = config.tokens_per_step(t.model_cfg, t.train_cfg, t.hardware.world_size)
        shards = self.trainer.stepper.core_parallel.workers if self.trainer.stepper.core_parallel else 1
        dtype = str(self.trainer.hardware.dtype).removeprefix("torch.")
        mode = self.trainer.hardware.compile_mode
        self.label = (f"ours ({dtype}{', compiled' if self.compiled else ''}"
                      f"{f' {mode}' if self.compiled and mode != 'default' else ''}"
                      f", {shards} shard{'s' if shards > 1 else ''} x {self.threads} thread"
                      f"{'s' if self.threads > 1 else ''})")

    def step(self) -> float:
        return self.trainer.train_step().loss

    def steps(self, n: int) -> float:
        """n steps, losses read back once at the end (the engine's own rhythm on an accelerator)."""
        return self.trainer.train_steps(n)[-1].loss


# -------------------------------------------------------------------------------------------- nanoGPT
class NanoGPT:
    """nanoGPT's model.py, imported (not copied) from the reference folder, driven as its train.py does."""

    name = "nanogpt"

    def __init__(self, args: argparse.Namespace, data_dir: Path, shape: dict):
        spec = importlib.util.spec_from_file_location("reference_nanogpt_model", REFERENCE / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model_cfg = argparse.Namespace(**shape["model"])
        train_cfg = argparse.Namespace(**shape["train"])
        device, dtype = torch.device(shape["device"]), getattr(torch, shape["dtype"])
        threads = torch.get_num_threads()  # torch's default in this fresh process, as train.py runs
        self.device = device
        torch.manual_seed(train_cfg.seed)
        with contextlib.redirect_stdout(sys.stderr):  # it prints parameter counts
            gcfg = module.GPTConfig(
                block_size=model_cfg.block_size, vocab_size=model_cfg.vocab_size, n_layer=model_cfg.n_layer,
                n_head=model_cfg.n_head, n_embd=model_cfg.n_embd, dropout=model_cfg.dropout,
                bias=model_cfg.bias,
            )
            self.model = module.GPT(gcfg).to(device)
            betas = (train_cfg.beta1, train_cfg.beta2)
            self.optimizer = self.model.configure_optimizers(train_cfg.weight_decay, train_cfg.learning_rate,
                                                             betas, device.type)
        if args.nanogpt_adamw == "fused" and not self.optimizer.defaults.get("fused"):
            groups = [{k: v for k, v in g.items() if k in ("params", "weight_decay")}
                      for g in self.optimizer.param_groups]
            self.optimizer = torch.optim.AdamW(groups, lr=train_cfg.learning_rate, betas=betas, fused=True)
        auto = args.nanogpt_compile == "auto"
        compile_on = args.nanogpt_compile == "on" or (auto and device.type == "cuda")
        self.compiled = compile_on
        self.forward = torch.compile(self.model) if compile_on else self.model
        self.ctx = (contextlib.nullcontext() if device.type == "cpu" and dtype == torch.float32
                    else torch.amp.autocast(device_type=device.type, dtype=dtype))
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.train_bin = str(data_dir / "train.bin")
        self.block_size, self.batch_size = model_cfg.block_size, train_cfg.batch_size
        self.grad_accum, self.grad_clip = train_cfg.grad_accum, train_cfg.grad_clip
        self.lr = train_cfg.learning_rate
        self.tokens_per_step = self.batch_size * self.block_size * self.grad_accum
        fused = bool(self.optimizer.defaults.get("fused"))
        self.label = (f"nanoGPT ({str(dtype).removeprefix('torch.')}, {'fused' if fused else 'foreach'} AdamW"
                      f"{', compiled' if compile_on else ''}, {threads} threads)")
        self.x, self.y = self.get_batch()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # as train.py: a fresh memmap every batch, random windows, int64 stacks
        data = np.memmap(self.train_bin, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,))
        bs = self.block_size
        x = torch.stack([torch.from_numpy((data[i:i + bs]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + bs]).astype(np.int64)) for i in ix])
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
            return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def steps(self, n: int) -> float:
        """n steps, the loss read back at the last one only (train.py with --log_interval=n)."""
        for _ in range(n - 1):
            self.step(read=False)
        return self.step()

    def step(self, read: bool = True) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr  # train.py sets it every step (its value does not change the cost)
        for _ in range(self.grad_accum):
            with self.ctx:
                _, loss = self.forward(self.x, self.y)
                loss = loss / self.grad_accum
            self.x, self.y = self.get_batch()
            self.scaler.scale(loss).backward()
        if self.grad_clip != 0.0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not read:
            return float("nan")
        return loss.item() * self.grad_accum  # --log_interval=1: one sync per step, as the recipe runs


# ------------------------------------------------------------------------------------------ measuring
# Each side runs in a process of its own (a worker), so that what one sets for the whole process (intra-op
# threads, the engine's allocator settings, oneDNN flags) cannot help or hurt the other; the parent makes
# them take turns, a block of steps each, so a noisy machine's slow spells fall on both alike.
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rss_mib() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def build_runner(args: argparse.Namespace, data_dir: Path, out_dir: Path):
    if args.worker == "ours":
        return Ours(args, data_dir, out_dir)
    return NanoGPT(args, data_dir, json.loads(args.shape))


def timed_steps(runner, n: int, device: torch.device, per_block: bool) -> tuple[list[float], float]:
    """Run n steps; per-step milliseconds (per_block: the block's mean for each) and the last loss."""
    if per_block:
        sync(device)
        t0 = time.perf_counter()
        loss = runner.steps(n)
        sync(device)
        return [(time.perf_counter() - t0) * 1000.0 / n] * n, loss
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        loss = runner.step()
        sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times, loss


def worker_main(args: argparse.Namespace) -> None:
    """Child: build one side, say so on stdout, then run the blocks of steps the parent asks for on stdin.
    With --probe, instead run 20 steps and print the peak memory (on CPU: resident-memory growth)."""
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="train_speed_out_") as out, contextlib.redirect_stdout(sys.stderr):
        runner = build_runner(args, data_dir, Path(out))
    device = runner.device
    per_block = args.sync == "block" or (args.sync == "auto" and device.type != "cpu")
    if args.probe:
        before = rss_mib()  # after building: both sides count what their steps add (optimizer state too)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timed_steps(runner, 20, device, per_block)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
        print(json.dumps({"peak_mib": peak}), flush=True)
        return
    print(json.dumps({"label": runner.label, "tokens_per_step": runner.tokens_per_step, "per_block": per_block,
                      "shape": getattr(runner, "shape", None)}), flush=True)
    for line in sys.stdin:
        times, loss = timed_steps(runner, int(line), device, per_block)
        # on CUDA each side's process has its own allocator: its peak is that side's alone
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        # ours: micro-batches so far whose CPU shards ran on fewer threads (a core straggled; bench/load_speed.py)
        parallel = getattr(getattr(runner, "trainer", None), "stepper", None)
        reduced = parallel.core_parallel.schedule.reduced if parallel and parallel.core_parallel else 0
        print(json.dumps({"times": times, "loss": loss, "peak_mib": peak, "reduced": reduced}), flush=True)


class Worker:
    """Parent side of one worker process."""

    def __init__(self, which: str, args: argparse.Namespace, data_dir: Path, shape: dict | None = None,
                 probe: bool = False):
        cmd = [sys.executable, __file__, "--worker", which, "--data-dir", str(data_dir), "--preset", args.preset,
               "--device", args.device, "--dtype", args.dtype, "--compile", args.compile,
               "--compile-mode", args.compile_mode,
               "--nanogpt-compile", args.nanogpt_compile, "--nanogpt-adamw", args.nanogpt_adamw,
               "--sync", args.sync, "--optimizer", args.optimizer, "--shape", json.dumps(shape or {})]
        for name in ("batch_size", "grad_accum"):
            if getattr(args, name):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        if probe:
            cmd.append("--probe")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.name = which
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._reply()

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.name} worker failed (its error is above)")
        return json.loads(line)

    def steps(self, n: int) -> dict:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def memory_of(which: str, args: argparse.Namespace, data_dir: Path, shape: dict) -> float | None:
    """Peak memory of one side over its first 20 steps, alone in a fresh process."""
    try:
        probe = Worker(which, args, data_dir, shape, probe=True)
    except SystemExit as e:
        print(f"memory probe for {which}: {e}", file=sys.stderr)
        return None
    probe.proc.wait()
    return probe.info["peak_mib"]


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp_name:
        data_dir = prepared_data(args, Path(tmp_name))
        workers = [Worker("ours", args, data_dir)]
        shape = workers[0].info["shape"]
        if not args.no_reference and (REFERENCE / "model.py").is_file():
            workers.append(Worker("nanogpt", args, data_dir, shape))
        elif not args.no_reference:
            print(f"nanoGPT reference not found at {REFERENCE}: measuring ours only", file=sys.stderr)
        times: dict[str, list[float]] = {w.name: [] for w in workers}
        first: dict[str, float] = {}
        losses: dict[str, float] = {}
        peaks: dict[str, float | None] = {}
        round_no = 0
        while any(len(times[w.name]) < args.steps for w in workers):
            order = workers if round_no % 2 == 0 else workers[::-1]  # alternate who goes first
            for w in order:
                n = min(args.block, args.steps - len(times[w.name]))
                if n <= 0:
                    continue
                reply = w.steps(n)
                if not times[w.name]:
                    # the first step (with --sync block: the first block), compilation included where it applies
                    first[w.name] = reply["times"][0] * (n if w.info["per_block"] else 1)
                times[w.name].extend(reply["times"])
                losses[w.name] = reply["loss"]
                peaks[w.name] = reply["peak_mib"]
            round_no += 1
        for w in workers:
            w.close()
        results = {}
        for w in workers:
            kept = times[w.name][args.skip:] or times[w.name]
            q = statistics.quantiles(kept, n=10) if len(kept) > 1 else [kept[0]] * 9
            results[w.name] = {
                "label": w.info["label"], "median_ms": statistics.median(kept), "p10_ms": q[0], "p90_ms": q[-1],
                "first_step_ms": first[w.name],
                "tokens_per_s": w.info["tokens_per_step"] / statistics.median(kept) * 1e3,
                "last_loss": losses[w.name], "steps": len(kept),
                "flops_per_step": flops_per_step(shape, shape["n_params"]), "peak_mib": peaks[w.name],
            }
        if not args.no_memory and peaks[workers[0].name] is None:  # CPU: resident-memory growth, fresh processes
            for w in workers:
                results[w.name]["peak_mib"] = memory_of(w.name, args, data_dir, shape)
    return results


# dense bf16 tensor-core peaks (FLOP/s) by device name, for the MFU column
PEAKS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12))


def flops_per_step(shape: dict, n_params: int) -> float:
    """nanoGPT's estimate (its GPT.estimate_mfu, from the PaLM paper): 6N + 12*L*H*Q*T per token, with N the
    parameters without position embeddings, times the tokens of one optimizer step."""
    m, t = shape["model"], shape["train"]
    L, H, Q, T = m["n_layer"], m["n_head"], m["n_embd"] // m["n_head"], m["block_size"]
    per_token = 6 * n_params + 12 * L * H * Q * T
    return per_token * T * t["batch_size"] * t["grad_accum"]


def peak_flops(args: argparse.Namespace) -> tuple[float, str] | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops:g}"
    if args.device != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peak in PEAKS:
        if key in name:
            return peak, f"{name}: {peak / 1e12:.0f} TFLOP/s dense bf16"
    return None


def print_table(results: dict, args: argparse.Namespace) -> None:
    base = results.get("nanogpt")
    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"# train speed: preset {args.preset}, device {args.device}, "
          f"steps {args.skip}-{args.steps} per side, "
          f"blocks of {args.block}, loss read every {args.sync if args.sync != 'auto' else 'step/block (auto)'}, "
          f"torch {torch.__version__}, CPU capability {cpu}")
    peak = peak_flops(args)
    head = (f"| {'run':<60} | median ms | p10-p90 ms    | first step ms | tokens/s | peak MiB | "
            f"ours/nanoGPT |" + (" MFU    |" if peak else ""))
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name in ("nanogpt", "ours"):
        if name not in results:
            continue
        r = results[name]
        if base:
            ratio = f"{r['median_ms'] / base['median_ms']:.3f}" if name == "ours" else "1.000"
        else:
            ratio = "-"
        mfu = f" {r['flops_per_step'] / (r['median_ms'] / 1e3) / peak[0]:6.1%} |" if peak else ""
        mem = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "-"
        spread = f"{r['p10_ms']:.1f}-{r['p90_ms']:.1f}"
        print(f"| {r['label']:<60} | {r['median_ms']:9.1f} | {spread:<13} | {r['first_step_ms']:13.0f} | "
              f"{r['tokens_per_s']:8.0f} | {mem:>8} | {ratio:>12} |{mfu}")
    if peak:
        print(f"MFU: nanoGPT's FLOP estimate per step over the median step time, against {peak[1]}")
    if args.device == "cpu":
        print("peak MiB on CPU: growth of resident memory over the first 20 steps (activations, gradients,"
              " optimizer state), each side in a fresh process")
    elif args.device == "cuda":
        print("peak MiB on CUDA: torch.cuda.max_memory_allocated() of each side's own process over the run")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.skip >= args.steps:
        args.skip = 0
    if args.worker:
        worker_main(args)
        return 0
    results = run(args)
    print_table(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
