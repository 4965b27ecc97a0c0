"""hf.py and export.py: our checkpoints as Hugging Face GPT-2 folders and back, checked with transformers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY, shakespeare_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from nanogpt import checkpoint  # noqa: E402
from nanogpt.cli import main  # noqa: E402
from nanogpt.train.setup import build_trainer  # noqa: E402
from nanogpt.tokenizers import from_meta  # noqa: E402



@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slice of Tiny Shakespeare prepared with GPT-2 BPE."""
    from nanogpt.prepare import prepare

    out = tmp_path_factory.mktemp("bpe")
    (out / "input.txt").write_text(shakespeare_text()[:30000], encoding="utf-8")
    prepare(str(out / "input.txt"), tokenizer="gpt2", out_dir=str(out), val_fraction=0.1, strip_gutenberg=False)
    return out


def trained(data_dir: Path, out: Path, **kw) -> Path:
    """A checkpoint of a tiny GPT whose weights (biases and gains included) are random, then trained 2 steps."""
    trainer = build_trainer({**TINY, "data_dir": str(data_dir), "out_dir": str(out), "steps": 2, **kw})
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in trainer.stepper.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    trainer.train_step()
    trainer.train_step()
    return Path(trainer.save().stem)


def logits_both(stem: Path, folder: Path, text: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    ours, meta = checkpoint.load_model(stem)
    ids = from_meta(meta["tokenizer"]).encode(text)[: ours.config.block_size]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        a, _ = ours(x, targets=x)
        b = theirs(x).logits
    return a, b, ids


@pytest.mark.parametrize(
    ("kind", "bias", "activation"), [("char", False, "gelu"), ("char", True, "gelu_tanh"), ("gpt2", True, "gelu_tanh"),
                                     ("gpt2", False, "gelu")]
)
def test_export_loads_in_transformers_with_equal_logits_and_tokens(
    kind, bias, activation, shakespeare_dir, bpe_dir, tmp_path
):
    data = shakespeare_dir if kind == "char" else bpe_dir
    stem = trained(data, tmp_path / "run", bias=bias, activation=activation)
    out = tmp_path / "hf"
    assert main(["export", str(stem), str(out)]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    a, b, ids = logits_both(stem, out, "ROMEO:\nWhat say'st thou, my lord?  I'll go.\n")
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    # the tokenizer gives our ids, on text with runs of spaces, digits, contractions (and Unicode for BPE)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = from_meta(checkpoint.read_meta(stem)["tokenizer"])
    texts = ["ROMEO:\nWhat,  say'st   thou?\n\n", "I'm sure we'll; they've 'tis"]
    if kind == "gpt2":
        texts += ["naïve café — 日本語 😀", "12345 3.14159 1,000,000", "   lead\t\ttrail   "]
    for text in texts:
        assert tok(text)["input_ids"] == ours.encode(text), text
        assert tok.decode(ours.encode(text)) == text
    # greedy tokens inside the window
    from nanogpt.generate import generate_tokens

    model, _ = checkpoint.load_model(stem)
    prompt = ids[:8]
    n = model.config.block_size - len(prompt)
    mine = list(generate_tokens(model, list(prompt), n, temperature=0.0))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    x = torch.tensor([prompt])  # an explicit mask: HF would otherwise take a token equal to pad_token_id as padding
    theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert mine == theirs


def test_pipeline_runs_on_an_export(shakespeare_dir, tmp_path):
    stem = trained(shakespeare_dir, tmp_path / "run")
    assert main(["export", str(stem), str(tmp_path / "hf")]) == 0
    pipe = transformers.pipeline("text-generation", str(tmp_path / "hf"), device="cpu")
    text = pipe("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 8
    assert "step 2" in (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")


def tiny_hf_gpt2(folder: Path, n_positions: int = 64) -> transformers.GPT2LMHeadModel:
    """A random GPT2LMHeadModel (gelu_new, biases) saved by transformers itself."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder)
    return model.eval()


def test_init_from_hf_folder_then_train_export_reload(bpe_dir, tmp_path):
    ref = tiny_hf_gpt2(tmp_path / "gpt2tiny")
    opts = {**TINY, "data_dir": str(bpe_dir), "out_dir": str(tmp_path / "ft"), "init_from": str(tmp_path / "gpt2tiny"),
            "steps": 3, "batch_size": 2, "grad_accum": 1}
    for name in ("n_layer", "n_head", "n_embd"):
        opts.pop(name)
    trainer = build_trainer(opts)
    assert trainer.model_cfg.activation == "gelu_tanh" and trainer.model_cfg.bias and trainer.model_cfg.block_size == 32
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    trainer.stepper.model.eval()
    with torch.no_grad():
        ours, _ = trainer.stepper.model(x, targets=x)
        theirs = ref(x).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    trainer.stepper.model.train()
    for _ in range(3):
        trainer.train_step()
    stem = Path(trainer.save().stem)
    assert main(["export", str(stem), str(tmp_path / "hf")]) == 0
    a, b, _ = logits_both(stem, tmp_path / "hf", "To be, or not to be: that is the question.")
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_init_from_finds_a_snapshot_in_the_hf_cache(bpe_dir, tmp_path, monkeypatch):
    snap = tmp_path / "home" / "hub" / "models--gpt2" / "snapshots" / "abc123"
    tiny_hf_gpt2(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    from nanogpt.interop import hf_import

    assert hf_import.load_source("gpt2").source == str(snap)


def test_init_from_nanogpt_ckpt(reference_nanogpt, bpe_dir, tmp_path, monkeypatch):
    """A karpathy/nanoGPT ckpt.pt (compiled: _orig_mod. names, padded vocabulary) gives nanoGPT's logits."""
    monkeypatch.syspath_prepend(str(reference_nanogpt))
    import model as nanogpt_model  # the reference's model.py

    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, bias=False, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    ref = nanogpt_model.GPT(nanogpt_model.GPTConfig(**args)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {"_orig_mod." + k: v for k, v in ref.state_dict().items()}
    torch.save({"model": state, "model_args": args, "iter_num": 10, "best_val_loss": torch.tensor(3.0),
                "config": {"dataset": "shakespeare"}}, tmp_path / "ckpt.pt")
    opts = {**TINY, "data_dir": str(bpe_dir), "out_dir": str(tmp_path / "o"), "init_from": str(tmp_path / "ckpt.pt")}
    for name in ("n_layer", "n_head", "n_embd"):
        opts.pop(name)
    trainer = build_trainer(opts)
    assert trainer.model_cfg.activation == "gelu" and trainer.model_cfg.vocab_size == 50257
    x = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(1))
    trainer.stepper.model.eval()
    with torch.no_grad():
        ours, _ = trainer.stepper.model(x, targets=x)
        theirs, _ = ref(x, targets=x)
    torch.testing.assert_close(ours, theirs[..., :50257], rtol=0, atol=1e-5)


def _fails(argv: list[str], capsys, out: Path, fragment: str) -> None:
    capsys.readouterr()  # drop what set-up printed (transformers' progress bars)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_bad_inputs_are_one_line_and_write_nothing(shakespeare_dir, bpe_dir, tmp_path, capsys):
    base = ["train", "--headless", "--device", "cpu", "--no-compile", "--steps", "1", "--block-size", "32"]
    out = tmp_path / "out"
    # a folder that is not GPT-2
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    _fails([*base, "--data-dir", str(bpe_dir), "--out-dir", str(out), "--init-from", str(tmp_path / "llama")],
           capsys, out, "not a GPT-2 model")
    # missing, then truncated model.safetensors
    tiny_hf_gpt2(tmp_path / "g")
    weights = (tmp_path / "g" / "model.safetensors").read_bytes()
    (tmp_path / "g" / "model.safetensors").unlink()
    _fails([*base, "--data-dir", str(bpe_dir), "--out-dir", str(out), "--init-from", str(tmp_path / "g")],
           capsys, out, "not found")
    (tmp_path / "g" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _fails([*base, "--data-dir", str(bpe_dir), "--out-dir", str(out), "--init-from", str(tmp_path / "g")],
           capsys, out, "corrupt or truncated")
    (tmp_path / "g" / "model.safetensors").write_bytes(weights)
    # a char dataset with GPT-2 weights
    _fails([*base, "--data-dir", str(shakespeare_dir), "--out-dir", str(out), "--init-from", str(tmp_path / "g")],
           capsys, out, "expects GPT-2 BPE")
    # a vocabulary mismatch: a char export of 65 characters with a dataset of other characters
    stem = trained(shakespeare_dir, tmp_path / "run")
    assert main(["export", str(stem), str(tmp_path / "charhf")]) == 0
    capsys.readouterr()
    from engine_fixtures import prepare_char

    other = prepare_char("abcdefg hijk\n" * 200, tmp_path / "other")
    _fails([*base, "--data-dir", str(other), "--out-dir", str(out), "--init-from", str(tmp_path / "charhf")],
           capsys, out, "vocabulary")
    # not on disk by name: how to fetch it
    _fails([*base, "--data-dir", str(bpe_dir), "--out-dir", str(out), "--init-from", "gpt2-nonexistent-xyz"],
           capsys, out, "hf download")
    # export into a non-empty folder is refused and leaves it as it was
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["export", str(stem), str(tmp_path / "full")]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_old_checkpoint_without_activation_loads_as_exact_gelu(shakespeare_dir, tmp_path):
    import json

    stem = trained(shakespeare_dir, tmp_path / "run")
    path = stem.with_name(stem.name + ".config.json")
    meta = json.loads(path.read_text())
    del meta["model"]["activation"]
    path.write_text(json.dumps(meta))
    stem.with_name(stem.name + ".manifest.json").unlink()  # checkpoints of that time had no manifest
    assert checkpoint.configs(checkpoint.read_meta(stem))[0].activation == "gelu"
