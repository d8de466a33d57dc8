"""The tiny default base: a Llama-architecture model and a byte-level BPE tokenizer trained locally.

No hub at run time: the tokenizer is trained on the demo corpus (or any text files named), the
weights are initialised from the seed, and both are written as a standard HF directory that the
rest of the system loads with ``from_pretrained`` like any user model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hybridft.errors import UserError
from hybridft.model.hf import save_model
from hybridft.specs import TinyModelSpec

SPECIAL_TOKENS = ["<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
EOS = "<|end|>"
PAD = "<pad>"

# One line per turn: a role tag, the content, an end tag. `{% generation %}` marks the assistant
# text so HF's `return_assistant_tokens_mask` works with it too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _corpus_texts(paths: list[str]) -> Iterator[str]:
    """Every string value of every JSON row (keys ignored): enough to learn the vocabulary."""
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                yield from _strings(row)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style) with our special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, clean_up_tokenization_spaces=False
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(cfg: TinyModelSpec, vocab_size: int, pad_id: int, eos_id: int, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_position,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def build_tiny_base(
    cfg: TinyModelSpec, out_dir: str | Path, corpus: list[str], seed: int = 0
) -> Path:
    """Train the tokenizer on ``corpus`` files, initialise the model, save as an HF directory."""
    if not corpus:
        raise UserError(
            "model.tokenizer_corpus: no files matched (default data/demo/**/train.jsonl); "
            "run `hybridft data synth` first or set model.base to a local HF directory"
        )
    tokenizer = train_tokenizer(_corpus_texts(corpus), cfg.vocab_size)
    model = build_model(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed)
    return save_model(model, tokenizer, out_dir)
