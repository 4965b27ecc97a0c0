"""Models in and out: Hugging Face GPT-2 folders (hf, hf_import, export) and GGUF for llama.cpp."""
