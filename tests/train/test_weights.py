"""Weights as state dicts, for models too big to copy: the merge and the HF export built from a
state dict equal peft's own; under ZeRO-3 models are partitioned at construction, weights are
gathered to rank 0 only and loaded from rank 0 only (a real 2-process group on CPU); a LoRA base
can be loaded in bf16 with an fp32 adapter."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridft.specs import LoraSpec
from hybridft.train.adapters import add_adapter, apply_policy, rebuild
from hybridft.train.checkpoint import export_hf
from hybridft.train.weights import merged_state_dict, tied_names

LORA = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]).model_dump()


def _trained_lora(model_dir: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    lm = add_adapter(rebuild(str(model_dir), None, None), LORA)
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter (B starts at zero)
    return lm


def test_the_state_dict_merge_is_peft_merge(tiny_model_dir) -> None:
    lm = _trained_lora(tiny_model_dir)
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    reference = copy.deepcopy(lm).merge_and_unload().state_dict()
    merged = merged_state_dict(state, LORA)
    assert merged.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(merged[key], reference[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           state["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])  # fmt: skip
    # adapter-only: the frozen weights come from the base
    adapter = {k: v for k, v in state.items() if ".lora_" in k}
    base = rebuild(str(tiny_model_dir), None, None).state_dict()
    again = merged_state_dict(adapter, LORA, base)
    for key in reference:
        torch.testing.assert_close(again[key], reference[key], rtol=0, atol=1e-6, msg=key)


def test_the_export_from_a_state_dict_is_peft_export(tiny_model_dir, tmp_path) -> None:
    lm = _trained_lora(tiny_model_dir)
    state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    lm.save_pretrained(str(tmp_path / "ref" / "adapter"))
    copy.deepcopy(lm).merge_and_unload().save_pretrained(str(tmp_path / "ref" / "model"))
    export_hf(str(tiny_model_dir), LORA, state, False, tmp_path / "ours")
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        ours, ref = (
            load_file(str(tmp_path / "ours" / name)),
            load_file(str(tmp_path / "ref" / name)),
        )
        assert ours.keys() == ref.keys(), name
        for key in ref:
            torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=1e-6, msg=key)
    config = json.loads((tmp_path / "ours" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and sorted(config["target_modules"]) == sorted(LORA["target_modules"])
    assert (tmp_path / "ours" / "model" / "tokenizer.json").is_file()
    reloaded = rebuild(str(tmp_path / "ours" / "model"), None, None)  # a loadable HF model
    assert reloaded.config.num_hidden_layers == lm.config.num_hidden_layers


def test_a_bf16_frozen_base_trains_an_fp32_adapter(tiny_model_dir) -> None:
    lm = rebuild(str(tiny_model_dir), None, None, dtype=torch.bfloat16)
    lm = apply_policy(lm, "continue", LORA)
    dtypes = {(p.requires_grad, p.dtype) for p in lm.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    ids = torch.randint(5, 100, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = lm(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters() if p.requires_grad)
    full = apply_policy(lm, "full", LORA)  # a full stage after it trains fp32 weights
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    assert all(p.requires_grad for p in full.parameters())


# rank r of a 2-process ZeRO-3 group on CPU: build partitioned, gather to rank 0, load from rank 0
ZERO3 = textwrap.dedent(
    """
    import json, os, sys
    rank, init_dir, model_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.environ.update(DS_ACCELERATOR="cpu", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    import torch
    import torch.distributed as dist
    from hybridft.specs import TrainingSpec
    from hybridft.train.adapters import merged, rebuild
    from hybridft.train.strategy import construction_config
    from hybridft.train.weights import gather_to_rank0, load_from_rank0, partitioned_construction

    dist.init_process_group("gloo", init_method=f"file://{init_dir}/g", rank=rank, world_size=2)
    reference = rebuild(model_dir, None, None).state_dict()
    config = construction_config("zero3", TrainingSpec())
    with partitioned_construction(config):
        lm = rebuild(model_dir, None, None)
    local = sum(p.numel() for p in lm.parameters())
    whole = sum(p.ds_numel for p in lm.parameters())
    gathered = gather_to_rank0(lm)
    same = all(torch.equal(gathered[k], reference[k]) for k in reference) if rank == 0 else None
    # rank 0 alone holds new weights (the reference + 1); every rank must end with them
    new = {k: v + 1 for k, v in gathered.items()} if rank == 0 else None
    load_from_rank0(lm, new)
    again = gather_to_rank0(lm)
    loaded = all(torch.equal(again[k], reference[k] + 1) for k in reference) if rank == 0 else None
    print(json.dumps({"local": local, "whole": whole, "keys": len(gathered), "same": same,
                      "loaded": loaded, "ref_keys": len(reference)}), flush=True)
    # leave together: a rank that tears the group down while its peer is still in the last
    # gather makes gloo's receiving thread throw in the peer, which aborts it ("terminate called
    # without an active exception", seen once with the machine busy)
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_zero3_builds_partitioned_and_moves_weights_through_rank_0_only(tiny_model_dir, tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ZERO3, str(rank), str(tmp_path), str(tiny_model_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    r0, r1 = out
    # partitioned at construction: each rank materialised about half of the model
    assert r0["local"] <= 0.6 * r0["whole"] and r1["local"] <= 0.6 * r1["whole"]
    assert r0["keys"] == r0["ref_keys"] and r0["same"] is True and r0["loaded"] is True
    assert r1["keys"] == 0  # rank 1 never holds the whole model


def test_a_full_stage_export_restores_a_tied_head_and_a_missing_weight_is_refused(
    tiny_model_dir, tmp_path
) -> None:
    """A full stage's end keeps only the HF export (the exact fp32 state, its tied head saved
    once): a resume loads it whole; a state missing a real weight is an error, not a silent
    half-initialised model."""
    lm = rebuild(str(tiny_model_dir), None, None)
    assert tied_names(lm) == {"lm_head.weight"}  # the tiny base ties its head
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.5)
    state = lm.state_dict()
    export_hf(str(tiny_model_dir), None, state, False, tmp_path)
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    again = rebuild(str(tiny_model_dir), None, saved)
    for key, value in state.items():
        assert torch.equal(again.state_dict()[key], value), key
    broken = {k: v for k, v in saved.items() if "layers.0.mlp" not in k}
    with pytest.raises(ValueError, match="does not match the model"):
        rebuild(str(tiny_model_dir), None, broken)
