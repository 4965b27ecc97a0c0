"""nanogpt: pre-train a small GPT-2-style language model from scratch on your own text."""

__version__ = "0.1.0"
