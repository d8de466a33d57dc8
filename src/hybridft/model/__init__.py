"""Models: the bases a job starts from (pretrained offline, random tiny, local directory, hub id),
tokenizers, and HF-directory load/save."""

from hybridft.model.base import base_of, is_random_init, resolve_base
from hybridft.model.hf import load_model, load_tokenizer, save_model
from hybridft.model.hub import resolve_model_ref
from hybridft.model.pretrain import read_base_info
from hybridft.model.tiny import build_tiny_base

__all__ = [
    "base_of",
    "is_random_init",
    "build_tiny_base",
    "load_model",
    "load_tokenizer",
    "read_base_info",
    "resolve_base",
    "resolve_model_ref",
    "save_model",
]
