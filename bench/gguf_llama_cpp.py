"""How closely llama.cpp runs our GGUF export: logits, greedy tokens and (char) the added EOS's share.

For each checkpoint and each --dtype it exports with `nanogpt export --format gguf`, loads the file in
llama-cpp-python (one thread) and compares with our float32 model on a window of validation-like text:
the largest |logit difference| over every position, how many of N greedy tokens (the window's first 8 as
prompt) equal `generate_tokens(..., temperature=0)`'s, and for a char vocabulary the mean probability
llama.cpp's softmax gives the tokens the export adds (they have no weights of their own: logit 0).

    PYTHONPATH=src python bench/gguf_llama_cpp.py out/model_step_2000 other/model_step_500 --tokens 50
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from nanogpt import checkpoint
from nanogpt.generate import generate_tokens
from nanogpt.interop.gguf_export import export_gguf
from nanogpt.tokenizers import from_meta

TEXT = """ROMEO:
What say'st thou, my lord? I'll go along, if you will see
The gentle lady of the house, and bring her word.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name;
"""


def measure(stem: Path, dtype: str, n_tokens: int) -> dict[str, object]:
    import llama_cpp

    model, meta = checkpoint.load_model(stem)
    block, vocab = model.config.block_size, model.config.vocab_size
    ids = from_meta(meta["tokenizer"]).encode(TEXT)[:block]
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = export_gguf(stem, Path(tmp) / "m.gguf", dtype)
        llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=block, n_threads=1, verbose=False)
        llm.eval(ids)
        scores = np.array(llm.scores[: len(ids)])
        prompt = ids[:8]
        llm.reset()
        llm.eval(prompt)
        greedy: list[int] = []
        for _ in range(min(n_tokens, block - len(prompt))):
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if len(prompt) + len(greedy) < block:
                llm.eval(greedy[-1:])
    with torch.no_grad():
        ours = model(torch.tensor([ids]), targets=torch.tensor([ids]))[0][0].numpy()
    mine = list(generate_tokens(model, prompt, len(greedy), temperature=0.0))
    same = next((i for i, (a, b) in enumerate(zip(mine, greedy)) if a != b), len(greedy))
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return {
        "diff": float(np.abs(scores[:, :vocab] - ours).max()),
        "greedy": f"{same}/{len(greedy)}",
        "extra": float(probs[:, vocab:].sum(-1).mean()) if scores.shape[1] > vocab else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stems", nargs="+", type=Path)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--tokens", type=int, default=50)
    args = ap.parse_args()
    print("| checkpoint | activation | dtype | max abs logit diff | greedy tokens equal | added tokens' mass |")
    print("|---|---|---|---|---|---|")
    for stem in args.stems:
        cfg = checkpoint.configs(checkpoint.read_meta(stem))[0]
        for dtype in args.dtypes:
            m = measure(stem, dtype, args.tokens)
            extra = "-" if m["extra"] is None else f"{m['extra']:.2%}"
            print(f"| {stem} | {cfg.activation} | {dtype} | {m['diff']:.2e} | {m['greedy']} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
