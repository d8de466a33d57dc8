"""Models: the tiny default Llama, a tokenizer trained locally, and HF-directory load/save."""

from hybridft.model.hf import load_model, load_tokenizer, save_model
from hybridft.model.tiny import build_tiny_base, resolve_base

__all__ = ["build_tiny_base", "load_model", "load_tokenizer", "resolve_base", "save_model"]
