"""Adapter policies between stages."""

from __future__ import annotations


def test_a_full_stage_after_a_lora_stage_trains_every_weight() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from hybridft.train.adapters import apply_policy

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    lora = {"r": 2, "alpha": 4.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    adapted = apply_policy(LlamaForCausalLM(cfg), "continue", lora)
    full = apply_policy(adapted, "full", lora)
    assert all(p.requires_grad for p in full.parameters())
