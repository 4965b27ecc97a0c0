"""Settings: the model shape (`ModelConfig`), the training run (`TrainConfig`), `PrepareConfig`,
sampling (`GenerateConfig`); presets.py lays presets and flags over them.

One source of truth for each setting: a dataclass field. Its command-line flag, its `--help` text and its
place in a checkpoint's `config.json` all come from the field (fields.py: `opt`, `field_flag`, `field_help`,
`to_dict`, `from_dict`, re-exported here), and a preset is just a dict of field values. This module knows
nothing of argparse or torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .fields import ConfigError, field_flag, field_help, flag_name, from_dict, opt, to_dict
from .schedule import SCHEDULES, parse_duration
from .tokenizers import MAX_BPE_VOCAB, MIN_BPE_VOCAB, TOKENIZERS


OPTIMIZERS = ("adamw", "muon")  # see optim.py
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes (runtime.compile_model)
# Seeds feed torch.manual_seed and numpy's Philox key, which take 64-bit integers; the largest signed one
# leaves room for the per-step offsets added to it (seed + step).
MAX_SEED = 2**63 - 1
# The most micro-batches a step may accumulate per process, and the most processes a run (or a checkpoint's
# resume state) may claim: far beyond any real run, and small enough that a step ends and that their product
# with the steps fits the 64-bit batch counter (a resume.json claiming 2**62 processes asked for a step of
# 2**62 micro-batches).
MAX_GRAD_ACCUM = 2**16
MAX_WORLD_SIZE = 2**16
ACTIVATIONS = ("gelu", "gelu_tanh")  # exact (erf) GELU; the tanh approximation GPT-2 was trained with


def check_choices(cfg: Any) -> None:
    """ConfigError unless each setting that has choices holds one of them. argparse checks a flag's; a config
    read from a checkpoint has not been through argparse, and `"lr_schedule": "weird"` would train on."""
    for f in dataclasses.fields(cfg):
        choices, value = f.metadata.get("choices"), getattr(cfg, f.name)
        if choices is not None and value not in choices:
            raise ConfigError(f"{field_flag(f)} must be one of {', '.join(map(str, choices))}, got {value!r}")


@dataclass
class ModelConfig:
    """Shape of a GPT-2-style decoder. Names mirror GPT-2 / nanoGPT (`n_layer`, `n_head`, `n_embd`)."""

    vocab_size: int = opt(0, "vocabulary size (taken from the dataset's vocab.json)", cli=False)
    block_size: int = opt(64, "context length in tokens (the model's max sequence length)")
    n_layer: int = opt(4, "number of transformer blocks", flag="--layer-count")
    n_head: int = opt(4, "attention heads per block; must divide --embedding-size", flag="--head-count")
    n_embd: int = opt(128, "embedding (model) width", flag="--embedding-size")
    dropout: float = opt(0.0, "dropout probability during training (0 disables it)")
    bias: bool = opt(False, "use biases in Linear and LayerNorm layers (GPT-2 has them)")
    activation: str = opt(
        "gelu",
        "MLP activation: exact GELU, or GPT-2's tanh approximation (what weights from --init-from GPT-2 use)",
        choices=ACTIVATIONS,
    )

    def validate(self) -> None:
        """Raise ConfigError with one clear line if the shape is impossible."""
        check_choices(self)
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                flag = field_flag(next(f for f in dataclasses.fields(self) if f.name == name))
                raise ConfigError(f"{flag} must be a positive integer, got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ConfigError(f"vocab_size must be positive, got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"--head-count ({self.n_head}) must divide --embedding-size ({self.n_embd}) evenly")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1), got {self.dropout}")

    def parameter_count(self) -> int:
        """Parameters of the GPT this shape builds (the LM head tied to the token embeddings), by arithmetic:
        a shape can be judged before anything is allocated."""
        d = self.n_embd
        per_layer = 12 * d * d + (13 if self.bias else 2) * d  # attention 4d^2, MLP 8d^2, biases, 2 LayerNorms
        return (self.vocab_size + self.block_size) * d + self.n_layer * per_layer + (2 if self.bias else 1) * d


@dataclass
class GenerateConfig:
    """How `nanogpt generate` samples (the training UI's `g` key samples `tokens_to_generate` as well)."""

    tokens_to_generate: int = opt(200, "number of tokens to generate")
    temperature: float = opt(1.0, "sampling temperature; 0 means greedy")
    top_k: int | None = opt(None, "sample only from the N most likely tokens")
    top_p: float | None = opt(None, "nucleus sampling: the smallest set of tokens with probability >= X")
    seed: int = opt(1337, "random seed; 0 picks a random one and prints it")
    num_samples: int = opt(
        1, "continuations of the prompt sampled together in one batch (the same seed gives the same ones); "
        "with more than one, each is printed whole, followed by a line of dashes"
    )
    prompt: str = opt("", "text to start from; \\n escapes are decoded (default: empty)")
    stop_at_end_of_text: bool = opt(True, "end a sample at <|endoftext|>, a document's end (gpt2 and bpe models)")
    prompt_file: str | None = opt(
        None, "read the text to start from from this file (UTF-8, taken as it is: no escapes decoded) instead of "
        "--prompt"
    )
    drop_unknown: bool = opt(
        False, "leave out the prompt's characters that a character-level model's vocabulary lacks, instead of "
        "refusing the prompt"
    )
    vocab_metadata: str | None = opt(None, "vocab.json to use instead of the checkpoint's own vocabulary")
    device: str = opt("auto", "device to generate on", choices=("auto", "cpu", "cuda", "mps"))
    window_slide: int | None = opt(
        None,
        "when the text outgrows the context, drop the oldest N tokens and go on (default: half the block "
        "size, which lets the KV cache do its job; 1 = nanoGPT's exact crop, several times slower)",
    )

    def problem(self, block_size: int | None = None) -> str | None:
        """The first impossible setting as one line (None if all are possible); `block_size` bounds the slide."""
        if self.tokens_to_generate < 0:
            return f"--tokens-to-generate must be >= 0, got {self.tokens_to_generate}"
        if not self.temperature >= 0:  # also rejects NaN
            return f"--temperature must be >= 0 (0 = greedy), got {self.temperature}"
        if self.top_k is not None and self.top_k < 1:
            return f"--top-k must be >= 1, got {self.top_k}"
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            return f"--top-p must be in (0, 1], got {self.top_p}"
        if not 0 <= self.seed <= MAX_SEED:
            return f"--seed must be in [0, {MAX_SEED}] (0 = random), got {self.seed}"
        if self.num_samples < 1:
            return f"--num-samples must be >= 1, got {self.num_samples}"
        if self.window_slide is not None and self.window_slide < 1:
            return f"--window-slide must be >= 1, got {self.window_slide}"
        if self.window_slide is not None and block_size is not None and self.window_slide > block_size:
            return f"--window-slide must be in [1, block size {block_size}], got {self.window_slide}"
        return None

    def validate(self, block_size: int | None = None) -> None:
        """Raise ConfigError with one clear line if a setting is impossible."""
        problem = self.problem(block_size)
        if problem is not None:
            raise ConfigError(problem)


@dataclass
class TrainConfig:
    """Everything about a training run except the model's shape."""

    # data
    data_dir: str | None = opt(None, "folder with train.bin, val.bin and vocab.json from `nanogpt prepare`")
    training_dataset: str | None = opt(None, "train.bin to train on (instead of --data-dir)")
    validation_dataset: str | None = opt(None, "val.bin to validate on (instead of --data-dir)")
    vocab_metadata: str | None = opt(None, "vocab.json describing the tokens (instead of --data-dir)")
    init_from: str | None = opt(
        None,
        "start from these weights instead of random ones: a run folder of ours (its best checkpoint) or a "
        "checkpoint, a Hugging Face GPT-2 folder, a name in the Hugging Face cache (gpt2, gpt2-medium, ...; never "
        "downloaded) or a nanoGPT ckpt.pt; the model takes their shape (a smaller --block-size crops it) and the "
        "data must use their tokenizer (prepare --tokenizer-from); default preset: finetune",
        metavar="SOURCE",
    )
    # schedule
    seed: int = opt(1337, "random seed; 0 picks a random one and prints it")
    steps: int = opt(2000, "total optimizer steps of the run")
    time: str | None = opt(None, "train for this long instead (90s, 10m, 1h30m; start-up aside): the plan sizes the "
                           "model, the steps and the evaluations for this machine and this text (flags you give win; "
                           "--plan prints it)", metavar="DURATION")
    max_passes: float = opt(8.0, "with --time: at most this many passes over the training text, so a small text is "
                            "not trained into overfitting; a model large for its text gets half unless typed, and a "
                            "run this would end early four times as many with dropout 0.1 (0: no bound; fill the "
                            "time)")
    plan_step_ms: float | None = opt(None, "the step time the --time plan measured (for an exact resume)", cli=False)
    batch_size: int = opt(12, "micro-batch size (sequences per forward pass)")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step")
    optimizer: str = opt(
        "adamw",
        "adamw: AdamW on every weight, nanoGPT's recipe (on a preset that defaults to muon, with nanoGPT's "
        "batch, learning rates, warm-up, cosine and steps too); muon: Muon on the 2-D weights inside the blocks "
        "(--muon-learning-rate), AdamW on the rest (--learning-rate)",
        choices=OPTIMIZERS,
    )
    learning_rate: float = opt(1e-3, "peak learning rate of AdamW (with --optimizer muon: outside the blocks)")
    muon_learning_rate: float = opt(0.02, "--optimizer muon: peak learning rate of Muon (it follows the same schedule)")
    muon_momentum: float = opt(0.95, "--optimizer muon: Muon's momentum (Nesterov), in [0, 1)")
    min_learning_rate: float = opt(
        1e-4, "AdamW's learning rate at the end of the decay (Muon's ends at the same fraction of its peak)"
    )
    lr_schedule: str = opt(
        "cosine",
        "learning-rate schedule after warm-up; wsd: constant, then a linear decay over the last "
        "--decay-fraction of the steps (a resume that raises --steps before the decay extends it cleanly)",
        choices=SCHEDULES,
    )
    decay_fraction: float = opt(0.5, "wsd: the share of the steps, at the end, that decay to --min-learning-rate")
    warmup_steps: int = opt(100, "linear warm-up steps")
    schedule_steps: int | None = opt(
        None, "steps the learning-rate schedule spans (default: --steps); past them the rate stays at its last "
        "value. A resume that extends a finished run keeps the schedule it finished (no new warm-up or decay); "
        "--schedule-steps N stretches it over N steps instead"
    )
    weight_decay: float = opt(0.1, "AdamW weight decay (applied to matrices, not to biases/norms)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.99, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this value (0 disables clipping)")
    # evaluation and logging
    validation_interval: int = opt(250, "steps between validation-loss evaluations (0: only at the end)")
    validation_batch: int = opt(0, "batch size for validation (0: same as --batch-size)")
    eval_iters: int = opt(20, "batches averaged per evaluation (windows spread evenly over val.bin)")
    overfit_evaluations: int = opt(
        3, "say the run overfits when the validation loss rose at this many evaluations in a row while the "
        "training loss fell"
    )
    stop_when_overfitting: bool = opt(False, "stop the run (saving, as a normal stop) when it says it overfits")
    log_interval: int = opt(10, "steps between headless progress lines")
    save_interval: int = opt(0, "steps between automatic checkpoints (0: only at the end)")
    tokens_to_generate: int = opt(GenerateConfig.tokens_to_generate, "tokens sampled by the UI's `g` key")
    eval_sample_tokens: int = opt(
        64, "tokens sampled at each evaluation (same prompt and seed each time) and kept in the training log (0: none)"
    )
    out_dir: str = opt(
        "out", "folder for checkpoints, one run per folder (a resume's default: the folder of its checkpoint)"
    )
    # hardware
    device: str = opt("auto", "device to train on", choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = opt(
        "auto",
        "compute precision; auto picks bfloat16 only where the hardware does it fast (on a CPU: this run's step "
        "timed both ways, the verdict cached; --reprobe-dtype times it again)",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    compile: bool | None = opt(
        None,
        "torch.compile the model (default: on CUDA only; on CPU it pays on long runs only, after about a "
        "minute of compiling the first time)",
    )
    shard: bool = opt(
        False,
        "under torchrun: shard the weights, gradients and optimizer state over the processes (FSDP2), for a model "
        "that does not fit one device; the same run as without it (docs/scaling.md)",
    )
    compile_mode: str = opt(
        "default",
        "torch.compile mode on CUDA (reduce-overhead and max-autotune capture the step as CUDA graphs; default "
        "kept until bench/gpu_check.sh has measured them; CPU/MPS always use default)",
        choices=COMPILE_MODES,
    )

    def validate(self) -> None:
        """Raise ConfigError with one clear line if a setting is impossible."""
        check_choices(self)
        if self.tokens_to_generate < 1:  # checked here, not when `g` first samples: by then the run has trained
            raise ConfigError(f"--tokens-to-generate must be >= 1 (what `g` samples), got {self.tokens_to_generate}")
        for name in ("steps", "batch_size", "grad_accum", "eval_iters"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{flag_name(name)} must be a positive integer, got {getattr(self, name)}")
        if self.grad_accum > MAX_GRAD_ACCUM:
            raise ConfigError(f"--grad-accum must be at most {MAX_GRAD_ACCUM:,}, got {self.grad_accum:,}")
        for name in ("validation_interval", "validation_batch", "log_interval", "save_interval", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag_name(name)} must not be negative, got {getattr(self, name)}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ConfigError(f"--schedule-steps must be a positive integer, got {self.schedule_steps}")
        if self.overfit_evaluations < 1:
            raise ConfigError(f"--overfit-evaluations must be at least 1, got {self.overfit_evaluations}")
        if self.eval_sample_tokens < 0:
            raise ConfigError(f"--eval-sample-tokens must not be negative, got {self.eval_sample_tokens}")
        # written as `not (x in range)` so that NaN, which fails every comparison, is refused too
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        if not 0 < self.muon_learning_rate < math.inf:
            raise ConfigError(f"--muon-learning-rate must be a positive number, got {self.muon_learning_rate}")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"--muon-momentum must be in [0, 1), got {self.muon_momentum}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ConfigError(f"--min-learning-rate must be in [0, --learning-rate], got {self.min_learning_rate}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
        if not self.grad_clip >= 0:  # inf is allowed: a bound that never clips
            raise ConfigError(f"--grad-clip must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed must be in [0, {MAX_SEED}], got {self.seed}")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"--decay-fraction must be in [0, 1], got {self.decay_fraction}")
        if not 0 <= self.max_passes < math.inf:
            raise ConfigError(f"--max-passes must be a number >= 0 (0: no bound), got {self.max_passes}")
        if self.time is not None:
            try:
                parse_duration(self.time)
            except ValueError as e:
                raise ConfigError(f"--time {e}") from None
        if self.init_from is not None and not self.init_from.strip():
            raise ConfigError("--init-from needs a folder, a file or a Hugging Face model name")
        for f in dataclasses.fields(self):  # whole numbers feed int64 arithmetic (numpy's counters, torch)
            value = getattr(self, f.name)
            if type(value) is int and not -MAX_SEED <= value <= MAX_SEED:
                raise ConfigError(f"{flag_name(f.name)} must be at most {MAX_SEED}, got {value}")

    @property
    def eval_batch_size(self) -> int:
        return self.validation_batch or self.batch_size


def tokens_per_step(model_cfg: ModelConfig, train_cfg: TrainConfig, world_size: int = 1) -> int:
    """Tokens one optimizer step trains on: batch x accumulation (both per process) x processes x context."""
    return train_cfg.batch_size * train_cfg.grad_accum * world_size * model_cfg.block_size


@dataclass
class PrepareConfig:
    """What `nanogpt prepare` reads, how it tokenizes, and where it writes."""

    source: str | None = opt(None, "text file (.txt, .jsonl, .parquet; .gz, .zst), folder tree of them, or mixology "
                             "folder (default: the bundled Tiny Shakespeare)", cli=False)
    # checked by validate(), not by argparse, so that the message is the same from the CLI and from Python;
    # bpe by default: at equal training time it gives fewer bits per byte than char or gpt2 (BENCHMARKS.md,
    # "Tokenizers at equal time")
    tokenizer: str = opt(
        "bpe",
        "bpe (a byte-level BPE learned from the training part of SOURCE), char (one token per character, "
        "nanoGPT's shakespeare_char files) or gpt2 (OpenAI's GPT-2 BPE)",
        metavar="{char,gpt2,bpe}",
    )
    vocab_size: int | None = opt(
        None,
        f"tokens of the learned BPE (--tokenizer bpe; {MIN_BPE_VOCAB} to {MAX_BPE_VOCAB:,}; default: chosen from "
        "the size of the text, about the square root of its characters)",
    )
    out_dir: str | None = opt(
        None,
        "output folder (default: data/NAME in the current folder, NAME being SOURCE's name without .txt; "
        "data/tinyshakespeare for the bundled corpus)",
    )
    val_fraction: float = opt(0.1, "fraction of each source kept for validation (its last documents)")
    text_field: str = opt("text", "JSON Lines field or Parquet column holding the text (a.b: nested)", metavar="NAME")
    skip_bad_records: bool = opt(False, "count and leave out bad JSON lines instead of stopping at the first one")
    tokenizer_from: str | None = opt(
        None, "encode with an existing tokenizer instead of choosing one: a run folder, a checkpoint, a prepared "
        "folder or its vocab.json (so that a model can be fine-tuned on this text with --init-from); characters "
        "a character vocabulary lacks are left out, and said", metavar="SOURCE"
    )
    strip_gutenberg: bool | None = opt(
        None, "remove Project Gutenberg's licence header and footer (the default wherever their '*** START/END OF "
        "... PROJECT GUTENBERG' lines are found; --keep-gutenberg keeps them)"
    )
    keep_gutenberg: bool = opt(
        False, "keep Project Gutenberg's header and footer as text (the same as --no-strip-gutenberg); the "
        "validation part, the end of each file, is then mostly licence"
    )

    @property
    def strips_gutenberg(self) -> bool:
        """Whether Gutenberg markers found are cut at: by default, unless --keep-gutenberg (--no-strip-gutenberg)."""
        return self.strip_gutenberg is not False and not self.keep_gutenberg

    def validate(self) -> None:
        """Raise ConfigError with one clear line if a setting is impossible."""
        if self.source is not None and not str(self.source).strip():
            raise ConfigError("SOURCE is empty: give a text file or a mixology folder")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"unknown tokenizer {self.tokenizer!r}: choose {' or '.join(TOKENIZERS)}")
        if self.vocab_size is not None:
            if self.tokenizer_from is not None:
                raise ConfigError("--vocab-size and --tokenizer-from: the reused tokenizer's size is fixed")
            if self.tokenizer != "bpe":
                raise ConfigError(f"--vocab-size is for --tokenizer bpe (the {self.tokenizer} vocabulary is fixed)")
            if type(self.vocab_size) is not int or not MIN_BPE_VOCAB <= self.vocab_size <= MAX_BPE_VOCAB:
                raise ConfigError(f"--vocab-size must be {MIN_BPE_VOCAB} to {MAX_BPE_VOCAB:,}, got {self.vocab_size}")
        if self.strip_gutenberg and self.keep_gutenberg:
            raise ConfigError("--strip-gutenberg and --keep-gutenberg contradict each other: give one")
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")


# Presets set the model shape and the schedule together; flags given explicitly win over them.
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
# The fields that fix the weights' shape and what they compute: a resumed checkpoint's values cannot be overridden.
DATA_FIELDS = ("data_dir", "training_dataset", "validation_dataset", "vocab_metadata")  # the data, as a group
SHAPE_FIELDS = ("block_size", "n_layer", "n_head", "n_embd", "bias", "activation", "vocab_size")


__all__ = ["ConfigError", "field_flag", "field_help", "flag_name", "from_dict", "opt", "to_dict"]  # from fields.py
